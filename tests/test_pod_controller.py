"""The pod controller's reconcile branches against fakes of both clusters."""

from __future__ import annotations

from typing import Any

import pytest

from tensile import conventions as c
from tensile.controllers.context import Config, Context
from tensile.controllers.copies import LowerCopies
from tensile.controllers.dependencies import DependencyController
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.controllers.pods import PodController
from tensile.kube.errors import NOT_LEADER, ApiError
from tests.fakes import FakeKube, pod, seed

JSON = dict[str, Any]
VK = "vk-a"


class World:
    def __init__(self) -> None:
        self.upper, self.lower = FakeKube("upper"), FakeKube("lower")
        self.ctx = Context.build(Config(node_name=VK, cluster_id="low", node_ip="10.0.0.1"),
                                 self.upper, self.lower, "up")  # type: ignore[arg-type]
        seed(self.ctx.lower_namespaces, {"metadata": {"name": "ns"}})
        namespaces = NamespaceEnsurer(self.lower, self.ctx.owner, self.ctx.lower_namespaces)  # type: ignore[arg-type]
        self.deps = DependencyController(self.ctx, LowerCopies(self.ctx, namespaces))
        self.pods = PodController(self.ctx, self.deps, namespaces)

    def upper_pod(self, name: str = "p", **meta: Any) -> JSON:
        obj = pod(name, metadata={"labels": {}, **meta}, spec={
            "nodeName": VK, "containers": [{"name": "app", "image": "nginx"}]}, status={"phase": "Pending"})
        seed(self.ctx.upper_pods, obj)
        return obj

    def lower_copy(self, upper: JSON, **meta: Any) -> JSON:
        obj = pod(upper["metadata"]["name"], metadata={
            "labels": self.ctx.owner.labels, "uid": "lower-uid",
            "annotations": {c.UPPER_UID_ANNOTATION: upper["metadata"]["uid"]}, **meta},
            spec={"containers": [{"name": "app", "image": "nginx"}]}, status={"phase": "Running"})
        seed(self.ctx.lower_pods, obj)
        return obj

    def status_patches(self) -> list[JSON]:
        return [b for p, b in self.upper.of("PATCH") if p.endswith("/status")]

    async def events(self) -> list[str]:
        await self.ctx.recorder.flush()
        return [b["reason"] for p, b in self.upper.of("POST") if "/events" in p]


@pytest.fixture
def world() -> World:
    return World()


async def test_a_force_deleted_upper_pod_deletes_its_copy_at_once(world: World) -> None:
    up = world.upper_pod()
    world.lower_copy(up)
    del world.ctx.upper_pods.store["ns/p"]
    await world.pods.reconcile("ns/p")
    assert world.lower.of("DELETE") == [("/api/v1/namespaces/ns/pods/p",
                                        {"preconditions": {"uid": "lower-uid"}, "gracePeriodSeconds": 0})]


async def test_a_shortened_grace_period_deletes_the_copy_again(world: World) -> None:
    up = world.upper_pod(deletionTimestamp="t", deletionGracePeriodSeconds=1)
    world.lower_copy(up, deletionTimestamp="t", deletionGracePeriodSeconds=300)
    await world.pods.reconcile("ns/p")
    assert [b["gracePeriodSeconds"] for _, b in world.lower.of("DELETE")] == [1]
    # Same grace downstairs already: nothing more to do.
    world.lower_copy(up, deletionTimestamp="t", deletionGracePeriodSeconds=1)
    await world.pods.reconcile("ns/p")
    assert len(world.lower.of("DELETE")) == 1


async def test_a_name_held_by_a_foreign_pod_does_not_keep_the_upper_pod_terminating(world: World) -> None:
    world.upper_pod(deletionTimestamp="t", deletionGracePeriodSeconds=30)
    world.lower.answer("GET", "/api/v1/namespaces/ns/pods/p", pod("p", metadata={"labels": {"who": "else"}}))
    assert await world.pods.reconcile("ns/p") is None
    assert world.upper.of("DELETE") == [("/api/v1/namespaces/ns/pods/p",
                                        {"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-p"}})]
    assert world.lower.of("DELETE") == []


