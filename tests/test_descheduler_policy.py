"""The descheduler's pure rules: candidates, exemptions, other targets, budgets, avoidance records."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from descheduler import policy
from descheduler.policy import Options
from tensile import avoidance, timestamps
from tensile import conventions as c

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
OPTIONS = Options(unschedulable_for=60, max_pending=180, cooldown=600)


def _ago(seconds: float) -> str:
    return timestamps.rfc3339(NOW - datetime.timedelta(seconds=seconds))


def vnode(name: str, ready: bool = True, taints: list[dict[str, str]] | None = None,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE,
                                                  **(labels or {})}},
            "spec": {"taints": taints or [{"key": c.PROVIDER_TAINT_KEY, "value": "tensile", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


NODES = {"vk-a": vnode("vk-a"), "vk-b": vnode("vk-b")}
TOLERATE = [{"key": c.PROVIDER_TAINT_KEY, "operator": "Exists"}]


def pod(*, phase: str = "Pending", node: str = "vk-a", scheduled: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None, owner: str | None = "ReplicaSet",
        waiting: str | None = None, **meta: Any) -> dict[str, Any]:
    conditions = [scheduled] if scheduled else []
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "app", "state": {"waiting": {"reason": waiting}}}]
    metadata: dict[str, Any] = {"name": "web-1", "namespace": "ns", "uid": "u1", "annotations": annotations or {},
                                "creationTimestamp": _ago(1000), **meta}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner, "name": "web", "uid": "rs-1",
                                        "controller": True}]
    return {"metadata": metadata, "spec": {"nodeName": node, "tolerations": TOLERATE,
                                           "nodeSelector": {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE}},
            "status": status}


def unschedulable(age: float, reason: str = "Unschedulable") -> dict[str, Any]:
    return {"type": "PodScheduled", "status": "False", "reason": reason, "lastTransitionTime": _ago(age),
            "message": "0/20 nodes are available: 20 Insufficient cpu."}


def test_unschedulable_downstairs_for_long_enough_is_a_candidate() -> None:
    found = policy.candidate(pod(scheduled=unschedulable(61)), NODES, NOW, OPTIONS)
    assert found is not None and (found.node, found.reason, found.key) == ("vk-a", "Unschedulable", "ns/web-1")
    assert "Insufficient cpu" in found.message
    assert policy.candidate(pod(scheduled=unschedulable(59)), NODES, NOW, OPTIONS) is None
    assert policy.candidate(pod(scheduled=unschedulable(61, "SchedulerError")), NODES, NOW, OPTIONS) is not None
    assert policy.candidate(pod(scheduled=unschedulable(999, "SchedulingGated")), NODES, NOW, OPTIONS) is None


def test_tensiles_reflection_as_containers_ready_false_counts_too() -> None:
    reflected = pod(scheduled={"type": "PodScheduled", "status": "True", "lastTransitionTime": _ago(500)})
    reflected["status"]["conditions"].append({
        "type": "ContainersReady", "status": "False", "reason": "Unschedulable", "lastTransitionTime": _ago(90),
        "message": "lower cluster: 0/2 nodes are available: 2 node(s) had untolerated taint {gone: }."})
    found = policy.candidate(reflected, NODES, NOW, OPTIONS)
    assert found is not None and found.reason == "Unschedulable"
    assert found.message == "0/2 nodes are available: 2 node(s) had untolerated taint {gone: }."
    reflected["status"]["conditions"][-1]["lastTransitionTime"] = _ago(30)
    assert policy.candidate(reflected, NODES, NOW, OPTIONS) is None


def test_long_pending_counts_only_for_reasons_another_cluster_could_cure() -> None:
    bound = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ago(200)}
    assert policy.candidate(pod(scheduled=bound, waiting="ImagePullBackOff"), NODES, NOW, OPTIONS) is not None
    assert policy.candidate(pod(scheduled=bound, waiting="ContainerCreating"), NODES, NOW, OPTIONS) is not None
    assert policy.candidate(pod(scheduled=bound, waiting="CreateContainerConfigError"), NODES, NOW, OPTIONS) is None
    assert policy.candidate(pod(scheduled=bound, waiting="InvalidImageName"), NODES, NOW, OPTIONS) is None
    young = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ago(100)}
    assert policy.candidate(pod(scheduled=young, waiting="ImagePullBackOff"), NODES, NOW, OPTIONS) is None


def test_pods_that_are_never_touched() -> None:
    stuck = unschedulable(999)
    for p in (pod(scheduled=stuck, annotations={policy.PREFER_NO_EVICTION: "true"}),
              pod(scheduled=stuck, annotations={policy.MIRROR_ANNOTATION: "x"}),
              pod(scheduled=stuck, owner="DaemonSet"),
              pod(scheduled=stuck, deletionTimestamp=_ago(1)),
              pod(scheduled=stuck, node="real-node"),
              pod(scheduled=stuck, phase="Running")):
        assert policy.candidate(p, NODES, NOW, OPTIONS) is None
    assert policy.exempt(pod(owner="DaemonSet")) == "a DaemonSet pod"
    assert policy.controller_of(pod(owner=None)) is None


def test_other_targets_skip_the_current_avoided_unready_and_intolerable_nodes() -> None:
    nodes = {"vk-a": vnode("vk-a"), "vk-b": vnode("vk-b"), "vk-c": vnode("vk-c", ready=False),
             "vk-d": vnode("vk-d", taints=[{"key": "gpu", "value": "x", "effect": "NoSchedule"}]),
             "vk-e": vnode("vk-e"), "vk-f": vnode("vk-f", labels={"clusterID": "f"})}
    p = pod(scheduled=unschedulable(999))
    assert policy.other_targets(p, nodes, avoid=["vk-e"]) == ["vk-b", "vk-f"]
    p["spec"]["nodeSelector"]["clusterID"] = "f"
    assert policy.other_targets(p, nodes, avoid=[]) == ["vk-f"]
    assert policy.other_targets(p, {"vk-a": nodes["vk-a"]}, avoid=[]) == []  # nowhere else: stay


def test_budget_limits_per_node_and_in_total() -> None:
    budget = policy.Budget(Options(max_per_node=2, max_total=3))
    for node in ("vk-a", "vk-a"):
        assert budget.allows(node)
        budget.spend(node)
    assert not budget.allows("vk-a") and budget.allows("vk-b")
    budget.spend("vk-b")
    assert not budget.allows("vk-c")  # three in all
    unlimited = policy.Budget(Options())
    for _ in range(100):
        unlimited.spend("vk-a")
    assert unlimited.allows("vk-a")


def test_avoidance_records_expire_and_merge() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": True}
    entries = avoidance.with_node(None, "vk-a", NOW + datetime.timedelta(minutes=10), NOW)
    record = avoidance.manifest("ns", owner, entries)
    assert record["metadata"]["name"] == "tensile-avoid-rs-1"
    assert record["metadata"]["labels"][avoidance.RECORD_LABEL] == "true"
    assert record["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                      "name": "web", "uid": "rs-1"}]
    assert avoidance.active(record, NOW) == ["vk-a"]
    assert avoidance.active(record, NOW + datetime.timedelta(minutes=11)) == []
    later = NOW + datetime.timedelta(minutes=5)
    entries = avoidance.with_node(record, "vk-b", later + datetime.timedelta(minutes=10), later)
    assert set(entries) == {"vk-a", "vk-b"}
    expired = avoidance.with_node(record, "vk-b", NOW + datetime.timedelta(hours=1), NOW + datetime.timedelta(hours=1))
    assert set(expired) == {"vk-b"}  # vk-a's entry expired and is dropped
    assert avoidance.parse({"data": {"avoid": "not json"}}) == {}
    assert avoidance.parse({"data": {"avoid": '{"vk-a": "yesterday", "": "2026-01-01T00:00:00Z"}'}}) == {}


def test_the_pods_present_when_an_avoidance_began_are_kept_while_it_lasts_and_taken_afresh_after() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"}
    until = NOW + datetime.timedelta(minutes=10)
    record = avoidance.manifest("ns", owner, avoidance.with_node(None, "vk-a", until, NOW),
                                avoidance.with_present(None, "vk-a", ["u1", "u2", ""], NOW))
    assert avoidance.present(record, "vk-a") == {"u1", "u2"}
    assert avoidance.present(record, "vk-b") == frozenset()
    assert avoidance.with_present(record, "vk-a", ["u3"], NOW) == {"vk-a": ["u1", "u2"]}  # u3 came later
    assert avoidance.with_present(record, "vk-b", ["u4"], NOW) == {"vk-a": ["u1", "u2"], "vk-b": ["u4"]}
    after = until + datetime.timedelta(seconds=1)
    assert avoidance.with_present(record, "vk-a", ["u9"], after) == {"vk-a": ["u9"]}  # a new avoidance
    for raw in ("not json", '["u1"]', '{"vk-a": "u1"}', '{"vk-a": [1, null]}'):
        assert avoidance.present({"data": {avoidance.PRESENT_KEY: raw}}, "vk-a") == frozenset()
    assert avoidance.PRESENT_KEY not in avoidance.manifest("ns", owner, {})["data"]  # older records: absent


def test_avoidance_is_added_to_every_term_without_losing_anything() -> None:
    spec = {"affinity": {
        "nodeAffinity": {
            avoidance.REQUIRED: {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["vk-b"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {}}]},
        "podAntiAffinity": {"x": 1}}, "containers": []}
    out = avoidance.avoiding(spec, ["vk-a"])
    terms = out["affinity"]["nodeAffinity"][avoidance.REQUIRED]["nodeSelectorTerms"]
    want = {"key": c.HOSTNAME_LABEL, "operator": "NotIn", "values": ["vk-a"]}
    assert terms[0]["matchExpressions"] == [{"key": "zone", "operator": "In", "values": ["a"]}, want]
    assert terms[1]["matchExpressions"] == [want] and terms[1]["matchFields"]
    assert out["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert out["affinity"]["podAntiAffinity"] == {"x": 1}
    assert spec["affinity"]["nodeAffinity"][avoidance.REQUIRED]["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "zone", "operator": "In", "values": ["a"]}]  # the input is not changed
    assert avoidance.avoiding(out, ["vk-a"]) == out  # idempotent
    assert avoidance.avoiding({}, ["vk-b", "vk-a"])["affinity"]["nodeAffinity"][avoidance.REQUIRED] == {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": c.HOSTNAME_LABEL, "operator": "NotIn",
                                                     "values": ["vk-a", "vk-b"]}]}]}
    assert avoidance.avoiding(spec, []) is spec


@given(st.lists(st.sampled_from(["vk-a", "vk-b", "vk-c", "real-0"]), max_size=4),
       st.lists(st.sampled_from(["vk-a", "vk-b", "vk-c"]), min_size=1, max_size=3))
def test_an_avoiding_pod_never_matches_an_avoided_node(allowed: list[str], avoid: list[str]) -> None:
    from tensile import fit

    spec: dict[str, Any] = {}
    if allowed:
        spec = {"affinity": {"nodeAffinity": {avoidance.REQUIRED: {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": allowed}]}]}}}}
    out = avoidance.avoiding(spec, avoid)
    for node in ("vk-a", "vk-b", "vk-c", "real-0"):
        labels = {c.HOSTNAME_LABEL: node}
        matches = fit.placement_matches(out, labels, node)
        was = fit.placement_matches(spec, labels, node)
        assert matches == (was and node not in avoid)


def test_label_selectors_and_blocking_budgets() -> None:
    assert policy.selects({"matchLabels": {"app": "web"}}, {"app": "web", "x": "1"})
    assert not policy.selects({"matchLabels": {"app": "web"}}, {"app": "db"})
    assert policy.selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                          {"tier": "b"})
    assert policy.selects({}, {"anything": "x"})  # policy/v1: an empty selector selects every pod
    assert not policy.selects(None, {"app": "web"})
    assert not policy.selects({"matchExpressions": [{"key": "tier", "operator": "In", "values": "a"}]}, {})
    p = pod()
    p["metadata"]["labels"] = {"app": "web"}
    budget = {"metadata": {"name": "b", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "web"}}},
              "status": {"disruptionsAllowed": 0}}
    assert policy.blocking_budget(p, [budget]) is budget
    assert policy.blocking_budget(p, [{**budget, "status": {"disruptionsAllowed": 1}}]) is None
