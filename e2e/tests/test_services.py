"""Services for pods of the virtual node, in both network modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import create_namespace, get_or_none, pod_manifest, unique, wait_pod_running
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e


def test_flat_network_copies_service_without_selector_plus_upper_endpoints(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    make_virtual_node(upper, lower, "vk-flat", extra_args=["--flat-network"])
    ns = unique("flat")
    create_namespace(upper, ns)
    upper.core.create_namespaced_service(ns, {"metadata": {"name": "api"}, "spec": {
        "selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    # One endpoint runs downstairs through the virtual node, one on a real upper node.
    upper.core.create_namespaced_pod(ns, pod_manifest("api-virtual", labels={"app": "api"}))
    upper.core.create_namespaced_pod(ns, pod_manifest("api-upper", labels={"app": "api"}, virtual=False,
                                                      nodeName="upper-0"))
    ip_virtual = wait_pod_running(upper, ns, "api-virtual").status.pod_ip  # a flat network shows it
    ip_upper = wait_pod_running(upper, ns, "api-upper").status.pod_ip
    disc = k8s.DiscoveryV1Api(lower.api())

    def lower_ips() -> set[str]:
        slices = disc.list_namespaced_endpoint_slice(ns, label_selector=f"{c.SERVICE_NAME_LABEL}=api").items
        return {a for s in slices for e in (s.endpoints or []) for a in e.addresses}

    wait_for(lambda: lower_ips() == {ip_virtual, ip_upper}, 60, what="both upper endpoints in the lower slices")
    svc = lower.core.read_namespaced_service("api", ns)
    assert not svc.spec.selector
    slices = disc.list_namespaced_endpoint_slice(ns, label_selector=f"{c.SERVICE_NAME_LABEL}=api").items
    assert all(s.metadata.labels[c.ENDPOINTSLICE_MANAGED_BY_LABEL] == c.ENDPOINTSLICE_MANAGER for s in slices)
    # The endpoint set follows the upper one.
    upper.core.delete_namespaced_pod("api-upper", ns, grace_period_seconds=0)
    wait_for(lambda: lower_ips() == {ip_virtual}, 60, what="removed upper endpoint gone downstairs")
    # When no pod of the virtual node is selected any more, the copies go.
    upper.core.delete_namespaced_pod("api-virtual", ns)
    wait_for(lambda: get_or_none(lower.core.read_namespaced_service, "api", ns) is None, 60,
             what="lower Service deleted")
    wait_for(lambda: not lower_ips(), 60, what="lower EndpointSlices deleted")
