"""Clusters from the real ``kind`` CLI, for machines with a Docker engine.

The local-process backend (``e2e.cluster.LocalCluster``) is the default and needs no Docker.
``KindCluster`` has the same shape (``name``, ``dir``, ``kubeconfig``, ``ca_file``, clients,
``start``/``stop``), so the federation and the pytest fixtures run unchanged on either.
``kind_unavailable()`` says in one sentence why kind cannot run here, so callers skip or refuse
with that reason.

What differs: kind's apiservers run in containers and cannot dial this host's 127.0.0.1, so the
webhook, the scheduler extender and the kubelet API of virtual nodes (which the upper apiserver
calls back) are not offered on this backend; virtual nodes run with ``--kubelet-port 0``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import yaml

from e2e.cluster import KubeconfigClients, runs_root
from e2e.docker_backend import docker_unavailable
from e2e.kwok import NodeSpec
from e2e.process import Supervised

KIND_NODE_IMAGE = "kindest/node:v1.34.0"


def kind_unavailable() -> str | None:
    """None when kind can create clusters here; otherwise why not."""
    if shutil.which("kind") is None:
        return "no kind CLI on PATH (https://kind.sigs.k8s.io)"
    return docker_unavailable()


class KindCluster(Supervised, KubeconfigClients):
    def __init__(self, name: str, nodes: list[NodeSpec] | None = None, root: Path | None = None,
                 image: str = KIND_NODE_IMAGE) -> None:
        self.name = name
        #: kind runs real nodes: one control-plane node that also takes pods; ``nodes`` only counts.
        self.nodes = list(nodes or [])
        self.image = image
        self.dir = (root or runs_root()) / f"kind-{name}"
        self.label = f"kind cluster {name} ({self.dir})"
        self.failed = False

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        workers = [{"role": "worker"} for _ in self.nodes[1:]]
        config = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
                  "nodes": [{"role": "control-plane"}, *workers]}
        (self.dir / "kind.yaml").write_text(yaml.safe_dump(config))
        self._kind("create", "cluster", "--name", self.name, "--image", self.image, "--kubeconfig",
                   str(self.kubeconfig), "--config", str(self.dir / "kind.yaml"), "--wait", "120s")
        loaded = yaml.safe_load(self.kubeconfig.read_text())
        ca = loaded["clusters"][0]["cluster"]["certificate-authority-data"]
        self.ca_file.write_bytes(base64.b64decode(ca))

    def stop(self) -> None:
        if shutil.which("kind"):
            self._kind("delete", "cluster", "--name", self.name, check=False)
        self.close_clients()

    def _kind(self, *args: str, check: bool = True) -> None:
        with open(self.dir / "kind.log", "ab") as log:
            proc = subprocess.run(["kind", *args], stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kind {' '.join(args[:2])} failed; see {self.dir / 'kind.log'}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.dir / "kind.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"
