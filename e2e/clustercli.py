"""``tensile cluster up|down|list``: paired clusters on this machine, no Docker, for anyone's e2e tests.

``up`` resolves the binaries in the foreground (with progress), then starts a supervisor process in
a session of its own that runs the clusters and virtual nodes (``e2e.federation``) and stays in the
background. ``up`` returns once every virtual node is Ready and prints the kubeconfigs.
``down`` asks the supervisor to stop everything and then makes sure of it: every process started
for the federation carries its token in the environment, so even a supervisor killed with -9 leaves
nothing that ``down`` cannot find.

State lives under ``--state-dir`` (default ``$TENSILE_STATE_DIR`` or ``~/.local/state/tensile``),
one directory per name: ``supervisor.pid``, ``state.json``, ``supervisor.log`` and the clusters'
own directories (kubeconfigs and component logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOKEN_ENV = "TENSILE_CLUSTER_TOKEN"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
STOP_TIMEOUT = 60.0
STATE_HELP = "where state and logs live (default $TENSILE_STATE_DIR or ~/.local/state/tensile)"


def default_state_dir() -> Path:
    env = os.environ.get("TENSILE_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tensile"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cluster", help="local upper and lower clusters joined by virtual nodes, for e2e tests",
                              description="Start, list and stop local clusters (real control planes, kwok nodes, "
                                          "no Docker) joined by tensile virtual nodes.")
    sub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="start an upper cluster and lower clusters, and return once they are Ready")
    up.add_argument("name", help="a name for this federation (a DNS label of at most 32 characters)")
    _spec_flags(up)
    up.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                    help="how long to wait for everything to be Ready (default 300)")
    up.set_defaults(func=run_up)

    down = sub.add_parser("down", help="stop everything NAME runs and remove its state")
    down.add_argument("name")
    down.add_argument("--state-dir", type=Path, default=None, help=STATE_HELP)
    down.add_argument("--keep-logs", action="store_true", help="keep the state directory with every log")
    down.set_defaults(func=run_down)

    ls = sub.add_parser("list", help="what runs")
    ls.add_argument("--state-dir", type=Path, default=None, help=STATE_HELP)
    ls.set_defaults(func=run_list)

    sup = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    sup.add_argument("name")
    _spec_flags(sup)
    sup.set_defaults(func=run_supervise)


def _spec_flags(p: argparse.ArgumentParser) -> None:
    from e2e import nodespec

    p.add_argument("--nodes", action="append", default=[], metavar="SPEC",
                   help="nodes of each lower cluster, like '3x cpu=8,memory=32Gi,labels=zone=a' (repeatable; "
                        f"default '{nodespec.DEFAULT_LOWER_NODES}')")
    p.add_argument("--upper-nodes", action="append", default=[], metavar="SPEC",
                   help=f"nodes of the upper cluster (default '{nodespec.DEFAULT_UPPER_NODES}')")
    p.add_argument("--lower", action="append", default=[], metavar="NAME",
                   help="a lower cluster, joined through virtual node vk-NAME (repeatable; none: one cluster alone)")
    p.add_argument("--webhook", action="store_true", help="install the tensile webhook in the upper cluster")
    p.add_argument("--scheduler", action="store_true",
                   help="run the tensile scheduler extender and configure the upper kube-scheduler to call it")
    p.add_argument("--backend", choices=("local", "kind"), default="local",
                   help="local: control-plane processes on this machine, no Docker (default); kind: kind clusters "
                        "in Docker")
    p.add_argument("--state-dir", type=Path, default=None, help=STATE_HELP)


# --- state ---------------------------------------------------------------------------------------

class State:
    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.pid_file = self.dir / "supervisor.pid"
        self.file = self.dir / "state.json"
        self.log = self.dir / "supervisor.log"

    def read(self) -> dict[str, Any]:
        try:
            value = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def write(self, **fields: Any) -> None:
        data = {**self.read(), **fields}
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.file)

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def supervisor_alive(self) -> bool:
        pid = self.pid()
        return pid is not None and _is_supervisor(pid, self.read().get("token", ""))


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _is_supervisor(pid: int, token: str) -> bool:
    """``pid`` runs and is this federation's supervisor (not a process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"_supervise" in cmdline and (not token or f"{TOKEN_ENV}={token}".encode() in _environ(pid))


