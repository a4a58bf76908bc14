"""The mesh rules in the pure layers: namespace mapping and pools in the copies, loops refused everywhere."""

from __future__ import annotations

from typing import Any

from scheduler.extender import LOOP, Extender, Knowledge, Policy
from tensile import conventions as c
from tensile import translate
from tensile.controllers.context import Config
from tensile.namespacing import NamespaceMapping
from webhook.mutate import mutate

JSON = dict[str, Any]
SUFFIXED = translate.Owner("upper-uid", "vk", NamespaceMapping("suffixed", "east"), lower_cluster="lower-uid")


def upper_pod(**spec: Any) -> JSON:
    return {"metadata": {"name": "p", "namespace": "web", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"nodeName": "vk", "containers": [{"name": "c", "image": "nginx"}], **spec}}


def test_a_suffixed_copy_lives_in_the_mapped_namespace_and_says_where_it_came_from() -> None:
    copy = translate.lower_pod(upper_pod(), SUFFIXED)
    assert copy["metadata"]["namespace"] == "web-east"
    assert copy["metadata"]["annotations"][c.UPPER_NAMESPACE_ANNOTATION] == "web"
    cm = translate.lower_object("configmaps", {"metadata": {"name": "cfg", "namespace": "web"}, "data": {}}, SUFFIXED)
    assert cm["metadata"]["namespace"] == "web-east"
    ns = translate.lower_namespace("web", SUFFIXED)
    assert ns["metadata"]["name"] == "web-east"
    assert ns["metadata"]["annotations"] == {c.UPPER_NAMESPACE_ANNOTATION: "web"}
    svc = translate.lower_service({"metadata": {"name": "s", "namespace": "web"}, "spec": {"ports": []}}, SUFFIXED,
                                  flat_network=True)
    assert svc["metadata"]["namespace"] == "web-east"


def test_pod_affinity_namespaces_are_mapped_too() -> None:
    term = {"labelSelector": {"matchLabels": {"a": "b"}}, "topologyKey": "zone", "namespaces": ["web", "db"]}
    spec = {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]},
                         "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                             {"weight": 1, "podAffinityTerm": dict(term)}]}}}
    affinity = translate.lower_pod(upper_pod(**spec), SUFFIXED)["spec"]["affinity"]
    assert affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["namespaces"] == [
        "web-east", "db-east"]
    assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "namespaces"] == ["web-east", "db-east"]
    assert term["namespaces"] == ["web", "db"], "the upper pod is not changed"


def test_a_same_mode_copy_is_as_before() -> None:
    copy = translate.lower_pod(upper_pod(), translate.Owner("upper-uid", "vk"))
    assert copy["metadata"]["namespace"] == "web"
    assert c.UPPER_NAMESPACE_ANNOTATION not in copy["metadata"]["annotations"]


def test_a_copy_carries_its_origin_chain() -> None:
    first = translate.lower_pod(upper_pod(), SUFFIXED)
    assert first["metadata"]["annotations"][c.ORIGIN_CHAIN_ANNOTATION] == "upper-uid,lower-uid"
    onward = upper_pod()
    onward["metadata"]["annotations"] = {c.ORIGIN_CHAIN_ANNOTATION: "a,upper-uid"}
    assert translate.lower_pod(onward, SUFFIXED)["metadata"]["annotations"][
        c.ORIGIN_CHAIN_ANNOTATION] == "a,upper-uid,lower-uid"