async def test_a_copy_the_cache_saw_deleted_removes_the_upper_pod_without_asking_the_lower_cluster(
        world: World) -> None:
    up = world.upper_pod(deletionTimestamp="t", deletionGracePeriodSeconds=30)
    copy = world.lower_copy(up)
    # The lower cache's watch delivers the copy's deletion (the handler sees it, as the informer's would).
    del world.ctx.lower_pods.store["ns/p"]
    world.pods._on_lower(copy, None)
    assert await world.pods.reconcile("ns/p") is None
    assert world.lower.of("GET") == []
    assert [p for p, _ in world.upper.of("DELETE")] == ["/api/v1/namespaces/ns/pods/p"]


async def test_a_copy_deleted_after_its_upper_pod_leaves_nothing_remembered(world: World) -> None:
    up = world.upper_pod()
    copy = world.lower_copy(up)
    # Force-deleted upstairs first (its delete event already handled), then the orphan copy goes.
    del world.ctx.upper_pods.store["ns/p"]
    world.pods._on_upper(up, None)
    del world.ctx.lower_pods.store["ns/p"]
    world.pods._on_lower(copy, None)
    assert world.pods._gone == set()


async def test_a_copy_the_cache_never_showed_is_confirmed_gone_before_the_upper_pod_goes(world: World) -> None:
    up = world.upper_pod(deletionTimestamp="t", deletionGracePeriodSeconds=30)
    mine = pod("p", metadata={"labels": world.ctx.owner.labels, "annotations": {
        c.UPPER_UID_ANNOTATION: up["metadata"]["uid"]}})
    world.lower.answer("GET", "/api/v1/namespaces/ns/pods/p", mine)
    # Created, not yet in the cache: the upper pod waits for it.
    assert await world.pods.reconcile("ns/p") == 1.0
    assert world.upper.of("DELETE") == []
    # Seen deleted once, then a copy created again (before the upper pod was deleted): confirm again.
    world.pods._on_lower(mine, None)
    world.upper_pod()
    assert await world.pods.reconcile("ns/p") is None
    assert [p for p, _ in world.lower.of("POST")] == ["/api/v1/namespaces/ns/pods"]
    world.upper_pod(deletionTimestamp="t", deletionGracePeriodSeconds=30)
    assert await world.pods.reconcile("ns/p") == 1.0
    assert len(world.lower.of("GET")) == 2 and world.upper.of("DELETE") == []


async def test_daemonset_pods_are_reported_ready_and_never_copied(world: World) -> None:
    world.upper_pod(ownerReferences=[{"kind": "DaemonSet", "name": "agent", "controller": True, "uid": "d"}])
    await world.pods.reconcile("ns/p")
    await world.pods.reconcile("ns/p")
    assert world.lower.of("POST") == []
    status = world.status_patches()[0]["status"]
    assert status["phase"] == "Running"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "DaemonSetPodNotCopied"
    assert await world.events() == ["DaemonSetPodNotCopied"]  # once, not per reconcile


