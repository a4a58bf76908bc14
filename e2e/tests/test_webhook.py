"""The mutating webhook, called by a real kube-apiserver (issue: webhook)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import UPPER_NODES
from e2e.kube_helpers import create_namespace, unique, wait_pod_running
from e2e.kwok import NodeSpec
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"
OPT_IN = {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}


@pytest.fixture(scope="module")
def webhook(federation: Fed) -> Iterator[WebhookProcess]:
    upper, _, _ = federation
    with WebhookProcess(upper) as wh:  # stopped, its log printed on failure, however the module ends
        yield wh


def plain_pod(name: str, labels: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}], **spec}}


def test_opted_in_deployment_with_lower_only_selector_runs_on_that_lower_node(
    federation: Fed, webhook: WebhookProcess
) -> None:
    upper, lower, _ = federation
    ns = unique("wh")
    create_namespace(upper, ns)
    labels = {"app": "ssd-app", **OPT_IN}
    # Only lower-a has disktype=ssd; no upper node and no virtual node does.
    upper.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "ssd-app"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"nodeSelector": {"disktype": "ssd"}, "containers": [{"name": "app", "image": "nginx"}]}}}})

    def running_upstairs() -> list[object]:
        pods = upper.core.list_namespaced_pod(ns, label_selector="app=ssd-app").items
        ok = [p for p in pods if p.status.phase == "Running"]
        return ok if len(ok) == 2 else []

    pods = wait_for(running_upstairs, 90, what="2 webhook-mutated pods running upstairs")
    for p in pods:
        assert p.spec.node_name == VK
        saved = json.loads(p.metadata.annotations[c.CLUSTER_SELECTOR_ANNOTATION])
        assert saved["nodeSelector"] == {"disktype": "ssd"}
        assert p.spec.node_selector == {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE}
        keys = {t.key for t in p.spec.tolerations}
        assert {c.PROVIDER_TAINT_KEY, c.NOT_READY_TAINT, c.UNREACHABLE_TAINT} <= keys
        low = wait_pod_running(lower, ns, p.metadata.name)
        assert low.spec.node_selector == {"disktype": "ssd"}
        assert low.spec.node_name == "lower-a"
        assert not any(t.key == c.PROVIDER_TAINT_KEY for t in low.spec.tolerations or [])


def test_pod_without_the_label_is_untouched(federation: Fed, webhook: WebhookProcess) -> None:
    upper, _, _ = federation
    pod = upper.core.create_namespaced_pod("default", plain_pod(unique("plain"), nodeSelector={"zone": "x"}))
    assert c.CLUSTER_SELECTOR_ANNOTATION not in (pod.metadata.annotations or {})
    assert pod.spec.node_selector == {"zone": "x"}
    assert not any(t.key == c.PROVIDER_TAINT_KEY for t in pod.spec.tolerations or [])


def test_pod_in_kube_system_is_untouched(federation: Fed, webhook: WebhookProcess) -> None:
    upper, _, _ = federation
    pod = upper.core.create_namespaced_pod("kube-system", plain_pod(unique("sys"), labels=OPT_IN,
                                                                    nodeSelector={"zone": "x"}))
    assert c.CLUSTER_SELECTOR_ANNOTATION not in (pod.metadata.annotations or {})
    assert pod.spec.node_selector == {"zone": "x"}


def test_reinvocation_and_repeat_admission_do_not_mutate_twice(federation: Fed, webhook: WebhookProcess) -> None:
    upper, _, _ = federation
    before = webhook.metrics()
    body = plain_pod(unique("twice"), labels=OPT_IN, nodeSelector={"disktype": "ssd"})
    first = upper.core.create_namespaced_pod("default", body, dry_run="All")
    again = upper.core.create_namespaced_pod("default", first.to_dict() | {"metadata": {
        "name": first.metadata.name, "labels": first.metadata.labels, "annotations": first.metadata.annotations}},
        dry_run="All")
    assert again.metadata.annotations[c.CLUSTER_SELECTOR_ANNOTATION] == \
        first.metadata.annotations[c.CLUSTER_SELECTOR_ANNOTATION]
    assert json.loads(first.metadata.annotations[c.CLUSTER_SELECTOR_ANNOTATION])["nodeSelector"] == {
        "disktype": "ssd"}

    # Both admissions went through the webhook and were counted and timed; the apiserver may call it
    # again (reinvocation), never less.
    after = webhook.metrics()
    requests, count = "tensile_admission_requests_total", "tensile_admission_duration_seconds_count"
    assert after.total(requests, operation="CREATE") - before.total(requests, operation="CREATE") >= 2
    assert after.total(requests, result="mutated") - before.total(requests, result="mutated") >= 1
    assert after.total(requests, result="error") == before.total(requests, result="error") == 0
    assert after.total(count) == after.total(requests)  # one latency observation per counted request


def test_cluster_id_selector_pins_pod_to_the_matching_virtual_node(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower_a = make_cluster("lower-a", [NodeSpec("a-0", cpu="8", memory="16Gi")])
    lower_b = make_cluster("lower-b", [NodeSpec("b-0", cpu="8", memory="16Gi")])
    make_virtual_node(upper, lower_a, "vk-a", extra_args=["--cluster-id=cluster-a"])
    make_virtual_node(upper, lower_b, "vk-b", extra_args=["--cluster-id=cluster-b"])
    with WebhookProcess(upper):
        ns = unique("pin")
        create_namespace(upper, ns)
        for i in range(3):
            upper.core.create_namespaced_pod(ns, plain_pod(f"pinned-{i}", labels=OPT_IN,
                                                           nodeSelector={c.CLUSTER_ID_LABEL: "cluster-b"}))
        for i in range(3):
            up = wait_pod_running(upper, ns, f"pinned-{i}", timeout=90)
            assert up.spec.node_name == "vk-b"
            assert up.spec.node_selector[c.CLUSTER_ID_LABEL] == "cluster-b"
            low = wait_pod_running(lower_b, ns, f"pinned-{i}")
            assert low.spec.node_name == "b-0"
            assert c.CLUSTER_ID_LABEL not in (low.spec.node_selector or {})
        assert ns not in {n.metadata.name for n in lower_a.core.list_namespace().items}
