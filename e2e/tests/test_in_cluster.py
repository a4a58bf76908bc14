"""The virtual node with in-cluster credentials and only the RBAC in deploy/rbac.yaml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import utils

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import create_namespace, pod_manifest, unique, wait_event, wait_pod_running
from e2e.virtualnode import VirtualNodeProcess

pytestmark = pytest.mark.e2e

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


def test_service_account_credentials_and_least_privilege_rbac_suffice(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    utils.create_from_yaml(upper.api(), str(RBAC))  # type: ignore[no-untyped-call]
    token = wait_for(lambda: upper.core.create_namespaced_service_account_token(
        "tensile-virtual-node", "tensile-system", {"spec": {"expirationSeconds": 3600}}).status.token, 30,
        what="a service-account token")
    sa_dir = upper.dir / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(upper.ca_file.read_bytes())
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
