"""Find, download or build the control-plane binaries the harness runs.

Machines that run tensile's tests often have no Docker engine and no
internet, only a Go toolchain and a Go module proxy. So the binaries are
resolved in this order:

1. the directory named by ``TENSILE_K8S_BIN`` (all five binaries must be there);
2. a cache under ``~/.cache/tensile/`` keyed by component and version;
3. the official release downloads, only when the release hosts answer within
   a few seconds (offline machines fail fast and move on; ``TENSILE_NO_DOWNLOAD=1``
   or ``--no-download`` skips the attempt);
4. a build from the published Go modules with the local ``go``.

``k8s.io/kubernetes`` refuses ``go install …@version`` because its go.mod
replaces the staging modules with local paths, so the build uses a scratch
module that requires it and maps each staging module to its published
``v0.X.Y`` twin. etcd and kwok build the same way, which also sidesteps any
``replace`` lines in their own go.mod files.

metrics-server and helm (:func:`helm`, for the chart tests and ``make manifests``) are obtained
and cached the same way by ``make binaries``, but are optional in ``TENSILE_K8S_BIN``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from e2e import versions

log = logging.getLogger("tensile.e2e.binaries")

K8S_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
ALL_BINARIES = ("etcd", *K8S_COMPONENTS, "kwok")
#: Built and cached with the others, but optional in ``TENSILE_K8S_BIN``: only metrics tests run
#: metrics-server, and only the chart tests run helm.
OPTIONAL_BINARIES = ("metrics-server", "helm")

NETWORK_PROBE_TIMEOUT = 3.0


class BinariesUnavailable(RuntimeError):
    """No way to obtain the binaries worked; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Component:
    """One Go module that yields one or more binaries."""

    name: str
    module: str
    version: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    ldflags: str = ""
    #: Official release binaries exist (metrics-server publishes container images only).
    downloadable: bool = True

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.version}"


def _k8s_ldflags(version: str) -> str:
    m = re.match(r"v(\d+)\.(\d+)\.", version)
    major, minor = (m.group(1), m.group(2)) if m else ("1", "0")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return "-s -w " + " ".join(flags)


def _helm_ldflags(version: str, k8s_minor: str) -> str:
    """What helm's own Makefile stamps: its version, and the Kubernetes minor of its client-go, which is
    ``.Capabilities.KubeVersion`` in ``helm template`` and the bar of ``helm lint``'s deprecation check
    (left unset, both say v1.20)."""
    flags = [f"-X helm.sh/helm/v3/internal/version.version={version}",
             "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={k8s_minor}"]
    return "-s -w " + " ".join(flags)


def components() -> tuple[Component, ...]:
    return (
        Component(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=versions.KUBERNETES,
            packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMPONENTS),
            binaries=K8S_COMPONENTS,
            ldflags=_k8s_ldflags(versions.KUBERNETES),
        ),
        Component(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=versions.ETCD,
            packages=("go.etcd.io/etcd/server/v3",),
            binaries=("etcd",),
            ldflags="-s -w",
        ),
        Component(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version=versions.KWOK,
            packages=("sigs.k8s.io/kwok/cmd/kwok",),
            binaries=("kwok",),
            ldflags=f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={versions.KWOK}",
        ),
        Component(
            name="metrics-server",
            module="sigs.k8s.io/metrics-server",
            version=versions.METRICS_SERVER,
            packages=("sigs.k8s.io/metrics-server/cmd/metrics-server",),
            binaries=("metrics-server",),
            ldflags=f"-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion={versions.METRICS_SERVER}",
            downloadable=False,
        ),
        Component(
            name="helm",
            module="helm.sh/helm/v3",
            version=versions.HELM,
            packages=("helm.sh/helm/v3/cmd/helm",),
            binaries=("helm",),
            ldflags=_helm_ldflags(versions.HELM, versions.HELM_K8S_MINOR),
        ),
    )


def component(name: str) -> Component:
    return next(c for c in components() if c.name == name)


