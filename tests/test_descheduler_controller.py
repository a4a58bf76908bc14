"""The descheduler's pass against a fake API: eviction with a record, PDB refusals, bare recreation, dry run."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest

from descheduler.controller import AVOID_ANNOTATION, BACKUP_PREFIX, Descheduler
from descheduler.policy import Options
from tensile import avoidance, timestamps
from tensile.kube.errors import ApiError
from tests.fakes import FakeKube, not_found, seed
from tests.test_descheduler_policy import NOW, pod, unschedulable, vnode

OPTIONS = Options(unschedulable_for=60, max_pending=180, cooldown=600)


def _desched(kube: FakeKube, *pods: dict[str, Any], nodes: tuple[str, ...] = ("vk-a", "vk-b"),
             dry_run: bool = False, options: Options = OPTIONS) -> Descheduler:
    d = Descheduler(kube, options, dry_run=dry_run)  # type: ignore[arg-type]
    seed(d.nodes, *(vnode(n) for n in nodes))
    seed(d.pods, *pods)
    return d


def _stuck(name: str = "web-1", **kw: Any) -> dict[str, Any]:
    p = pod(scheduled=unschedulable(120), **kw)
    p["metadata"]["name"] = name
    p["metadata"]["uid"] = f"uid-{name}"
    return p


async def test_a_controller_owned_pod_gets_a_record_then_is_evicted() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck())
    outcomes = await d.run_once(NOW)
    assert [(o.pod, o.node, o.action) for o in outcomes] == [("ns/web-1", "vk-a", "evicted")]
    (record_path, record), (eviction_path, eviction) = kube.of("POST")
    assert record_path == "/api/v1/namespaces/ns/configmaps"
    assert record["metadata"]["name"] == "tensile-avoid-rs-1"
    assert avoidance.active(record, NOW) == ["vk-a"]
    assert avoidance.active(record, NOW + datetime.timedelta(seconds=601)) == []
    assert eviction_path == "/api/v1/namespaces/ns/pods/web-1/eviction"
    assert eviction["deleteOptions"] == {"preconditions": {"uid": "uid-web-1"}}
    # Still there (an eviction takes a moment): not moved again within the cooldown, and nothing written.
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]
    assert len(kube.of("POST")) == 2


async def test_a_pdb_refusal_is_reported_and_the_pod_stays() -> None:
    kube = FakeKube()
    kube.answer("POST", "/api/v1/namespaces/ns/pods/web-1/eviction",
                ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget."))
    d = _desched(kube, _stuck())
    outcomes = await d.run_once(NOW)
    assert [o.action for o in outcomes] == ["blocked"]
    assert "disruption budget" in outcomes[0].detail


async def test_nowhere_else_to_go_means_staying_without_a_bounce() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck(), nodes=("vk-a",))
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]
    assert kube.of("POST") == [] and kube.of("DELETE") == []
    # An owner that already avoids vk-b: vk-a's pod has nowhere to go either.
    kube = FakeKube()
    d = _desched(kube, _stuck())
    record = avoidance.manifest("ns", {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"},
                                avoidance.with_node(None, "vk-b", NOW + datetime.timedelta(minutes=5), NOW))
    seed(d.records, record)
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]


async def test_budgets_limit_moves_per_node_and_in_total() -> None:
    kube = FakeKube()
    pods = [_stuck(f"web-{i}") for i in range(4)]
    d = _desched(kube, *pods, nodes=("vk-a", "vk-b", "vk-c"), options=Options(max_per_node=2, cooldown=600))
    actions = [o.action for o in await d.run_once(NOW)]
    assert actions == ["evicted", "evicted", "rate_limited", "rate_limited"]
    d2 = _desched(FakeKube(), *pods, options=Options(max_total=1, cooldown=600))
    assert [o.action for o in await d2.run_once(NOW)] == ["evicted", "rate_limited", "rate_limited",
                                                           "rate_limited"]


async def test_dry_run_writes_nothing() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck(), _stuck("lonely", owner=None), dry_run=True)
    assert sorted(o.action for o in await d.run_once(NOW)) == ["would_evict", "would_recreate"]
    assert [m for m, _, _ in kube.calls if m != "GET"] == []


async def test_a_bare_pod_is_backed_up_deleted_and_recreated_with_its_metadata_and_the_avoidance() -> None:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", not_found("pod"))
    bare = _stuck("lonely", owner=None, annotations={"team": "a"})
    bare["metadata"]["labels"] = {"app": "lonely"}
    bare["spec"]["affinity"] = {"nodeAffinity": {avoidance.REQUIRED: {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]}]}]}}}
    d = _desched(kube, bare)
    assert [o.action for o in await d.run_once(NOW)] == ["recreated"]
    posts = kube.of("POST")
    assert posts[0][1]["metadata"]["name"] == f"{BACKUP_PREFIX}uid-lonely"
    assert json.loads(posts[0][1]["data"]["pod"])["metadata"]["labels"] == {"app": "lonely"}
    new = posts[1][1]
    assert new["metadata"]["name"] == "lonely" and new["metadata"]["labels"] == {"app": "lonely"}
    assert new["metadata"]["annotations"]["team"] == "a"
    assert list(json.loads(new["metadata"]["annotations"][AVOID_ANNOTATION])) == ["vk-a"]
    assert "nodeName" not in new["spec"]
    terms = new["spec"]["affinity"]["nodeAffinity"][avoidance.REQUIRED]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": "type", "operator": "In", "values": ["virtual-kubelet"]}
    assert terms[0]["matchExpressions"][1]["values"] == ["vk-a"]
    deletes = [p for p, _ in kube.of("DELETE")]
    assert deletes == ["/api/v1/namespaces/ns/pods/lonely",
                       f"/api/v1/namespaces/ns/configmaps/{BACKUP_PREFIX}uid-lonely"]


async def test_a_failed_recreate_keeps_the_backup_and_says_how_to_recover() -> None:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", not_found("pod"))
    kube.answer("POST", "/api/v1/namespaces/ns/pods", ApiError(403, "Forbidden", "quota exceeded"))
    d = _desched(kube, _stuck("lonely", owner=None))
    events: list[tuple[str, str, str]] = []
    d.recorder = type("R", (), {"event": lambda _self, obj, t, r, m: events.append((t, r, m))})()  # type: ignore[assignment]
    outcomes = await d.run_once(NOW)
    assert [o.action for o in outcomes] == ["failed"]
    assert [p for p, _ in kube.of("DELETE")] == ["/api/v1/namespaces/ns/pods/lonely"]  # backup kept
    (etype, reason, message), = events
    assert (etype, reason) == ("Warning", "RecreateFailed")
    assert f"{BACKUP_PREFIX}uid-lonely" in message and "kubectl create -f -" in message


async def test_expired_records_are_cleaned_up() -> None:
    kube = FakeKube()
    d = _desched(kube)
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"}
    live = avoidance.manifest("ns", owner, avoidance.with_node(None, "vk-a", NOW + datetime.timedelta(minutes=5), NOW))
    old = avoidance.manifest("ns", {**owner, "uid": "rs-2"},
                             avoidance.with_node(None, "vk-a", NOW - datetime.timedelta(minutes=1),
                                                 NOW - datetime.timedelta(minutes=20)))
    seed(d.records, live, old)
    assert await d.clean_records(NOW) == 1
    assert [p for p, _ in kube.of("DELETE")] == ["/api/v1/namespaces/ns/configmaps/tensile-avoid-rs-2"]


def _pdb(allowed: int, labels: dict[str, str] | None = None, ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": ns}, "spec": {"selector": {"matchLabels": labels or {}}},
            "status": {"disruptionsAllowed": allowed}}


async def test_a_budget_allowing_no_disruption_blocks_the_move_though_the_eviction_api_would_not() -> None:
    kube = FakeKube()
    stuck = _stuck()
    stuck["metadata"]["labels"] = {"app": "web"}
    d = _desched(kube, stuck)
    seed(d.budgets, _pdb(0, {"app": "web"}))
    outcomes = await d.run_once(NOW)
    assert [(o.action, o.detail) for o in outcomes] == [("blocked", "PodDisruptionBudget web")]
    assert kube.of("POST") == []
    d2 = _desched(FakeKube(), stuck)
    seed(d2.budgets, _pdb(1, {"app": "web"}), _pdb(0, {"app": "other"}), _pdb(0, {"app": "web"}, ns="elsewhere"))
    assert [o.action for o in await d2.run_once(NOW)] == ["evicted"]


async def test_a_replacement_back_on_the_avoided_node_is_not_moved_again() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck("web-1"))
    assert [o.action for o in await d.run_once(NOW)] == ["evicted"]
    record = kube.of("POST")[0][1]
    seed(d.records, record)
    d.pods.store.pop("ns/web-1")  # evicted
    seed(d.pods, _stuck("web-2"))  # the ReplicaSet's replacement, pinned to vk-a again
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]
    assert len(kube.of("POST")) == 2  # the record and the first eviction only


async def test_a_record_made_since_the_cache_heard_is_merged_not_overwritten() -> None:
    kube = FakeKube()
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"}
    existing = avoidance.manifest("ns", owner,
                                  avoidance.with_node(None, "vk-c", NOW + datetime.timedelta(minutes=5), NOW))
    kube.answer("POST", "/api/v1/namespaces/ns/configmaps", ApiError(409, "AlreadyExists", "exists"))
    kube.answer("GET", "/api/v1/namespaces/ns/configmaps/tensile-avoid-rs-1", existing)
    d = _desched(kube, _stuck())
    assert [o.action for o in await d.run_once(NOW)] == ["evicted"]
    (_, patch), = kube.of("PATCH")
    assert sorted(json.loads(patch["data"]["avoid"])) == ["vk-a", "vk-c"]


# --- what a restart must neither repeat nor leave half done ---------------------------------------------------

OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"}


def _record(node: str, present: set[str]) -> dict[str, Any]:
    return avoidance.manifest("ns", OWNER, avoidance.with_node(None, node, NOW + datetime.timedelta(minutes=5), NOW),
                              avoidance.with_present(None, node, present, NOW))


async def test_the_record_lists_the_owners_pods_already_on_the_node() -> None:
    kube = FakeKube()
    elsewhere = _stuck("web-3", node="vk-b")
    d = _desched(kube, _stuck("web-1"), _stuck("web-2"), elsewhere, nodes=("vk-a", "vk-b", "vk-c"),
                 options=Options(max_total=1, cooldown=600))
    await d.run_once(NOW)
    record = kube.of("POST")[0][1]
    assert avoidance.present(record, "vk-a") == {"uid-web-1", "uid-web-2"}  # not web-3, on another node
    assert avoidance.present(record, "vk-b") == frozenset()


async def test_a_sibling_that_was_on_the_node_before_the_record_still_moves_but_a_replacement_does_not() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck("web-2"), _stuck("web-3"))
    seed(d.records, _record("vk-a", {"uid-web-1", "uid-web-2"}))  # web-1 already evicted; web-3 came after
    outcomes = {o.pod: o.action for o in await d.run_once(NOW)}
    assert outcomes == {"ns/web-2": "evicted", "ns/web-3": "stayed"}
    assert [p for p, _ in kube.of("POST")] == ["/api/v1/namespaces/ns/pods/web-2/eviction"]
    (_, patch), = kube.of("PATCH")  # the record keeps what it knew
    assert {"uid-web-1", "uid-web-2"} <= avoidance.present(patch, "vk-a")


async def test_a_replacement_that_arrived_while_siblings_were_being_evicted_is_not_listed_nor_evicted() -> None:
    kube = FakeKube()
    d = _desched(kube, _stuck("web-1"), _stuck("web-2"), options=Options(max_total=1, cooldown=600))
    assert [o.action for o in await d.run_once(NOW)] == ["evicted", "rate_limited"]
    seed(d.records, kube.of("POST")[0][1])
    d.pods.store.pop("ns/web-1")
    seed(d.pods, _stuck("web-9"))  # web-1's replacement, back on vk-a before web-2 moved
    outcomes = {o.pod: o.action for o in await d.run_once(NOW)}
    assert outcomes == {"ns/web-2": "evicted", "ns/web-9": "stayed"}
    (_, patch), = kube.of("PATCH")
    assert avoidance.present(patch, "vk-a") == {"uid-web-1", "uid-web-2"}
    seed(d.records, {**kube.of("POST")[0][1], "data": patch["data"]})
    d.pods.store.pop("ns/web-2")
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]  # web-9, still
    assert [p for p, _ in kube.of("POST")][2:] == ["/api/v1/namespaces/ns/pods/web-2/eviction"]


async def test_a_restart_between_the_record_and_the_eviction_finishes_the_eviction_once() -> None:
    kube = FakeKube()
    first = _desched(kube, _stuck("web-1"))
    kube.answer("POST", "/api/v1/namespaces/ns/pods/web-1/eviction", asyncio.CancelledError())  # killed here
    with pytest.raises(asyncio.CancelledError):
        await first.run_once(NOW)
    record = kube.of("POST")[0][1]
    kube = FakeKube()
    restarted = _desched(kube, _stuck("web-1"))  # a new process: nothing in memory
    seed(restarted.records, record)
    assert [o.action for o in await restarted.run_once(NOW)] == ["evicted"]
    assert [o.action for o in await restarted.run_once(NOW)] == ["stayed"]  # the pod lingers: not evicted twice
    assert [p for p, _ in kube.of("POST")] == ["/api/v1/namespaces/ns/pods/web-1/eviction"]


async def test_a_recreated_bare_pod_is_not_moved_again_within_the_cooldown_after_a_restart() -> None:
    kube = FakeKube()
    moved = _stuck("lonely", owner=None, node="vk-b", annotations={
        AVOID_ANNOTATION: json.dumps({"vk-a": timestamps.rfc3339(NOW + datetime.timedelta(minutes=5))})})
    d = _desched(kube, moved, nodes=("vk-a", "vk-b", "vk-c"))  # vk-c could take it
    assert [o.action for o in await d.run_once(NOW)] == ["stayed"]
    assert kube.of("POST") == [] and kube.of("DELETE") == []
    expired = _desched(FakeKube(), moved, nodes=("vk-a", "vk-b", "vk-c"))
    later = NOW + datetime.timedelta(minutes=6)
    assert [o.action for o in await expired.run_once(later)] == ["recreated"]


async def _kill_during_move(kill_on: tuple[str, str]) -> tuple[dict[str, Any], FakeKube]:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", not_found("pod"))
    kube.answer(*kill_on, asyncio.CancelledError())
    d = _desched(kube, _stuck("lonely", owner=None, annotations={"team": "a"}))
    with pytest.raises(asyncio.CancelledError):
        await d.run_once(NOW)
    backup = kube.of("POST")[0][1]
    assert backup["metadata"]["name"] == f"{BACKUP_PREFIX}uid-lonely"
    return backup, kube


async def test_a_restart_after_the_delete_recreates_the_bare_pod_from_its_backup_once() -> None:
    backup, _ = await _kill_during_move(("POST", "/api/v1/namespaces/ns/pods"))  # deleted, never recreated
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", not_found("pod"))
    kube.answer("POST", "/api/v1/namespaces/ns/pods", lambda _p, body: {**body, "metadata": {
        **body["metadata"], "uid": "uid-new"}})
    restarted = _desched(kube)
    seed(restarted.backups, {**backup, "metadata": {**backup["metadata"], "namespace": "ns"}})
    outcomes = await restarted.run_once(NOW)
    assert [(o.pod, o.node, o.action, o.reason) for o in outcomes] == [("ns/lonely", "vk-a", "recreated", "Recovered")]
    (_, created), = kube.of("POST")
    assert created["metadata"]["annotations"]["team"] == "a"
    assert list(json.loads(created["metadata"]["annotations"][AVOID_ANNOTATION])) == ["vk-a"]
    assert created["spec"]["affinity"]["nodeAffinity"][avoidance.REQUIRED]["nodeSelectorTerms"][0][
        "matchExpressions"][-1]["values"] == ["vk-a"]
    assert [p for p, _ in kube.of("DELETE")] == [f"/api/v1/namespaces/ns/configmaps/{BACKUP_PREFIX}uid-lonely"]


async def test_a_restart_before_the_delete_drops_the_backup_and_moves_the_pod_afresh() -> None:
    backup, _ = await _kill_during_move(("DELETE", "/api/v1/namespaces/ns/pods/lonely"))
    kube = FakeKube()
    stuck = _stuck("lonely", owner=None, annotations={"team": "a"})
    pod_gone = {"n": 0}

    def read(_path: str, _body: Any) -> dict[str, Any]:
        pod_gone["n"] += 1
        if pod_gone["n"] > 1:  # the recovery's look, then gone after the new delete
            raise not_found("pod")
        return stuck

    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", read)
    kube.answer("POST", "/api/v1/namespaces/ns/configmaps", ApiError(409, "AlreadyExists", "exists"))
    restarted = _desched(kube, stuck)
    seed(restarted.backups, {**backup, "metadata": {**backup["metadata"], "namespace": "ns"}})
    assert [o.action for o in await restarted.run_once(NOW)] == ["recreated"]
    deletes = [p for p, _ in kube.of("DELETE")]
    assert deletes.count("/api/v1/namespaces/ns/pods/lonely") == 1
    assert [p for p, _ in kube.of("POST")] == ["/api/v1/namespaces/ns/configmaps", "/api/v1/namespaces/ns/pods"]


async def test_a_backup_whose_pod_was_recreated_or_is_being_deleted_is_handled_without_a_create() -> None:
    backup, _ = await _kill_during_move(("DELETE", f"/api/v1/namespaces/ns/configmaps/{BACKUP_PREFIX}"))
    backup = {**backup, "metadata": {**backup["metadata"], "namespace": "ns"}}
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", {"metadata": {"name": "lonely", "uid": "uid-new"}})
    d = _desched(kube)
    seed(d.backups, backup)
    assert await d.run_once(NOW) == []
    assert kube.of("POST") == [] and [p for p, _ in kube.of("DELETE")] == [
        f"/api/v1/namespaces/ns/configmaps/{BACKUP_PREFIX}uid-lonely"]
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", {"metadata": {
        "name": "lonely", "uid": "uid-lonely", "deletionTimestamp": timestamps.rfc3339(NOW)}})
    d = _desched(kube)
    seed(d.backups, backup)
    assert await d.run_once(NOW) == []
    assert kube.of("POST") == [] and kube.of("DELETE") == []  # the next pass finishes it


async def test_an_old_backup_without_the_pod_to_create_restores_the_original() -> None:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/pods/lonely", not_found("pod"))
    original = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lonely", "namespace": "ns"},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
    d = _desched(kube)
    seed(d.backups, {"metadata": {"name": f"{BACKUP_PREFIX}uid-lonely", "namespace": "ns"},
                     "data": {"pod": json.dumps(original)}},
         {"metadata": {"name": f"{BACKUP_PREFIX}garbage", "namespace": "ns"}, "data": {"pod": "{not json"}})
    assert [o.action for o in await d.run_once(NOW)] == ["recreated"]
    assert kube.of("POST") == [("/api/v1/namespaces/ns/pods", original)]
