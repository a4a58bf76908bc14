"""``tensile cluster up|list|down`` as a user runs it: from another directory, with a real kubectl.

``up`` returns once both virtual nodes are Ready; a pod applied with the printed kubeconfig runs in a
lower cluster; ``down`` leaves no process and no listening port behind, also after the supervisor was
killed with -9 half-way through starting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e.cluster import wait_for
from e2e.clustercli import TOKEN_ENV, processes_with

pytestmark = pytest.mark.e2e

POD = """apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {virtual-pod: "true"}}
spec:
  containers: [{name: app, image: nginx}]
"""


def tensile(state: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensile.cli", "cluster", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=state.parent,
                          env=env)


def token(state: Path, name: str) -> str:
    value: str = json.loads((state / name / "state.json").read_text())["token"]
    return value


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports these processes listen on: their socket inodes matched against /proc/net/tcp."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def listeners(port: int) -> list[int]:
    """Every process listening on this TCP port now."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and port in listening_ports([int(entry.name)])]


def leaked(ports: set[int], pids: list[int], secret: str) -> list[int]:
    """Ports still held by the federation's processes. Tests run in parallel (pytest-xdist), so another
    test may bind a port the federation freed: such a port accepts, but its listener is not ours."""
    ours = set(pids) | set(processes_with(secret))
    return [p for p in ports if accepts(p) and (not (owners := listeners(p)) or ours.intersection(owners))]


def test_up_runs_a_pod_in_a_lower_cluster_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = tensile(state, "up", "demo", "--lower", "a", "--lower", "b", "--webhook", "--nodes", "2x cpu=4,memory=16Gi")
    assert up.returncode == 0, up.stderr
    assert re.search(r"demo is ready in [\d.]+s", up.stdout)
    upper = re.search(r"^export KUBECONFIG=(\S+)$", up.stdout, re.M)
    assert upper is not None and "export KUBECONFIG_A=" in up.stdout and "export KUBECONFIG_B=" in up.stdout
    kubeconfig = upper.group(1)

    # Both virtual nodes are Ready when `up` returns.
    api = k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    core = k8s.CoreV1Api(api)
    for vk in ("vk-a", "vk-b"):
        node = core.read_node(vk)
        assert any(cond.type == "Ready" and cond.status == "True" for cond in node.status.conditions)

    listing = tensile(state, "list")
    assert re.search(r"^demo\s+ready\s+\d+\s+vk-a,vk-b\s", listing.stdout, re.M), listing.stdout
    again = tensile(state, "up", "demo")
    assert again.returncode == 2 and "demo is already running" in again.stderr

    # A real kubectl with the printed kubeconfig: the webhook sends the pod to a virtual node.
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    subprocess.run(["kubectl", "apply", "-f", "-"], input=POD, text=True, env=env, check=True, timeout=60)
    subprocess.run(["kubectl", "wait", "--for=condition=Ready", "pod/hello", "--timeout=60s"], env=env, check=True,
                   timeout=90, capture_output=True)
    placed = core.read_namespaced_pod("hello", "default").spec.node_name
    assert placed in ("vk-a", "vk-b")
    lower = re.search(rf"^export KUBECONFIG_{placed[3:].upper()}=(\S+)$", up.stdout, re.M)
    assert lower is not None
    lower_api = k8s_config.new_client_from_config(config_file=lower.group(1))  # type: ignore[no-untyped-call]
    assert k8s.CoreV1Api(lower_api).read_namespaced_pod("hello", "default").status.phase == "Running"
    api.close()
    lower_api.close()

    # Down: no process and no port left.
    pids = processes_with(token(state, "demo"))
    ports = listening_ports(pids)
    assert len(pids) >= 15 and len(ports) >= 10, (pids, ports)
    secret = token(state, "demo")
    down = tensile(state, "down", "demo")
    assert down.returncode == 0, down.stderr
    assert "demo is down" in down.stdout
    assert processes_with(secret) == []
    assert leaked(ports, pids, secret) == []
    assert not (state / "demo").exists()
    assert "not running" in tensile(state, "down", "demo").stdout