@pytest.mark.parametrize(("status", "retried"), [(422, False), (403, True)])
async def test_a_refused_create_is_held_with_one_event(world: World, status: int, retried: bool) -> None:
    world.upper_pod()
    world.lower.answer("POST", "/api/v1/namespaces/ns/pods",
                       ApiError(status, "Refused", "POST: nope", {"message": "exceeded quota: q"}))
    first = await world.pods.reconcile("ns/p")
    second = await world.pods.reconcile("ns/p")
    assert (first is not None) is retried
    if retried:
        assert second is not None and first is not None and second > first  # backs off
    waiting = world.status_patches()[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerError" and "exceeded quota" in waiting["message"]
    assert await world.events() == ["ProviderCreateFailed"]


async def test_a_missing_configmap_holds_the_pod_as_a_kubelet_would(world: World) -> None:
    up = world.upper_pod()
    up["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "late"}},
                             {"name": "o", "configMap": {"name": "never", "optional": True}}]
    delays = [await world.pods.reconcile("ns/p") for _ in range(3)]
    assert delays == [5.0, 10.0, 20.0]
    assert world.lower.of("POST") == []
    waiting = world.status_patches()[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "CreateContainerConfigError", "message": 'configmap "late" not found'}
    assert sorted(await world.events()) == ["MandatoryConfigMapNotFound", "OptionalConfigMapNotFound"]


async def test_a_dependency_copy_the_lower_cluster_refuses_holds_the_pod_with_one_event(world: World) -> None:
    up = world.upper_pod()
    up["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "filled"}}]
    world.deps._on_pod("upper", None, up)
    filled = {"metadata": {"name": "filled", "namespace": "ns", "resourceVersion": "1"}, "data": {"k": "v"}}
    seed(world.ctx.upper_deps["configmaps"], filled)
    too_long = "ConfigMap \"filled\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes"
    world.lower.answer("POST", "/api/v1/namespaces/ns/configmaps",
                       ApiError(422, "Invalid", "POST: invalid", {"message": too_long}))
    delays = [await world.pods.reconcile("ns/p") for _ in range(2)]
    assert delays == [5.0, 10.0]  # held and looked at again slowly, not retried as an error
    assert [p for p, _ in world.lower.of("POST")] == ["/api/v1/namespaces/ns/configmaps"] * 2
    waiting = world.status_patches()[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "CreateContainerConfigError",
                       "message": f'lower cluster low refused the copy of configmap "filled": {too_long}'}
    assert await world.events() == ["DependencyRefused"]
    # The dependency worker does not retry it either; a change of the upper object does, and releases the pod.
    assert await world.deps.reconcile("configmaps/ns/filled") is None
    changed = {**filled, "metadata": {**filled["metadata"], "resourceVersion": "2"}}
    assert len(world.pods.queue) == 0
    seed(world.ctx.upper_deps["configmaps"], changed)
    world.ctx.upper_deps["configmaps"]._notify(filled, changed)
    assert len(world.pods.queue) == 1 and await world.pods.queue.get() == "ns/p"


async def test_status_flows_up_while_the_lower_cluster_refuses_spec_updates(world: World) -> None:
    up = world.upper_pod()
    low = world.lower_copy(up)
    up["metadata"]["labels"] = {"v": "2"}
    low["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    world.lower.answer("PATCH", "/api/v1/namespaces/ns/pods/p",
                       ApiError(403, "Forbidden", "PATCH: denied", {"message": "frozen by policy"}))
    delay = await world.pods.reconcile("ns/p")
    assert delay is not None and delay > 0  # looked at again slowly, not in a hot loop
    assert world.status_patches()[0]["status"]["phase"] == "Running"
    assert await world.events() == ["ProviderUpdateFailed"]


@pytest.mark.parametrize("write", ["create", "update"])
async def test_a_write_held_back_by_the_leader_fence_emits_no_warning_event(world: World, write: str) -> None:
    up = world.upper_pod()
    not_leader = ApiError(503, NOT_LEADER, "not sent: this replica does not hold the leader-election lease")
    if write == "create":
        world.lower.answer("POST", "/api/v1/namespaces/ns/pods", not_leader)
    else:
        world.lower_copy(up)
        up["metadata"]["labels"] = {"v": "2"}
        world.lower.answer("PATCH", "/api/v1/namespaces/ns/pods/p", not_leader)
    with pytest.raises(ApiError) as err:
        await world.pods.reconcile("ns/p")
    assert err.value.not_leader  # the work queue takes it quietly and looks again once leading
    assert "Provider" not in " ".join(await world.events())  # no ProviderCreateFailed/ProviderUpdateFailed


async def test_a_copy_that_finished_and_vanished_hands_up_its_end(world: World) -> None:
    up = world.upper_pod()
    up["status"] = {"phase": "Running", "hostIP": "10.0.0.1"}
    low = world.lower_copy(up)
    low["status"] = {"phase": "Succeeded", "containerStatuses": [
        {"name": "app", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
    world.pods._on_lower(low, None)  # the lower pod was deleted right after it finished
    del world.ctx.lower_pods.store["ns/p"]
    await world.pods.reconcile("ns/p")
    assert world.lower.of("POST") == [] and world.upper.of("DELETE") == []
    status = world.status_patches()[0]["status"]
    assert status["phase"] == "Succeeded"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


async def test_a_finished_upper_pod_is_never_copied_again(world: World) -> None:
    up = world.upper_pod()
    up["status"] = {"phase": "Succeeded", "hostIP": "10.0.0.1"}
    assert await world.pods.reconcile("ns/p") is None
    assert world.lower.calls == []


class SuffixedWorld(World):
    def __init__(self) -> None:
        self.upper, self.lower = FakeKube("upper"), FakeKube("lower")
        self.ctx = Context.build(Config(node_name=VK, cluster_id="low", node_ip="10.0.0.1",
                                        namespace_mapping="suffixed", upper_cluster_name="east"),
                                 self.upper, self.lower, "up", lower_cluster_id="low-uid")  # type: ignore[arg-type]
        namespaces = NamespaceEnsurer(self.lower, self.ctx.owner, self.ctx.lower_namespaces)  # type: ignore[arg-type]
        self.deps = DependencyController(self.ctx, LowerCopies(self.ctx, namespaces))
        self.pods = PodController(self.ctx, self.deps, namespaces)


async def test_suffixed_mode_makes_the_namespace_dependencies_and_copy_downstairs_under_the_mapped_name() -> None:
    world = SuffixedWorld()
    up = world.upper_pod(spec=None)
    up["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "cfg"}}]
    seed(world.ctx.upper_deps["configmaps"], {"metadata": {"name": "cfg", "namespace": "ns", "resourceVersion": "3"},
                                              "data": {"k": "v"}})
    world.deps._on_pod("upper", None, up)
    await world.pods.reconcile("ns/p")
    # (The fake's namespace cache never fills, so the namespace is asked for before each create.)
    posts = {p: b["metadata"] for p, b in world.lower.of("POST")}
    assert list(posts) == ["/api/v1/namespaces", "/api/v1/namespaces/ns-east/configmaps",
                           "/api/v1/namespaces/ns-east/pods"]
    assert posts["/api/v1/namespaces"]["name"] == "ns-east"
    assert posts["/api/v1/namespaces/ns-east/pods"]["annotations"][c.ORIGIN_CHAIN_ANNOTATION] == "up,low-uid"
    # The copy's events come back under the upper key, and a gone upper pod deletes it in its namespace.
    copy = world.lower_copy(up, namespace="ns-east",
                            annotations={c.UPPER_UID_ANNOTATION: up["metadata"]["uid"],
                                         c.UPPER_NAMESPACE_ANNOTATION: "ns"})
    assert world.ctx.upper_key(copy) == "ns/p"
    del world.ctx.upper_pods.store["ns/p"]
    await world.pods.reconcile("ns/p")
    assert world.lower.of("DELETE")[-1][0] == "/api/v1/namespaces/ns-east/pods/p"


async def test_a_pod_whose_chain_holds_the_lower_cluster_is_never_copied() -> None:
    world = SuffixedWorld()
    world.upper_pod(annotations={c.ORIGIN_CHAIN_ANNOTATION: "low-uid,up"})
    await world.pods.reconcile("ns/p")
    assert world.lower.of("POST") == []
    assert "OriginLoop" in await world.events()
    message = world.status_patches()[-1]["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "leads to cluster low-uid" in message


async def test_a_copy_only_being_placed_is_looked_at_once_its_containers_start_not_before(world: World) -> None:
    up = world.upper_pod()
    created = world.lower_copy(up)
    created["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    scheduled = {**created, "spec": {**created["spec"], "nodeName": "n1"},
                 "status": {**created["status"], "conditions": [{"type": "PodScheduled", "status": "True"}]}}
    world.pods._on_lower(None, created)
    world.pods._on_lower(created, scheduled)
    assert len(world.pods.queue) == 0 and "ns/p" in world.pods.queue._timers  # folded into one look, later
    running = {**scheduled, "status": {"phase": "Running", "containerStatuses": [{"name": "app", "ready": True}]}}
    world.pods._on_lower(scheduled, running)
    assert len(world.pods.queue) == 1  # at once
    unschedulable = {**created, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    world.pods.queue._dirty.clear()
    world.pods._on_lower(created, unschedulable)
    assert len(world.pods.queue) == 1  # a problem is shown at once