def test_a_pool_pins_the_copy_to_its_nodes() -> None:
    pool = Config(node_name="vk", lower_node_selector="pool=a").pool
    copy = translate.lower_pod(upper_pod(nodeSelector={"disk": "ssd"}), SUFFIXED, pool=pool)
    terms = copy["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]
    assert copy["spec"]["nodeSelector"] == {"disk": "ssd"}, "the pod's own constraints stay"


def test_the_lower_node_watch_never_counts_virtual_nodes() -> None:
    assert Config(node_name="vk").lower_nodes_selector() == "type!=virtual-kubelet"
    assert Config(node_name="vk", lower_node_selector="pool=a").lower_nodes_selector() == (
        "pool=a,type!=virtual-kubelet")


def copy_in_cluster(chain: str, **spec: Any) -> JSON:
    pod = upper_pod(**spec)
    pod["metadata"]["labels"][c.VIRTUAL_POD_LABEL] = c.VIRTUAL_POD_VALUE
    pod["metadata"]["annotations"] = {c.ORIGIN_CHAIN_ANNOTATION: chain}
    return pod


def apply(pod: JSON, patch: list[JSON]) -> JSON:
    spec = dict(pod["spec"])
    for op in patch:
        assert op["path"].startswith("/spec/")
        spec[op["path"].removeprefix("/spec/")] = op["value"]
    return {**pod, "spec": spec}


def test_the_webhook_keeps_a_copy_off_virtual_nodes_into_its_chain_and_leaves_the_rest() -> None:
    pod = copy_in_cluster("a,b", nodeSelector={"disk": "ssd"}, tolerations=[{"key": "x", "operator": "Exists"}])
    result = mutate(pod)
    assert [op["path"] for op in result.patch] == ["/spec/affinity"], "constraints are not relaxed again"
    mutated = apply(pod, result.patch)
    assert mutated["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": c.LOWER_CLUSTER_LABEL, "operator": "NotIn", "values": ["a", "b"]}]}]}
    assert mutate(mutated).patch == [], "idempotent under reinvocation"


def test_the_extender_refuses_a_virtual_node_into_the_chain_with_the_reason() -> None:
    k = Knowledge()
    k.node_seen("vk-a", True, "a")
    k.node_seen("vk-d", True, "d")
    decision = Extender(k, Policy()).decide(copy_in_cluster("a,b,c"), ["vk-a", "vk-d", "real"], None, score=False)
    assert "vk-a" in decision.unresolvable and "origin chain a > b > c" in decision.unresolvable["vk-a"]
    assert decision.counts[LOOP] == 1
    assert "vk-a" not in decision.passed and "real" in decision.passed
    # With whole Node objects the label is read off the node.
    nodes = {"vk-a": {"metadata": {"name": "vk-a", "labels": {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE,
                                                              c.LOWER_CLUSTER_LABEL: "a"}}}}
    decision = Extender(Knowledge(), Policy()).decide(copy_in_cluster("a"), ["vk-a"], nodes, score=False)
    assert list(decision.unresolvable) == ["vk-a"]


def test_the_extender_server_learns_where_each_virtual_node_leads_from_its_node_watch() -> None:
    from scheduler.server import SchedulerServer, ServerOptions
    from tests.fakes import FakeKube, seed

    s = SchedulerServer(FakeKube("upper"), ServerOptions())  # type: ignore[arg-type]
    node = {"metadata": {"name": "vk-a", "resourceVersion": "1", "labels": {
        c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE, c.LOWER_CLUSTER_LABEL: "a", "big": "x" * 100}},
        "status": {"capacity": {"cpu": "8"}}}
    shrunk = s.nodes._shrink(node)  # the informer's transform, as a watch event goes through it
    seed(s.nodes, shrunk)
    s.nodes._notify(None, shrunk)
    assert s.knowledge.leads_to == {"vk-a": "a"}
    assert shrunk == {"metadata": {"name": "vk-a", "resourceVersion": "1", "labels": {c.LOWER_CLUSTER_LABEL: "a"}}}
    assert s.knowledge.loop_reason(copy_in_cluster("a"), "vk-a", None) is not None


def test_the_webhook_refuses_a_malformed_copy_as_it_refuses_any_malformed_pod() -> None:
    import pytest

    from webhook.mutate import MalformedPodError

    for affinity in ([], {"nodeAffinity": []}, {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": 3}]}}}):
        with pytest.raises(MalformedPodError):
            mutate(copy_in_cluster("a", affinity=affinity))
