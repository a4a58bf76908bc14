"""Run ``tensile scheduler`` (the kube-scheduler extender) for a local upper cluster.

It gets the upper cluster's kubeconfig and nothing else: no lower kubeconfig, and ``KUBECONFIG``
is removed from its environment, so a test can show it decides from the published profiles alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import LocalCluster
from e2e.metrics import Samples, scrape
from e2e.process import Process, Supervised, free_port


def kube_scheduler_config(url: str) -> dict[str, Any]:
    """What ``tensile scheduler config --url URL`` prints: the kube-scheduler configuration that calls the extender."""
    proc = subprocess.run([sys.executable, "-m", "tensile.cli", "scheduler", "config", "--url", url],
                          capture_output=True, text=True, timeout=60, check=True)
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


class SchedulerProcess(Supervised):
    def __init__(self, upper: LocalCluster, port: int | None = None, extra_args: list[str] | None = None,
                 kubeconfig: Path | None = None) -> None:
        self.upper = upper
        self.kubeconfig = kubeconfig or upper.kubeconfig
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.log_path = upper.dir / "tensile-scheduler.log"
        self.proc: Process | None = None
        self.label = f"tensile scheduler ({self.log_path})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tensile.cli", "scheduler", f"--kubeconfig={self.kubeconfig}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--v=5", "--log-format=text", *self.extra_args]

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KUBECONFIG", None)
        self.proc = Process("tensile-scheduler", self.argv(), self.log_path, env=env)
        self.proc.start()

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                return bool(r.status == 200)

        self.proc.wait_ready(ready, timeout)

    def metrics(self) -> Samples:
        return scrape(f"{self.url}/metrics")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log_tail(self, lines: int = 60) -> str:
        return self.proc.log_tail(lines) if self.proc else "(not started)"
