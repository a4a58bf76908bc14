"""Clusters in containers, for machines that run a Docker engine.

The process backend (``e2e/cluster.py``) is the default and needs no Docker.
Where an engine is running, ``K3sCluster`` starts a k3s cluster through
testcontainers instead, with the same shape as ``LocalCluster``: a
``kubeconfig`` path and a ``core`` client. ``docker_unavailable()`` says in one
sentence why it cannot be used, so tests skip with that reason.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from e2e.cluster import KubeconfigClients
from e2e.process import Supervised

K3S_IMAGE = "rancher/k3s:v1.34.4-k3s1"


def docker_unavailable() -> str | None:
    """None when a Docker engine answers; otherwise why not."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=10)
    except subprocess.TimeoutExpired:
        return "docker info timed out: no Docker engine answering"
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"no Docker engine running ({lines[-1] if lines else 'docker info failed'})"
    return None


class K3sCluster(Supervised, KubeconfigClients):
    def __init__(self, name: str, image: str = K3S_IMAGE) -> None:
        self.name = name
        self.image = image
        self.label = f"k3s cluster {name}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"tensile-k3s-{name}-"))
        self.container: Any = None

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def start(self) -> None:
        reason = docker_unavailable()
        if reason:
            raise RuntimeError(f"cannot start {self.label}: {reason}")
        from testcontainers.community.k3s import K3SContainer

        self.container = K3SContainer(self.image)
        self.container.start()
        self.kubeconfig.write_text(self.container.config_yaml())

    def log_tail(self, lines: int = 40) -> str:
        if self.container is None:
            return "(not started)"
        out, err = self.container.get_logs()
        return "\n".join((out + err).decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.close_clients()
        if self.container is not None:
            self.container.stop()
            self.container = None