def test_a_supervisor_killed_half_way_is_cleaned_up_by_down_and_by_the_next_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    starting = subprocess.Popen([sys.executable, "-m", "tensile.cli", "cluster", "up", "half", "--lower", "x",
                                 "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def some_started() -> bool:
            return (state / "half" / "supervisor.pid").exists() and len(processes_with(token(state, "half"))) >= 4
        wait_for(some_started, 60, interval=0.05, what="the supervisor and a few components")
        secret = token(state, "half")
        os.kill(int((state / "half" / "supervisor.pid").read_text()), signal.SIGKILL)
        starting.wait(timeout=60)
        assert starting.returncode == 1, "up reports the supervisor's death"
    finally:
        if starting.poll() is None:
            starting.kill()
    # `up` already stopped what the dead supervisor left; a second kill -9 leaves some for `down`.
    assert processes_with(secret) == []

    up = tensile(state, "up", "half", "--lower", "x")
    assert up.returncode == 0, up.stderr
    os.kill(int((state / "half" / "supervisor.pid").read_text()), signal.SIGKILL)
    secret = token(state, "half")
    time.sleep(0.5)
    assert processes_with(secret), "the components outlive their supervisor"
    assert "stale" in tensile(state, "list").stdout
    again = tensile(state, "up", "half", "--lower", "x")
    assert again.returncode == 0 and "removing the stale state" in again.stderr, again.stderr
    assert processes_with(secret) == [], "the stale run's processes were stopped"
    secret = token(state, "half")
    os.kill(int((state / "half" / "supervisor.pid").read_text()), signal.SIGKILL)
    down = tensile(state, "down", "half")
    assert down.returncode == 0 and "half is down" in down.stdout, down.stderr
    assert processes_with(secret) == []


def test_bad_input_gets_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for args, message in ((["up", "Bad_Name"], "must be a DNS label"),
                          (["up", "x", "--nodes", "3x colour=red"], "unknown key 'colour'"),
                          (["up", "x", "--lower", "a", "--lower", "a"], "each --lower name must be given once"),
                          (["up", "x", "--backend", "kind"], "the kind backend cannot run here")):
        result = tensile(state, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    # No binaries and no way to get them: the message names every way.
    env = dict(os.environ, TENSILE_CACHE_DIR=str(tmp_path / "empty-cache"), TENSILE_NO_DOWNLOAD="1",
               PATH="/usr/bin:/bin")
    env.pop("TENSILE_K8S_BIN", None)
    env.pop(TOKEN_ENV, None)
    result = tensile(state, "up", "nobins", env=env)
    assert result.returncode == 2, result.stderr
    assert "TENSILE_K8S_BIN" in result.stderr and "go" in result.stderr
    assert not (state / "nobins").exists(), "nothing half-created"


def test_up_with_the_scheduler_extender_places_pods_through_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = tensile(state, "up", "sched", "--lower", "a", "--scheduler", "--webhook")
    assert up.returncode == 0, up.stderr
    try:
        secret = token(state, "sched")
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes_with(secret)]
        assert any(b"tensile.cli\x00scheduler" in cmd for cmd in cmdlines), "the extender runs"
        kubeconfig = re.search(r"^export KUBECONFIG=(\S+)$", up.stdout, re.M).group(1)
        config = Path(kubeconfig).parent / "kube-scheduler.yaml"
        assert "extenders" in config.read_text() and "filterVerb" in config.read_text()
        env = dict(os.environ, KUBECONFIG=kubeconfig)
        subprocess.run(["kubectl", "apply", "-f", "-"], input=POD, text=True, env=env, check=True, timeout=60)
        subprocess.run(["kubectl", "wait", "--for=condition=Ready", "pod/hello", "--timeout=60s"], env=env,
                       check=True, timeout=90, capture_output=True)
        extender_log = next((state / "sched").rglob("tensile-scheduler.log"))
        assert 'pod="default/hello"' in extender_log.read_text(), "kube-scheduler asked the extender"
    finally:
        down = tensile(state, "down", "sched")
    assert down.returncode == 0, down.stderr
