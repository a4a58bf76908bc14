"""A real Kubernetes control plane as local processes, one per test cluster.

``LocalCluster`` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok on 127.0.0.1 with free ports, fresh certificates and
its own directory. Nothing is shared between clusters, so several run side
by side and several test runs can overlap. Logs stay in the directory; on a
failure their tails are printed.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import os
import secrets
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e import kwok, pki
from e2e.binaries import ensure_binaries
from e2e.echo import EchoServer
from e2e.process import ComponentFailed, Process, Supervised, free_port, port_in_use_error

log = logging.getLogger("tensile.e2e.cluster")

START_TIMEOUT = 90.0
PORT_RETRIES = 3


def runs_root() -> Path:
    return Path(os.environ.get("TENSILE_E2E_DIR") or Path(tempfile.gettempdir()) / "tensile-e2e")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (k8s.ApiException, OSError, KeyError, ValueError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f": {last_exc}" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class KubeconfigClients:
    """Ready ``kubernetes`` clients for anything that has an admin ``kubeconfig``."""

    _api: k8s.ApiClient | None = None

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    def api(self) -> k8s.ApiClient:
        if self._api is None:
            self._api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return self._api

    def close_clients(self) -> None:
        if self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]
            self._api = None

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api())

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api())


class LocalCluster(Supervised, KubeconfigClients):
    """One cluster. Use as a context manager; ``start()``/``stop()`` also work."""

    _counter = 0

    def __init__(
        self,
        name: str,
        nodes: list[kwok.NodeSpec] | None = None,
        scheduler_config: dict[str, Any] | None = None,
        root: Path | None = None,
        apiserver_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.nodes = list(nodes) if nodes is not None else [kwok.NodeSpec(f"{name}-node-0")]
        self.scheduler_config = scheduler_config or {}
        self.apiserver_args = apiserver_args or []
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.dir = (root or runs_root()) / f"{name}-{stamp}-{secrets.token_hex(3)}"
        self.bin = ensure_binaries()
        LocalCluster._counter += 1
        # Distinct pod CIDRs make IPs from different clusters tell apart in tests.
        octet = 64 + (os.getpid() * 7 + LocalCluster._counter * 13) % 160
        self.pod_cidr = f"10.{octet}.0.1/16"
        self.processes: dict[str, Process] = {}
        self.etcd_port = 0
        self.apiserver_port = 0
        self.kwok_port = 0
        self.echo: EchoServer | None = None
        self.failed = False

    # --- paths and clients -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def debug_files(self) -> kwok.DebugFiles:
        """What kwok serves for every fake pod: one log (and previous log), attach output, exec dir."""
        d = self.dir / "kwok"
        d.mkdir(parents=True, exist_ok=True)
        return kwok.DebugFiles(logs=str(d / "pod.log"), previous_logs=str(d / "pod-previous.log"),
                               attach=str(d / "attach.log"), exec_dir=str(d / "exec"),
                               forward_port=self.echo.port if self.echo else 0)

    def write_pod_log(self, lines: list[str], previous: bool = False, stream: str = "stdout",
                      when: datetime.datetime | None = None) -> None:
        """Append ``lines`` in CRI log format to what kwok serves as every pod's (previous) log."""
        debug = self.debug_files
        stamp = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        with open(debug.previous_logs if previous else debug.logs, "a") as f:
            f.writelines(f"{stamp} {stream} F {line}\n" for line in lines)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.dir / "pki" / "admin.crt"), str(self.dir / "pki" / "admin.key"))
        return ctx

    def get_raw(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    # --- lifecycle ------------------------------------------------------------

    def on_failure(self) -> None:
        self.failed = True  # stop() then prints every component's log tail

    def start(self) -> None:
        started = time.monotonic()
        self.dir.mkdir(parents=True)
        try:
            p = pki.write_cluster_pki(self.dir / "pki")
            self._start_etcd()
            self._start_apiserver(p)
            self._write_kubeconfig(p)
            self._start_controllers(p)
            self.wait_controllers()
            for node in self.nodes:
                self.add_node(node, wait=False)
            for node in self.nodes:
                self.wait_node_ready(node.name)
        except BaseException:
            self.failed = True
            self.stop()
            raise
        log.info("cluster %s up in %.1fs at %s (dir %s)", self.name, time.monotonic() - started, self.server, self.dir)

    def _spawn_with_port_retry(self, start: Callable[[], Process], ready: Callable[[], bool], name: str) -> None:
        for attempt in range(PORT_RETRIES):
            proc = start()
            try:
                proc.wait_ready(ready, START_TIMEOUT)
                return
            except ComponentFailed:
                proc.stop()
                if attempt + 1 < PORT_RETRIES and port_in_use_error(proc.log_tail(80)):
                    log.warning("%s: port taken, retrying with another", name)
                    continue
                raise

    def _start_etcd(self) -> None:
        def start() -> Process:
            self.etcd_port, peer = free_port(), free_port()
            proc = Process("etcd", [
                str(self.bin / "etcd"),
                "--name=default",
                f"--data-dir={self.dir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ], self.dir / "etcd.log")
            self.processes["etcd"] = proc
            proc.start()
            return proc

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        self._spawn_with_port_retry(start, ready, "etcd")

    def _apiserver_argv(self, p: pki.ClusterPKI) -> list[str]:
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={p.apiserver_cert}",
            f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=Node,RBAC",
            # As in production clusters: nodes may change only their own Node, Lease and pods.
            "--enable-admission-plugins=NodeRestriction",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p.kubelet_client_cert}",
            f"--kubelet-client-key={p.kubelet_client_key}",
            # As managed clusters do: kubelet serving certificates are verified (logs, exec, port-forward).
            f"--kubelet-certificate-authority={p.kubelet_ca_cert}",
            # The aggregation layer, for metrics-server.
            f"--requestheader-client-ca-file={p.front_proxy_ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client_cert}",
            f"--proxy-client-key-file={p.front_proxy_client_key}",
            # Admission webhooks are called with a client certificate, so a webhook can refuse anyone else.
            f"--admission-control-config-file={self._admission_config(p)}",
            "--profiling=false",
            "--max-requests-inflight=1000",
            "--max-mutating-requests-inflight=500",
            "--v=1",
            *self.apiserver_args,
        ]

    def _admission_config(self, p: pki.ClusterPKI) -> Path:
        """The apiserver's admission configuration: every webhook is called with ``p.webhook_client_cert``."""
        kubeconfig = self.dir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            # "*" matches any webhook host; the apiserver reads this once, at start.
            "users": [{"name": "*", "user": {"client-certificate": str(p.webhook_client_cert),
                                              "client-key": str(p.webhook_client_key)}}],
        }, sort_keys=False))
        config = self.dir / "admission-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": name, "configuration": {"apiVersion": "apiserver.config.k8s.io/v1",
                                                         "kind": "WebhookAdmissionConfiguration",
                                                         "kubeConfigFile": str(kubeconfig)}}
                        for name in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")],
        }, sort_keys=False))
        return config

    def _start_apiserver(self, p: pki.ClusterPKI, keep_port: bool = False) -> None:
        def start() -> Process:
            if not (keep_port and self.apiserver_port):
                self.apiserver_port = free_port()
            proc = Process("kube-apiserver", self._apiserver_argv(p), self.dir / "kube-apiserver.log")
            self.processes["kube-apiserver"] = proc
            proc.start()
            return proc

        def ready() -> bool:
            ctx = ssl.create_default_context(cafile=str(p.ca_cert))
            ctx.load_cert_chain(str(p.admin_cert), str(p.admin_key))
            try:
                url = f"https://127.0.0.1:{self.apiserver_port}/readyz"
                with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
                    return bool(r.status == 200)
            except urllib.error.HTTPError:
                return False

        self._spawn_with_port_retry(start, ready, "kube-apiserver")

    def _write_kubeconfig(self, p: pki.ClusterPKI) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name,
                          "cluster": {"server": self.server, "certificate-authority": str(p.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(p.admin_cert), "client-key": str(p.admin_key)}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": "admin"}}],
            "current-context": self.name,
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def node_kubeconfig(self, node: str) -> Path:
        """A kubeconfig with a kubelet's credentials for ``node`` (``system:node:NODE``)."""
        p = self._pki()
        cert, key = self.dir / "pki" / f"node-{node}.crt", self.dir / "pki" / f"node-{node}.key"
        pki.write_node_credentials(p, node, cert, key)
        path = self.dir / f"node-{node}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": self.name,
                          "cluster": {"server": self.server, "certificate-authority": str(p.ca_cert)}}],
            "users": [{"name": node, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": node, "context": {"cluster": self.name, "user": node}}],
            "current-context": node,
        }, sort_keys=False))
        return path

    def _scheduler_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }
        merged = copy.deepcopy(cfg)
        merged.update(copy.deepcopy(self.scheduler_config))
        return merged

    def _start_controllers(self, p: pki.ClusterPKI) -> None:
        kc = str(self.kubeconfig)
        kcm = Process("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--service-account-private-key-file={p.sa_key}",
            f"--root-ca-file={p.ca_cert}",
            # Kubelet serving certificates (kubernetes.io/kubelet-serving CSRs), trusted by the
            # apiserver's --kubelet-certificate-authority.
            f"--cluster-signing-kubelet-serving-cert-file={p.kubelet_ca_cert}",
            f"--cluster-signing-kubelet-serving-key-file={p.kubelet_ca_key}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--node-monitor-grace-period=40s",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
            "--v=1",
        ], self.dir / "kube-controller-manager.log")
        sched_cfg = self.dir / "kube-scheduler.yaml"
        sched_cfg.write_text(yaml.safe_dump(self._scheduler_config(), sort_keys=False))
        sched = Process("kube-scheduler", [
            str(self.bin / "kube-scheduler"),
            f"--config={sched_cfg}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=1",
        ], self.dir / "kube-scheduler.log")
        kwok_cfg = self.dir / "kwok.yaml"
        self.echo = EchoServer().start()
        debug = self.debug_files
        for f in (debug.logs, debug.previous_logs, debug.attach):
            Path(f).touch()
        Path(debug.exec_dir).mkdir(exist_ok=True)
        kwok_cfg.write_text(kwok.config_yaml(self.pod_cidr, node_ip="127.0.0.1", debug=debug))
        self.kwok_port = free_port()
        # The fake nodes' kubelet API: logs, exec, attach, port-forward and resource metrics.
        kw = Process("kwok", [
            str(self.bin / "kwok"),
            f"--kubeconfig={kc}",
            f"--config={kwok_cfg}",
            f"--server-address=127.0.0.1:{self.kwok_port}",
            f"--node-port={self.kwok_port}",
            f"--tls-cert-file={p.kwok_cert}",
            f"--tls-private-key-file={p.kwok_key}",
        ], self.dir / "kwok.log")
        for proc in (kcm, sched, kw):
            self.processes[proc.name] = proc
            proc.start()

    def wait_controllers(self) -> None:
        """The controller-manager is working once it made the default ServiceAccount."""
        for proc in ("kube-controller-manager", "kube-scheduler", "kwok"):
            if not self.processes[proc].alive():
                raise ComponentFailed(f"{proc} exited during start-up:\n{self.processes[proc].log_tail()}")
        def default_sa() -> bool:
            try:
                return bool(self.core.read_namespaced_service_account("default", "default"))
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return False
                raise

        self.processes["kube-controller-manager"].wait_ready(default_sa, START_TIMEOUT)

    # --- nodes -------------------------------------------------------------------

    def add_node(self, spec: kwok.NodeSpec, wait: bool = True) -> None:
        body = spec.manifest()
        node = self.core.create_node(body)
        # Some apiserver versions drop status on create; set it through /status.
        if not (node.status and node.status.allocatable):
            self.core.patch_node_status(spec.name, {"status": body["status"]})
        if wait:
            self.wait_node_ready(spec.name)

    def wait_node_ready(self, name: str, timeout: float = 60.0) -> None:
        def ready() -> bool:
            n = self.core.read_node(name)
            return any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))

        proc = self.processes.get("kwok")
        if proc is not None and not proc.alive():
            raise ComponentFailed(f"kwok is not running:\n{proc.log_tail()}")
        wait_for(ready, timeout, what=f"node {name} Ready in {self.name}")

    # --- faults ----------------------------------------------------------------------

    def stop_apiserver(self) -> None:
        self.processes["kube-apiserver"].stop()

    def start_apiserver(self) -> None:
        self._start_apiserver(self._pki(), keep_port=True)

    def stop_etcd(self) -> None:
        """Stop etcd; its data directory and ports stay for ``start_etcd``."""
        self.processes["etcd"].stop()

    def start_etcd(self) -> None:
        """Start etcd again on the same ports and data directory (what it stored survives)."""
        proc = self.processes["etcd"]
        proc.start()

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        proc.wait_ready(ready, START_TIMEOUT)

    def _pki(self) -> pki.ClusterPKI:
        return pki.paths(self.dir / "pki")

    # --- teardown ----------------------------------------------------------------------

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"----- {self.name}/{name} ({proc.log_path}) -----\n{proc.log_tail(lines)}"
            for name, proc in self.processes.items()
        )

    def stop(self) -> None:
        self.close_clients()
        for name in ("metrics-server", "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver",
                     "etcd"):
            proc = self.processes.get(name)
            if proc is not None:
                proc.stop()
        if self.echo is not None:
            self.echo.stop()
            self.echo = None
        stray = [n for n, p in self.processes.items() if p.alive()]
        if stray:
            raise RuntimeError(f"cluster {self.name}: processes still running after stop: {stray}")
        if self.failed:
            print(f"\n===== cluster {self.name} logs kept in {self.dir} =====\n{self.log_tails()}", file=sys.stderr)
        else:
            # Keep the logs, drop the bulky etcd data.
            import shutil

            shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)


@contextlib.contextmanager
def clusters(*specs: tuple[str, list[kwok.NodeSpec] | None]) -> Iterator[list[LocalCluster]]:
    """Start several clusters, yielding them; all are stopped on exit."""
    started: list[LocalCluster] = []
    try:
        for name, nodes in specs:
            c = LocalCluster(name, nodes)
            c.start()
            started.append(c)
        yield started
    except BaseException:
        for c in started:
            c.failed = True
        raise
    finally:
        for c in reversed(started):
            c.stop()