def cache_root() -> Path:
    if os.environ.get("TENSILE_CACHE_DIR"):
        return Path(os.environ["TENSILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tensile"


def _complete(directory: Path, names: tuple[str, ...]) -> bool:
    return all(os.access(directory / n, os.X_OK) for n in names)


# --- release downloads -----------------------------------------------------

def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _release_urls(c: Component) -> dict[str, str]:
    arch = _arch()
    if c.name == "kubernetes":
        return {b: f"https://dl.k8s.io/release/{c.version}/bin/linux/{arch}/{b}" for b in c.binaries}
    if c.name == "etcd":
        return {
            "etcd.tar.gz": (
                f"https://github.com/etcd-io/etcd/releases/download/{c.version}/"
                f"etcd-{c.version}-linux-{arch}.tar.gz"
            )
        }
    if c.name == "helm":
        return {"helm.tar.gz": f"https://get.helm.sh/helm-{c.version}-linux-{arch}.tar.gz"}
    return {"kwok": f"https://github.com/kubernetes-sigs/kwok/releases/download/{c.version}/kwok-linux-{arch}"}


def extract_binaries(archive: Path, names: tuple[str, ...], dest: Path) -> None:
    """Extract the regular files called one of ``names`` from a release tarball, flattened into ``dest``
    (etcd's tarball holds ``etcd-vX-linux-amd64/etcd``, helm's ``linux-amd64/helm``)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            if base in names and member.isfile():
                member.name = base
                tar.extract(member, dest, filter="data")


def network_available(url: str = "https://dl.k8s.io/", timeout: float = NETWORK_PROBE_TIMEOUT) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # something answered
    except (urllib.error.URLError, OSError, TimeoutError):
        return False
    return True


def download(c: Component, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"{c.cache_key}-", dir=dest.parent))
    try:
        for name, url in _release_urls(c).items():
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp / name, "wb") as out:
                shutil.copyfileobj(resp, out)
            if name.endswith(".tar.gz"):
                extract_binaries(tmp / name, c.binaries, tmp)
                (tmp / name).unlink()
        for b in c.binaries:
            (tmp / b).chmod(0o755)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- Go module build -------------------------------------------------------

def _staging_replaces(go_mod: str, version: str) -> list[str]:
    """Map every ``k8s.io/x => ./staging/...`` line to ``k8s.io/x v0.Y.Z``."""
    staging_version = "v0." + version.split(".", 1)[1]
    mods = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", go_mod, re.M)
    return [f"{m} => {m} {staging_version}" for m in mods]


def scratch_go_mod(c: Component, upstream_go_mod: str) -> str:
    go_line = re.search(r"^go\s+(\S+)", upstream_go_mod, re.M)
    lines = [
        "module tensile.local/build",
        "",
        f"go {go_line.group(1) if go_line else '1.24'}",
        "",
        f"require {c.module} {c.version}",
    ]
    replaces = _staging_replaces(upstream_go_mod, c.version) if c.name == "kubernetes" else []
    if replaces:
        lines += ["", "replace (", *(f"\t{r}" for r in replaces), ")"]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BinariesUnavailable(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-4000:]}")
    return proc.stdout


def go_binary_name(package: str) -> str:
    """The file ``go build -o dir/`` writes: the last path element, skipping a ``/vN`` suffix."""
    parts = package.split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def go_build(c: Component, dest: Path, go: str) -> None:
    work = dest.parent / "build" / c.cache_key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    started = time.monotonic()
    # Read the upstream go.mod through the module proxy the go command uses.
    (work / "go.mod").write_text("module tensile.local/probe\n\ngo 1.22\n")
    info = _run([go, "mod", "download", "-json", f"{c.module}@{c.version}"], work, env)
    m = re.search(r'"GoMod":\s*"([^"]+)"', info)
    upstream = Path(m.group(1)).read_text() if m else ""
    (work / "go.mod").write_text(scratch_go_mod(c, upstream))
    imports = "\n".join(f'\t_ "{p}"' for p in c.packages)
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    _run([go, "mod", "tidy"], work, env)
    out = work / "out"
    out.mkdir()
    _run([go, "build", "-trimpath", f"-ldflags={c.ldflags}", "-o", str(out) + "/", *c.packages], work, env)
    for pkg, binary in zip(c.packages, c.binaries, strict=True):
        produced = go_binary_name(pkg)
        if produced != binary:
            (out / produced).rename(out / binary)
    _publish(out, dest)
    shutil.rmtree(work, ignore_errors=True)
    log.info("built %s %s in %.0fs", c.name, c.version, time.monotonic() - started)


def _publish(src: Path, dest: Path) -> None:
    """Move a finished directory into place atomically so a half build is never used."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


# --- resolution --------------------------------------------------------------

#: How long to wait for another process building the same component (a cold Go build takes minutes).
LOCK_TIMEOUT = 3600.0


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One process at a time obtains a component: concurrent runs (two test sessions, ``make binaries`` beside
    ``make test``) would otherwise share its build directory and publish half of it."""
    with open(lock_path, "w") as f:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log.info("another process is obtaining %s; waiting for it (up to %.0f s)", what, timeout)
                    waiting = True
                if time.monotonic() > deadline:
                    raise BinariesUnavailable(f"gave up waiting {timeout:.0f} s for another process obtaining "
                                              f"{what} (lock {lock_path})") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: How often a long download or build says it is still going.
PROGRESS_EVERY = 15.0


@contextlib.contextmanager
def _progress(what: str, every: float = PROGRESS_EVERY) -> Iterator[None]:
    """Log what is being obtained and, while it lasts, how long it has taken so far."""
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            log.info("still obtaining %s: %s so far", what, _duration(time.monotonic() - started))

    ticker = threading.Thread(target=tick, name=f"progress {what}", daemon=True)
    log.info("obtaining %s (not cached yet; a Go build takes minutes)", what)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join(timeout=1.0)
    log.info("obtained %s in %s", what, _duration(time.monotonic() - started))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _obtain(c: Component, dest: Path, online: bool | None, allow_download: bool, allow_build: bool,
            go: str | None) -> bool | None:
    """Download or build one component into ``dest``; returns what is known of the network."""
    if online is None and c.downloadable:
        online = allow_download and not os.environ.get("TENSILE_NO_DOWNLOAD") and network_available()
    if online and c.downloadable:
        try:
            download(c, dest)
            return online
        except (urllib.error.URLError, OSError) as exc:
            log.warning("download of %s failed (%s); trying a Go build", c.name, exc)
    if not (allow_build and go):
        why = "no `go` on PATH" if not go else "building is disabled"
        raise BinariesUnavailable(_no_way_message(f"{c.name} {c.version}: no cached copy, no network, and " + why))
    go_build(c, dest, go)
    return online

def _no_way_message(reason: str) -> str:
    return (
        "tensile needs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok "
        f"({versions.KUBERNETES}, etcd {versions.ETCD}, kwok {versions.KWOK}) and could not get them: "
        f"{reason}.\nProvide them in one of three ways:\n"
        "  1. set TENSILE_K8S_BIN to a directory that holds all five binaries;\n"
        "  2. run on a machine with network access to dl.k8s.io and github.com (official releases);\n"
        "  3. install a Go toolchain (go >= 1.26) with access to a Go module proxy; `make binaries` "
        f"then builds them once into {cache_root()}."
    )


def _ensure_component(c: Component, root: Path, online: bool | None, allow_download: bool, allow_build: bool,
                      go: str | None) -> bool | None:
    """Put one component into the cache unless it is there; one process at a time."""
    dest = root / c.cache_key
    if _complete(dest, c.binaries):
        return online
    with _exclusive(root / f".{c.cache_key}.lock", c.name):
        if _complete(dest, c.binaries):
            return online  # another process made it while we waited
        with _progress(f"{c.name} {c.version}"):
            return _obtain(c, dest, online, allow_download, allow_build, go)


def helm(allow_build: bool = True, allow_download: bool = True) -> Path:
    """The helm binary the chart tests run: ``$TENSILE_K8S_BIN/helm`` if there, else the cached copy,
    obtained (downloaded or built, as ``make binaries`` does) if missing."""
    override = os.environ.get("TENSILE_K8S_BIN")
    if override and os.access(Path(override) / "helm", os.X_OK):
        return Path(override) / "helm"
    c = component("helm")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _ensure_component(c, root, None, allow_download, allow_build, shutil.which("go"))
    return root / c.cache_key / "helm"


def ensure_binaries(allow_build: bool = True, allow_download: bool = True) -> Path:
    """Return a directory holding all five binaries, obtaining them if needed.

    The result is a directory of symlinks into the per-component cache, so
    callers can put one path on PATH or pass it around.
    """
    override = os.environ.get("TENSILE_K8S_BIN")
    if override:
        d = Path(override)
        missing = [b for b in ALL_BINARIES if not os.access(d / b, os.X_OK)]
        if missing:
            raise BinariesUnavailable(f"TENSILE_K8S_BIN={d} lacks executable {', '.join(missing)}")
        return d

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    online: bool | None = None
    go = shutil.which("go")
    for c in components():
        online = _ensure_component(c, root, online, allow_download, allow_build, go)

    link_dir = root / f"bin-{versions.KUBERNETES}-etcd-{versions.ETCD}-kwok-{versions.KWOK}"
    link_dir.mkdir(exist_ok=True)
    for c in components():
        for b in c.binaries:
            link = link_dir / b
            target = root / c.cache_key / b
            if not (link.is_symlink() and link.resolve() == target.resolve()):
                link.unlink(missing_ok=True)
                link.symlink_to(target)
    return link_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Resolve or build tensile's control-plane binaries.")
    parser.add_argument("--no-download", action="store_true", help="never try the release downloads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    started = time.monotonic()
    try:
        d = ensure_binaries(allow_download=not args.no_download)
    except BinariesUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"binaries ready in {d} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
