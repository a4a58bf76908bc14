"""Small helpers the e2e tests share: manifests and waits on real clusters."""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from tensile import conventions as c

VIRTUAL_NODE_TOLERATION = {"key": c.PROVIDER_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def pod_manifest(name: str, *, labels: dict[str, str] | None = None, node_name: str | None = None,
                 virtual: bool = True, **spec: Any) -> dict[str, Any]:
    """A pod that targets virtual nodes the way the webhook would leave it."""
    body_spec: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.25"}],
                                 "terminationGracePeriodSeconds": 5}
    if virtual:
        body_spec["tolerations"] = [VIRTUAL_NODE_TOLERATION]
        body_spec["nodeSelector"] = {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE}
    if node_name:
        body_spec["nodeName"] = node_name
    body_spec.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": body_spec}


def deployment_manifest(name: str, replicas: int, labels: dict[str, str], **pod_spec: Any) -> dict[str, Any]:
    template = pod_manifest(name, labels=labels, **pod_spec)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": template["spec"]}}}


def create_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.core.create_namespace({"metadata": {"name": name}})
    # The controller-manager creates the default ServiceAccount asynchronously;
    # pods created before it exists are rejected.
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 30,
             what=f"default ServiceAccount in {name}")


def get_or_none(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_pod_running(cluster: LocalCluster, ns: str, name: str, timeout: float = 60) -> k8s.V1Pod:
    """Running, with a pod IP except on a virtual node (its lower IP is unreachable upstairs)."""
    def running() -> k8s.V1Pod | None:
        p = get_or_none(cluster.core.read_namespaced_pod, name, ns)
        if p is None or p.status.phase != "Running":
            return None
        return p if p.status.pod_ip or lower_ip_of(p) else None

    return wait_for(running, timeout, what=f"pod {ns}/{name} Running in {cluster.name}")


def wait_gone(fn: Any, *args: Any, timeout: float = 60, what: str = "object gone") -> None:
    wait_for(lambda: get_or_none(fn, *args) is None, timeout, what=what)


def lower_ip_of(pod: k8s.V1Pod) -> str | None:
    """Where a pod of a virtual node runs downstairs: a condition's message, not status.podIP."""
    for cond in pod.status.conditions or []:
        if cond.type == c.LOWER_POD_CONDITION:
            return str(cond.message)
    return None


def events_for(cluster: LocalCluster, ns: str, name: str) -> list[k8s.CoreV1Event]:
    return list(cluster.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items)


def wait_event(cluster: LocalCluster, ns: str, name: str, reason: str, timeout: float = 60) -> k8s.CoreV1Event:
    def find() -> k8s.CoreV1Event | None:
        for e in events_for(cluster, ns, name):
            if e.reason == reason:
                return e
        return None

    return wait_for(find, timeout, what=f"event {reason} on {ns}/{name}")


def node_condition(cluster: LocalCluster, node: str, ctype: str = "Ready") -> k8s.V1NodeCondition | None:
    n = get_or_none(cluster.core.read_node, node)
    if n is None:
        return None
    for cond in n.status.conditions or []:
        if cond.type == ctype:
            return cond
    return None


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
    """Run the real ``kubectl`` against ``cluster``, as a user would; fails with its output."""
    proc = subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class StaticTokens:
    """An apiserver ``--token-auth-file`` holding one admin token that a test can rotate.

    Static tokens make a rotation exact: once the apiserver restarts with the new file, the old
    token is rejected for certain (there is no authentication cache to wait out).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = ""
        self.rotate()

    @property
    def apiserver_args(self) -> list[str]:
        return [f"--token-auth-file={self.path}"]

    def rotate(self) -> str:
        """Write a new token (the apiserver reads it at its next start) and return it."""
        self.token = f"tok-{secrets.token_hex(16)}"
        self.path.write_text(f'{self.token},tensile-vn,tensile-vn,"system:masters"\n')
        return self.token


def token_kubeconfig(cluster: LocalCluster, path: Path, token: str, server: str | None = None) -> Path:
    """A kubeconfig for ``cluster`` that authenticates with ``token``, written atomically (as a secret
    syncing sidecar would)."""
    entry = {"server": server or cluster.server, "certificate-authority": str(cluster.ca_file)}
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
           "clusters": [{"name": "c", "cluster": entry}],
           "users": [{"name": "sa", "user": {"token": token}}],
           "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    os.replace(tmp, path)
    return path


def service_account_kubeconfig(cluster: LocalCluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig with a fresh token of ServiceAccount ``namespace/name``: exactly its RBAC, nothing more."""
    token: str = wait_for(lambda: cluster.core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token, 30, what=f"a token of {name}")
    return token_kubeconfig(cluster, path, token)


#: Kinds tensile labels with app.kubernetes.io/managed-by=tensile, for "nothing left behind" checks.
TENSILE_KINDS = ("namespaces,serviceaccounts,secrets,configmaps,pods,services,persistentvolumeclaims,"
                 "endpointslices,deployments,roles,rolebindings,clusterroles,clusterrolebindings,leases,"
                 "validatingadmissionpolicies,validatingadmissionpolicybindings,nodes,customresourcedefinitions")


def tensile_objects(cluster: LocalCluster) -> set[str]:
    """Every object in ``cluster`` labelled managed-by=tensile, as ``kind/namespace/name``."""
    out = kubectl(cluster, "get", TENSILE_KINDS, "-A", "-l", f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}",
                  "-o", "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}")
    return {line for line in out.splitlines() if line.strip()}


def https_call(port: int, path: str, ca: Path, *, cert: tuple[str, str] | None = None, token: str | None = None,
               body: bytes | None = None) -> tuple[int, str]:
    """Status and body of a request to ``https://127.0.0.1:PORT/PATH``, verified against ``ca``.

    ``cert``: a client certificate and key; ``token``: a bearer token; ``body``: POSTed as JSON.
    """
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
