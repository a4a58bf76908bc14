"""Run ``tensile virtual-node`` as a real process between two local clusters.

A subprocess (not an in-process task) so tests can kill -9 it mid-sync and
restart it, exactly as a crash in production would.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from e2e import pki
from e2e.cluster import LocalCluster
from e2e.metrics import Samples, scrape
from e2e.process import Process, Supervised, free_port


class VirtualNodeProcess(Supervised):
    def __init__(
        self,
        upper: LocalCluster,
        lower: LocalCluster,
        name: str = "vk-lower",
        extra_args: list[str] | None = None,
        log_dir: Path | None = None,
        upper_env: dict[str, str] | None = None,
        upper_kubeconfig: Path | None = None,
        verified_serving_cert: bool = True,
        lower_kubeconfig: Path | None = None,
    ) -> None:
        self.upper = upper
        self.lower = lower
        self.name = name
        self.extra_args = extra_args or []
        self.log_path = (log_dir or upper.dir) / f"virtual-node-{name}.log"
        #: When set, the upper side is reached with these (in-cluster) variables, not a kubeconfig.
        self.upper_env = upper_env
        self.upper_kubeconfig = upper_kubeconfig or upper.kubeconfig
        self.lower_kubeconfig = lower_kubeconfig or lower.kubeconfig
        self.metrics_port = 0
        self.kubelet_port = free_port()
        #: Serve the kubelet API with a certificate the upper apiserver verifies (else self-signed).
        self.verified_serving_cert = verified_serving_cert
        self.proc: Process | None = None
        self.label = f"virtual node {name} ({self.log_path})"

    def serving_args(self) -> list[str]:
        args = [f"--client-ca-file={self.upper.ca_file}"]
        if self.verified_serving_cert:
            d = self.upper.dir / "pki"
            cert, key = d / f"kubelet-{self.name}.crt", d / f"kubelet-{self.name}.key"
            if not cert.exists():
                pki.write_kubelet_serving(pki.paths(d), self.name, ["127.0.0.1"], cert, key)
            args += [f"--tls-cert-file={cert}", f"--tls-private-key-file={key}"]
        else:
            args.append(f"--cert-dir={self.upper.dir / f'kubelet-{self.name}-self-signed'}")
        return args

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "tensile.cli", "virtual-node",
            f"--nodename={self.name}",
            *([] if self.upper_env else [f"--kubeconfig={self.upper_kubeconfig}"]),
            f"--client-kubeconfig={self.lower_kubeconfig}",
            "--node-ip=127.0.0.1",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--kubelet-address=127.0.0.1",
            f"--kubelet-port={self.kubelet_port}",
            *self.serving_args(),
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0, leading: bool = True) -> None:
        """Start; wait until ready and, with ``leading``, until this replica writes (holds the Lease)."""
        self.metrics_port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KUBECONFIG", None)
        env.update(self.upper_env or {})
        self.proc = Process(f"virtual-node-{self.name}", self.argv(), self.log_path, env=env)
        self.proc.start()
        self.proc.wait_ready(self.leading if leading else self._ready, timeout)

    def healthz(self) -> int:
        """The status code of ``/healthz`` (a dead or wedged loop answers 500)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def readyz(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def _ready(self) -> bool:
        return self.readyz()[0] == 200

    def leading(self) -> bool:
        """Ready, and the replica that writes: it leads, or runs without leader election."""
        status, body = self.readyz()
        return status == 200 and ("leading" in body or "leader election off" in body) and (
            self.metrics().total("tensile_leader_is_leader") == 1)

    def metrics(self) -> Samples:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def rss_kib(self) -> int:
        """The process's resident memory now (``VmRSS``), in KiB."""
        assert self.proc is not None and self.proc.pid is not None, f"{self.label} is not running"
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"{self.label}: no VmRSS in /proc/{self.proc.pid}/status")

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def log_tail(self, lines: int = 60) -> str:
        return self.proc.log_tail(lines) if self.proc else "(not started)"
