"""kubectl top pod and an HPA upstairs, from usage kwok simulates downstairs (issue 11).

metrics-server runs in both clusters. Downstairs it scrapes kwok, which reports the usage a
pod's ``kwok.x-k8s.io/usage-cpu``/``-memory`` annotations ask for; upstairs it scrapes the
virtual node's ``/metrics/resource``, built from the lower cluster's PodMetrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, deployment_manifest, kubectl, pod_manifest, unique, wait_pod_running
from e2e.kwok import USAGE_CPU_ANNOTATION, USAGE_MEMORY_ANNOTATION
from e2e.metricsserver import MetricsServer
from e2e.virtualnode import VirtualNodeProcess
from tensile import quantity

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"


@pytest.fixture(scope="module")
def metrics(federation: Fed) -> Iterator[tuple[MetricsServer, MetricsServer]]:
    upper, lower, _ = federation
    down = MetricsServer(lower).start()
    up = MetricsServer(upper).start()
    try:
        yield up, down
    finally:
        up.stop()
        down.stop()


def _top(upper: LocalCluster, ns: str, pod: str) -> tuple[int, int] | None:
    """(millicores, MiB) of ``kubectl top pod``, or None while it has no metrics yet."""
    try:
        out = kubectl(upper, "top", "pod", "-n", ns, pod, "--no-headers")
    except RuntimeError:
        return None
    m = re.match(rf"{re.escape(pod)}\s+(\d+)m\s+(\d+)Mi", out.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_kubectl_top_pod_shows_the_usage_simulated_downstairs(federation: Fed, metrics: Any) -> None:
    upper, _, _ = federation
    ns = unique("top")
    create_namespace(upper, ns)
    body = pod_manifest("busy", node_name=VK)
    body["metadata"]["annotations"] = {USAGE_CPU_ANNOTATION: "250m", USAGE_MEMORY_ANNOTATION: "64Mi"}
    upper.core.create_namespaced_pod(ns, body)
    wait_pod_running(upper, ns, "busy", timeout=90)
    # The lower cluster measures it...
    down = wait_for(lambda: metrics[1].pod_metrics(ns, "busy"), 90, what="lower PodMetrics")
    usage = down["containers"][0]["usage"]
    assert quantity.parse(usage["memory"]) == 64 * 2**20
    # ...and kubectl top upstairs shows it, through the virtual node.
    cpu, mib = wait_for(lambda: (t := _top(upper, ns, "busy")) and t[0] > 0 and t, 120,
                        what="kubectl top pod upstairs")
    assert mib == 64
    assert 200 <= cpu <= 300, cpu


def test_an_hpa_scales_a_deployment_on_the_virtual_node_when_usage_rises(federation: Fed, metrics: Any) -> None:
    upper, _, _ = federation
    ns = unique("hpa")
    create_namespace(upper, ns)
    labels = {"app": "web"}
    dep = deployment_manifest("web", 1, labels, nodeName=VK)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    dep["spec"]["template"]["metadata"]["annotations"] = {USAGE_CPU_ANNOTATION: "10m"}
    k8s.AppsV1Api(upper.api()).create_namespaced_deployment(ns, dep)
    k8s.AutoscalingV2Api(upper.api()).create_namespaced_horizontal_pod_autoscaler(ns, {
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 1, "maxReplicas": 3,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}})
    hpa = k8s.AutoscalingV2Api(upper.api())

    def utilisation() -> int | None:
        status = hpa.read_namespaced_horizontal_pod_autoscaler("web", ns).status
        for metric in status.current_metrics or []:
            if metric.resource and metric.resource.current.average_utilization is not None:
                return int(metric.resource.current.average_utilization)
        return None

    low = wait_for(utilisation, 180, what="the HPA reads the pod's CPU")
    assert low < 50 and hpa.read_namespaced_horizontal_pod_autoscaler("web", ns).status.desired_replicas == 1
    # The usage rises downstairs: the HPA upstairs adds replicas.
    pods = upper.core.list_namespaced_pod(ns, label_selector="app=web").items
    for pod in pods:
        upper.core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"annotations": {
            USAGE_CPU_ANNOTATION: "90m"}}})
    wait_for(lambda: (hpa.read_namespaced_horizontal_pod_autoscaler("web", ns).status.desired_replicas or 0) > 1,
             240, what="the HPA scaling up")
    wait_for(lambda: (k8s.AppsV1Api(upper.api()).read_namespaced_deployment("web", ns).status.ready_replicas or 0) > 1,
             120, what="the new replicas Running on the virtual node")
