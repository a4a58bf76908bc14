"""Run ``tensile descheduler`` for a local upper cluster, as a real process."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from e2e.cluster import LocalCluster
from e2e.metrics import Samples, scrape
from e2e.process import Process, Supervised, free_port


class DeschedulerProcess(Supervised):
    def __init__(self, upper: LocalCluster, name: str = "descheduler", extra_args: list[str] | None = None,
                 kubeconfig: Path | None = None) -> None:
        self.upper = upper
        self.kubeconfig = kubeconfig or upper.kubeconfig
        self.name = name
        self.port = free_port()
        self.extra_args = extra_args or []
        self.log_path = upper.dir / f"tensile-{name}.log"
        self.proc: Process | None = None
        self.label = f"tensile descheduler ({self.log_path})"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tensile.cli", "descheduler", f"--kubeconfig={self.kubeconfig}",
                f"--metrics-addr=127.0.0.1:{self.port}", "--interval=2s", "--unschedulable-for=5s",
                "--leader-elect-lease-duration=6s", "--leader-elect-renew-deadline=4s",
                "--leader-elect-retry-period=1s", "--v=4", "--log-format=text", *self.extra_args]

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KUBECONFIG", None)
        self.proc = Process(f"tensile-{self.name}", self.argv(), self.log_path, env=env)
        self.proc.start()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except urllib.error.HTTPError:
                return False

        self.proc.wait_ready(ready, timeout)

    def metrics(self) -> Samples:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log_tail(self, lines: int = 60) -> str:
        return self.proc.log_tail(lines) if self.proc else "(not started)"
