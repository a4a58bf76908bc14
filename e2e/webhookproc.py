"""Run ``tensile webhook`` for a local cluster, registered the way a user would.

Certificates come from ``tensile webhook certs`` and the registration from
``tensile webhook install``, so the e2e tests exercise the real commands.
The configuration is removed before the server stops: with failurePolicy
Fail, opted-in pod creates would otherwise fail during teardown.

Like a hardened deployment, the webhook answers only the apiserver: it is started with
``--client-ca-file`` (the cluster CA) and ``--client-allowed-names`` (the name of the client
certificate every local apiserver presents to webhooks, see ``e2e.cluster``); ``client_auth=False``
serves anyone, as the default configuration does.

The server also serves ``/metrics`` and the probes over plain HTTP on a free
port (``--metrics-addr``), which ``metrics()`` scrapes; it logs at ``-v 4``,
one line per admission decision, so a failing test's log says what was decided.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kubernetes import client as k8s

from e2e import pki
from e2e.cluster import LocalCluster, wait_for
from e2e.metrics import Samples, scrape
from e2e.process import Process, Supervised, free_port
from tensile import conventions as c

CONFIG_NAME = "tensile-webhook"


def tensile(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tensile.cli", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"tensile {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class WebhookProcess(Supervised):
    def __init__(self, cluster: LocalCluster, extra_args: list[str] | None = None, client_auth: bool = True) -> None:
        self.cluster = cluster
        self.extra_args = extra_args or []
        self.client_auth = client_auth
        self.dir: Path = cluster.dir / "webhook"
        self.port = 0
        self.metrics_port = 0
        self.proc: Process | None = None
        self.label = f"webhook ({cluster.dir / 'webhook.log'})"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate"

    def start(self, timeout: float = 60.0) -> None:
        tensile("webhook", "certs", str(self.dir), "--host", "127.0.0.1", "--dns", "tensile-webhook.tensile.svc")
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc = Process("tensile-webhook", [
            sys.executable, "-m", "tensile.cli", "webhook", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--tls-cert-file={self.dir / 'tls.crt'}", f"--tls-key-file={self.dir / 'tls.key'}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}", "--v=4", "--log-format=text", *self.client_args(),
            *self.extra_args,
        ], self.cluster.dir / "webhook.log")
        self.proc.start()
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))

        def healthy() -> bool:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/healthz", context=ctx, timeout=2) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)

        self.proc.wait_ready(healthy, timeout)
        tensile("webhook", "install", "--kubeconfig", str(self.cluster.kubeconfig), "--url", self.url,
                "--ca-file", str(self.dir / "ca.crt"))
        self._wait_active(timeout)

    def client_args(self) -> list[str]:
        if not self.client_auth:
            return []
        return [f"--client-ca-file={self.cluster.ca_file}", f"--client-allowed-names={pki.WEBHOOK_CLIENT_CN}"]

    def _wait_active(self, timeout: float) -> None:
        """The apiserver loads new webhook configurations asynchronously; probe with a dry run."""
        probe = {
            "metadata": {"generateName": "webhook-probe-", "labels": {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}},
            "spec": {"containers": [{"name": "c", "image": "probe"}]},
        }

        def active() -> bool:
            pod = self.cluster.core.create_namespaced_pod("default", probe, dry_run="All")
            return bool(c.CLUSTER_SELECTOR_ANNOTATION in (pod.metadata.annotations or {}))

        wait_for(active, timeout, interval=0.5, what="webhook configuration active in the apiserver")

    def metrics(self) -> Samples:
        """One scrape of the webhook's ``/metrics``."""
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def stop(self) -> None:
        api = k8s.AdmissionregistrationV1Api(self.cluster.api())
        for delete in (api.delete_mutating_webhook_configuration, api.delete_validating_admission_policy_binding,
                       api.delete_validating_admission_policy):
            try:
                delete(CONFIG_NAME)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
        time.sleep(1)  # let the apiserver drop them before the server goes away
        if self.proc is not None:
            self.proc.stop()

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines) if self.proc else "(not started)"
