"""Credentials: in-cluster service-account tokens with deploy/rbac.yaml, and rotated kubeconfig tokens."""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import utils

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import (
    StaticTokens,
    create_namespace,
    kubectl,
    pod_manifest,
    token_kubeconfig,
    unique,
    wait_event,
    wait_pod_running,
)
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
SA, SA_NS = "tensile-virtual-node", "tensile-system"


def sa_token(upper: LocalCluster) -> str:
    token: str = wait_for(lambda: upper.core.create_namespaced_service_account_token(
        SA, SA_NS, {"spec": {"expirationSeconds": 3600}}).status.token, 30, what="a service-account token")
    return token


def token_rejected(upper: LocalCluster, token: str) -> bool:
    req = urllib.request.Request(upper.server + "/api", headers={"Authorization": f"Bearer {token}"})
    ctx = ssl.create_default_context(cafile=str(upper.ca_file))
    try:
        urllib.request.urlopen(req, context=ctx, timeout=5).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


def test_service_account_credentials_and_least_privilege_rbac_suffice(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    utils.create_from_yaml(upper.api(), str(RBAC))  # type: ignore[no-untyped-call]
    token = sa_token(upper)
    sa_dir = upper.dir / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(upper.ca_file.read_bytes())
    (sa_dir / "namespace").write_text(SA_NS)  # where --leader-elect puts its Lease, as in a pod
    # Exactly what a pod sees: KUBERNETES_SERVICE_HOST/PORT and a token, no kubeconfig.
    make_virtual_node(upper, lower, "vk-incluster", upper_env={
        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(upper.apiserver_port),
        "TENSILE_SERVICEACCOUNT_DIR": str(sa_dir)})
    ns = unique("rbac")
    create_namespace(upper, ns)
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"a": "b"}})
    upper.core.create_namespaced_pod(ns, pod_manifest(
        "p", volumes=[{"name": "v", "configMap": {"name": "cfg"}}]))
    up = wait_pod_running(upper, ns, "p", timeout=60)
    assert up.spec.node_name == "vk-incluster"
    assert wait_event(upper, ns, "p", "ProviderCreateSuccess")
    upper.core.delete_namespaced_pod("p", ns)
    wait_for(lambda: not upper.core.list_namespaced_pod(ns).items, 60, what="pod deleted through the RBAC")


def test_rotated_kubeconfig_token_is_reloaded_after_401(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess], tmp_path: Path
) -> None:
    tokens = StaticTokens(tmp_path / "tokens.csv")
    old_token = tokens.token
    upper = make_cluster("upper", list(UPPER_NODES), apiserver_args=tokens.apiserver_args)
    lower = make_cluster("lower", list(LOWER_NODES))
    kubeconfig = upper.dir / "rotating.kubeconfig"
    token_kubeconfig(upper, kubeconfig, old_token)
    vn = make_virtual_node(upper, lower, "vk-rotate", upper_kubeconfig=kubeconfig)
    ns = unique("rot")
    create_namespace(upper, ns)
    upper.core.create_namespaced_pod(ns, pod_manifest("before"))
    wait_pod_running(upper, ns, "before")
    # Rotate: new token file, apiserver restarted, new token delivered in the same kubeconfig.
    new_token = tokens.rotate()
    upper.stop_apiserver()
    token_kubeconfig(upper, kubeconfig, new_token)
    upper.start_apiserver()
    assert token_rejected(upper, old_token)
    upper.core.create_namespaced_pod(ns, pod_manifest("after"))
    wait_pod_running(upper, ns, "after", timeout=90)
    assert vn.metrics().total("tensile_api_reauthentications_total", cluster="upper") >= 1


def test_per_node_rbac_narrows_node_and_lease_rights_and_suffices(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    vk, sa = "vk-scoped", "vk-scoped-sa"
    manifests = subprocess.run([sys.executable, "-m", "tensile.cli", "rbac", "--nodename", vk,
                                "--namespace", SA_NS, "--service-account", sa],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    kubectl(upper, "apply", "-f", "-", stdin=manifests)
    # The admin installs the ClusterProfile CRD, which these narrow credentials may not.
    crd = subprocess.run([sys.executable, "-m", "tensile.cli", "scheduler", "crd"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    kubectl(upper, "apply", "-f", "-", stdin=crd)
    token = wait_for(lambda: upper.core.create_namespaced_service_account_token(
        sa, SA_NS, {"spec": {"expirationSeconds": 3600}}).status.token, 30, what="a service-account token")
    sa_dir = upper.dir / "serviceaccount-scoped"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(upper.ca_file.read_bytes())
    (sa_dir / "namespace").write_text(SA_NS)  # where --leader-elect puts its Lease, as in a pod
    vn = make_virtual_node(upper, lower, vk, upper_env={
        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(upper.apiserver_port),
        "TENSILE_SERVICEACCOUNT_DIR": str(sa_dir)})
    ns = unique("scoped")
    create_namespace(upper, ns)
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"a": "b"}})
    upper.core.create_namespaced_pod(ns, pod_manifest("p", volumes=[{"name": "v", "configMap": {"name": "cfg"}}]))
    assert wait_pod_running(upper, ns, "p", timeout=60).spec.node_name == vk
    upper.core.delete_namespaced_pod("p", ns)
    wait_for(lambda: not upper.core.list_namespaced_pod(ns).items, 60, what="pod deleted through the RBAC")
    who = f"--as=system:serviceaccount:{SA_NS}:{sa}"

    def can(*args: str) -> bool:
        return kubectl_ok(upper, "auth", "can-i", *args, who)

    assert can("patch", f"nodes/{vk}") and can("patch", f"leases/{vk}", "-n", c.NODE_LEASE_NAMESPACE)
    assert not can("patch", "nodes/upper-0")  # another node
    assert not can("patch", "leases/kube-scheduler", "-n", "kube-system")  # leader-election Leases
    assert not can("patch", "leases/upper-0", "-n", c.NODE_LEASE_NAMESPACE)  # another node's heartbeat
    assert can("update", f"leases/{vk}", "-n", SA_NS)  # its leader-election Lease
    assert not can("update", "leases/other-node", "-n", SA_NS)
    assert k8s.CoordinationV1Api(upper.api()).read_namespaced_lease(vk, SA_NS).spec.holder_identity
    # Its capacity profile, and no other node's.
    assert can("patch", f"{c.PROFILE_PLURAL}.{c.PROFILE_GROUP}/{vk}")
    assert not can("patch", f"{c.PROFILE_PLURAL}.{c.PROFILE_GROUP}/other-node")
    profiles = wait_for(lambda: kubectl(upper, "get", f"{c.PROFILE_PLURAL}.{c.PROFILE_GROUP}", "-o", "name"), 30,
                        what="a ClusterProfile")
    assert profiles.split() == [f"clusterprofile.{c.PROFILE_GROUP}/{vk}"]  # written with the narrow credentials
    assert not any("forbidden" in line.lower() for line in vn.log_tail(100000).splitlines())


def kubectl_ok(cluster: LocalCluster, *args: str) -> bool:
    proc = subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True,
                          timeout=60)
    return proc.returncode == 0 and proc.stdout.strip() == "yes"
