"""metrics-server for a local cluster: a plain process behind the apiserver's aggregation layer.

The apiserver reaches an extension apiserver through a Service named in its
``APIService``; an ``ExternalName`` Service pointing at ``localhost`` lets that be a
process on this host. The apiserver proves itself with its front-proxy client
certificate (``--proxy-client-cert-file``, set up by the harness for every cluster).

metrics-server scrapes each node's ``/metrics/resource`` at the node's InternalIP and
``daemonEndpoints`` port, verifying serving certificates against the cluster's kubelet
CA (kwok's and the virtual nodes' are signed by it), with the admin client certificate
from its kubeconfig; kwok nodes name their own path in an annotation.
"""

from __future__ import annotations

import json
import os

from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.process import Process, free_port

NAMESPACE = "kube-system"
NAME = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"


class MetricsServer:
    def __init__(self, cluster: LocalCluster, resolution: str = "10s") -> None:
        self.cluster = cluster
        self.resolution = resolution
        self.port = 0
        self.proc: Process | None = None

    def argv(self) -> list[str]:
        kc = str(self.cluster.kubeconfig)
        return [
            str(self.cluster.bin / "metrics-server"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.cluster.dir / 'metrics-server-certs'}",
            f"--kubelet-certificate-authority={self.cluster.dir / 'pki' / 'kubelet-ca.crt'}",
            "--kubelet-use-node-status-port",
            "--kubelet-preferred-address-types=InternalIP",
            f"--metric-resolution={self.resolution}",
            "--kubelet-request-timeout=5s",
            "--v=2",
        ]

    def start(self, timeout: float = 90.0) -> MetricsServer:
        binary = self.cluster.bin / "metrics-server"
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is missing: run `make binaries` (it builds metrics-server from its Go "
                               "module), or put metrics-server into $TENSILE_K8S_BIN")
        self.port = free_port()
        self.proc = Process(NAME, self.argv(), self.cluster.dir / "metrics-server.log")
        self.cluster.processes[NAME] = self.proc  # stopped, and its log kept, with the cluster
        self.proc.start()
        self._register()
        wait_for(self.available, timeout, what=f"metrics-server of {self.cluster.name} available")
        return self

    def _register(self) -> None:
        core = self.cluster.core
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NAMESPACE},
                   "spec": {"type": "ExternalName", "externalName": "localhost",
                            "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}}
        try:
            core.create_namespaced_service(NAMESPACE, service)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_service(NAME, NAMESPACE, service)
        api = k8s.ApiregistrationV1Api(self.cluster.api())
        body = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": API_SERVICE},
                "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                         "versionPriority": 100, "insecureSkipTLSVerify": True,
                         "service": {"namespace": NAMESPACE, "name": NAME, "port": self.port}}}
        try:
            api.create_api_service(body)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
            current = api.read_api_service(API_SERVICE)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            api.replace_api_service(API_SERVICE, body)

    def available(self) -> bool:
        if self.proc is None or not self.proc.alive():
            raise RuntimeError(f"metrics-server exited:\n{self.proc.log_tail() if self.proc else ''}")
        status, _ = self.cluster.get_raw("/apis/metrics.k8s.io/v1beta1/nodes")
        return status == 200

    def pod_metrics(self, namespace: str, name: str) -> dict[str, object] | None:
        status, body = self.cluster.get_raw(f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}")
        return json.loads(body) if status == 200 else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