def processes_with(token: str) -> list[int]:
    """Every process carrying the federation's token (the supervisor and all it started)."""
    if not token:
        return []
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and needle in _environ(int(entry.name)):
            found.append(int(entry.name))
    return found


def _kill_all(token: str, timeout: float = 10.0) -> list[int]:
    """SIGTERM then SIGKILL every process of the federation; the pids that were still there."""
    pids = processes_with(token)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and processes_with(token):
            time.sleep(0.2)
        if not processes_with(token):
            break
    return pids


def _ports(kubeconfigs: dict[str, str]) -> list[int]:
    ports = []
    for path in kubeconfigs.values():
        with contextlib.suppress(OSError):
            if m := re.search(r"server:\s*https?://[^:\s]+:(\d+)", Path(path).read_text()):
                ports.append(int(m.group(1)))
    return ports


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- up --------------------------------------------------------------------------------------------

def _problem(args: argparse.Namespace) -> str | None:
    from e2e import nodespec

    if not _NAME.match(args.name):
        return f"name {args.name!r} must be a DNS label of at most 32 characters (a-z, 0-9 and '-')"
    for lower in args.lower:
        if not _NAME.match(lower):
            return f"--lower {lower!r} must be a DNS label of at most 32 characters"
    if len(set(args.lower)) != len(args.lower):
        return "each --lower name must be given once"
    try:
        for spec in [*args.nodes, *args.upper_nodes]:
            nodespec.parse(spec, "check")
    except nodespec.NodeSpecError as exc:
        return f"bad node spec: {exc}"
    problem: str | None = _spec(args).problem()
    return problem


def run_up(args: argparse.Namespace) -> int:
    _logging()
    root = args.state_dir or default_state_dir()
    problem = _problem(args)
    if problem:
        print(f"tensile cluster up: {problem}", file=sys.stderr)
        return 2
    state = State(root, args.name)
    if state.supervisor_alive():
        print(f"tensile cluster up: {args.name} is already running (supervisor pid {state.pid()}); "
              f"`tensile cluster down {args.name}` first", file=sys.stderr)
        return 2
    if state.dir.exists():
        left = _kill_all(state.read().get("token", ""))
        print(f"tensile cluster up: removing the stale state of an earlier {args.name} in {state.dir}"
              + (f" (stopped {len(left)} leftover processes)" if left else ""), file=sys.stderr)
        shutil.rmtree(state.dir, ignore_errors=True)
    from e2e.binaries import BinariesUnavailable, ensure_binaries

    try:
        ensure_binaries()
    except BinariesUnavailable as exc:
        print(f"tensile cluster up: {exc}", file=sys.stderr)
        return 2
    state.dir.mkdir(parents=True)
    token = secrets.token_hex(8)
    state.write(name=args.name, status="starting", token=token, started=time.time())
    argv = [sys.executable, "-m", "tensile.cli", "cluster", "_supervise", args.name, "--state-dir", str(root),
            *_passed_flags(args)]
    env = dict(os.environ, **{TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"})
    with open(state.log, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    began = time.monotonic()
    while True:
        status = state.read().get("status")
        if status == "ready":
            break
        if status == "failed" or proc.poll() is not None or time.monotonic() - began > args.timeout:
            why = state.read().get("error") or ("timed out" if proc.poll() is None else
                                                f"supervisor exited with {proc.returncode}")
            print(f"tensile cluster up: {args.name} did not start: {why}\n--- {state.log} ---\n"
                  f"{_tail(state.log)}", file=sys.stderr)
            _stop(state)
            return 1
        time.sleep(0.2)
    data = state.read()
    print(f"{args.name} is ready in {data.get('started_in', 0):.1f}s (supervisor pid {proc.pid}, logs in {state.dir})")
    for cluster, path in data.get("kubeconfigs", {}).items():
        print(f"  {cluster:<10} {path}")
    for vn in data.get("virtual_nodes", []):
        print(f"  virtual node {vn}")
    upper = data.get("kubeconfigs", {}).get("upper") or next(iter(data.get("kubeconfigs", {}).values()), "")
    print(f"export KUBECONFIG={upper}")
    for cluster, path in data.get("kubeconfigs", {}).items():
        if cluster != "upper":
            print(f"export KUBECONFIG_{cluster.upper().replace('-', '_')}={path}")
    return 0


def _passed_flags(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, values in (("--nodes", args.nodes), ("--upper-nodes", args.upper_nodes), ("--lower", args.lower)):
        for value in values:
            out += [flag, value]
    out += ["--webhook"] * args.webhook + ["--scheduler"] * args.scheduler + ["--backend", args.backend]
    return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)


def _spec(args: argparse.Namespace, root: Path | None = None) -> Any:
    from e2e import federation, nodespec

    return federation.FederationSpec(
        args.name,
        upper_nodes=nodespec.parse_all(args.upper_nodes, f"{args.name}-upper", nodespec.DEFAULT_UPPER_NODES),
        lowers={name: nodespec.parse_all(args.nodes, f"{args.name}-{name}", nodespec.DEFAULT_LOWER_NODES)
                for name in args.lower},
        webhook=args.webhook, scheduler=args.scheduler, root=root, backend=args.backend)


# --- the supervisor ------------------------------------------------------------------------------

def run_supervise(args: argparse.Namespace) -> int:
    from e2e import federation

    _logging()
    root = args.state_dir or default_state_dir()
    state = State(root, args.name)
    state.pid_file.write_text(str(os.getpid()))
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    spec = _spec(args, root=state.dir / "clusters")
    fed: federation.Federation | None = None
    try:
        fed = federation.Federation.start(spec)
        state.write(status="ready", started_in=fed.started_in,
                    kubeconfigs={k: str(v) for k, v in fed.kubeconfigs().items()},
                    virtual_nodes=[vn.name for vn in fed.virtual_nodes.values()], pids=fed.pids())
        while not stopping:
            time.sleep(0.5)
        state.write(status="stopping")
    except Exception as exc:
        logging.exception("start-up failed")
        state.write(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1
    finally:
        if fed is not None:
            fed.stop()
        state.pid_file.unlink(missing_ok=True)
    state.write(status="stopped")
    return 0


# --- down and list ---------------------------------------------------------------------------------

def _stop(state: State) -> tuple[list[int], list[int]]:
    """Stop the supervisor (it stops the rest), then anything left; (pids killed late, ports still open)."""
    data = state.read()
    pid = state.pid()
    if pid is not None and state.supervisor_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _is_supervisor(pid, data.get("token", "")):
            time.sleep(0.2)
    left = _kill_all(data.get("token", ""))
    ports = [p for p in _ports(data.get("kubeconfigs") or {}) if _listening(p)]
    return left, ports


def run_down(args: argparse.Namespace) -> int:
    root = args.state_dir or default_state_dir()
    state = State(root, args.name)
    if not state.dir.exists():
        print(f"{args.name} is not running (nothing in {state.dir})")
        return 0
    left, ports = _stop(state)
    if not args.keep_logs:
        shutil.rmtree(state.dir, ignore_errors=True)
    if left:
        print(f"stopped {len(left)} process(es) the supervisor had not", file=sys.stderr)
    if ports:
        print(f"tensile cluster down: ports still open: {', '.join(map(str, ports))}", file=sys.stderr)
        return 1
    print(f"{args.name} is down" + (f" (logs kept in {state.dir})" if args.keep_logs else ""))
    return 0


def run_list(args: argparse.Namespace) -> int:
    root = args.state_dir or default_state_dir()
    rows = []
    for d in sorted(root.iterdir()) if root.exists() else []:
        state = State(root, d.name)
        data = state.read()
        if not data:
            continue
        alive = state.supervisor_alive()
        status = data.get("status", "?") if alive else "stale (supervisor gone; `down` cleans up)"
        upper = (data.get("kubeconfigs") or {}).get("upper", "")
        rows.append((d.name, status, str(state.pid() or "-"), ",".join(data.get("virtual_nodes", [])) or "-", upper))
    if not rows:
        print(f"no clusters (in {root})")
        return 0
    header = ("NAME", "STATUS", "PID", "VIRTUAL-NODES", "UPPER-KUBECONFIG")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0
