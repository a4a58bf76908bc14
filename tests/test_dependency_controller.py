"""The dependency controller: copies made, kept while needed, collected safely."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tensile import conventions as c
from tensile.controllers.context import Config, Context
from tensile.controllers.copies import LowerCopies
from tensile.controllers.dependencies import DependencyController
from tensile.controllers.namespaces import NamespaceEnsurer
from tests.fakes import FakeKube, pod, seed

JSON = dict[str, Any]
KEY = "configmaps/ns/settings"


class World:
    def __init__(self, gc_delay: float = 10.0) -> None:
        self.upper, self.lower = FakeKube("upper"), FakeKube("lower")
        cfg = Config(node_name="vk-a", cluster_id="low", node_ip="10.0.0.1", dependency_gc_delay=gc_delay)
        self.ctx = Context.build(cfg, self.upper, self.lower, "up")  # type: ignore[arg-type]
        seed(self.ctx.lower_namespaces, {"metadata": {"name": "ns"}})
        namespaces = NamespaceEnsurer(self.lower, self.ctx.owner, self.ctx.lower_namespaces)  # type: ignore[arg-type]
        self.deps = DependencyController(self.ctx, LowerCopies(self.ctx, namespaces))

    def copy(self, resource: str, name: str, **extra: Any) -> JSON:
        obj = {"metadata": {"name": name, "namespace": "ns", "uid": f"low-{name}", "labels": self.ctx.owner.labels,
                            "annotations": {c.UPPER_UID_ANNOTATION: f"up-{name}"}}, **extra}
        seed(self.ctx.lower_deps[resource], obj)
        return obj

    def pod_using(self, name: str, claim: str | None = None) -> JSON:
        volumes: list[JSON] = [{"name": "s", "configMap": {"name": "settings"}}]
        if claim:
            volumes.append({"name": "d", "persistentVolumeClaim": {"claimName": claim}})
        return pod(name, spec={"containers": [{"name": "a", "image": "x"}], "volumes": volumes})


async def test_an_unreferenced_copy_waits_out_the_delay_before_it_is_deleted() -> None:
    world = World(gc_delay=10.0)
    world.copy("configmaps", "settings")
    world.deps._on_pod("upper", None, world.pod_using("old"))
    world.deps._on_pod("upper", world.pod_using("old"), None)  # a Recreate rollout: old pod gone
    wait = await world.deps.reconcile(KEY)
    assert wait is not None and 9 < wait <= 10 and world.lower.of("DELETE") == []
    world.deps._unreferenced_since[KEY] = time.monotonic() - 11
    assert await world.deps.reconcile(KEY) is None
    assert world.lower.of("DELETE") == [("/api/v1/namespaces/ns/configmaps/settings",
                                        {"preconditions": {"uid": "low-settings"}})]


async def test_a_new_pod_within_the_delay_keeps_the_copy() -> None:
    world = World(gc_delay=10.0)
    world.copy("configmaps", "settings")
    seed(world.ctx.upper_deps["configmaps"], {"metadata": {"name": "settings", "namespace": "ns",
                                                            "resourceVersion": "1"}, "data": {}})
    world.deps._on_pod("upper", None, world.pod_using("old"))
    world.deps._on_pod("upper", world.pod_using("old"), None)
    assert await world.deps.reconcile(KEY) is not None
    world.deps._on_pod("upper", None, world.pod_using("new"))  # the new revision arrives
    world.deps._unreferenced_since[KEY] = time.monotonic() - 60  # (stale timer from before)
    assert await world.deps.reconcile(KEY) is None
    assert world.lower.of("DELETE") == []


async def test_collection_rechecks_the_index_under_the_lock() -> None:
    world = World(gc_delay=0.0)
    world.copy("configmaps", "settings")
    lock = world.deps._lock(KEY)
    await lock.acquire()  # a pod's sync holds the key...
    task = asyncio.create_task(world.deps.reconcile(KEY))
    await asyncio.sleep(0)
    world.deps._on_pod("upper", None, world.pod_using("new"))  # ...and its pod is indexed meanwhile
    lock.release()
    await task
    assert world.lower.of("DELETE") == []


@pytest.mark.parametrize("upper_claim_exists", [True, False])
async def test_a_claim_copy_lives_as_long_as_the_upper_claim(upper_claim_exists: bool) -> None:
    world = World(gc_delay=0.0)
    world.copy("persistentvolumeclaims", "data", spec={"volumeName": "pv-low"}, status={"phase": "Bound"})
    if upper_claim_exists:
        seed(world.ctx.upper_deps["persistentvolumeclaims"], {
            "metadata": {"name": "data", "namespace": "ns", "uid": "up-data", "resourceVersion": "3"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}})
    await world.deps.reconcile("persistentvolumeclaims/ns/data")
    deleted = [p for p, _ in world.lower.of("DELETE")]
    if upper_claim_exists:
        assert deleted == []
        created = [b for p, b in world.upper.of("POST") if p == "/api/v1/persistentvolumes"]
        assert [pv["metadata"]["name"] for pv in created] == ["pvc-up-data"]  # the upper claim gets bound
    else:
        assert deleted == ["/api/v1/namespaces/ns/persistentvolumeclaims/data"]
        assert [p for p, _ in world.upper.of("GET")] == ["/api/v1/persistentvolumes/pvc-up-data"]


def _terminating(p: JSON) -> JSON:
    return {**p, "metadata": {**p["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}


def _finished(p: JSON) -> JSON:
    return {**p, "status": {"phase": "Succeeded"}}


def _daemonset(p: JSON) -> JSON:
    owner = {"kind": "DaemonSet", "name": "agent", "controller": True, "apiVersion": "apps/v1", "uid": "ds"}
    return {**p, "metadata": {**p["metadata"], "ownerReferences": [owner]}}


@pytest.mark.parametrize("never_copied", [_terminating, _finished, _daemonset])
async def test_an_upper_pod_that_will_never_be_copied_gets_no_copies(never_copied: Any) -> None:
    world = World(gc_delay=0.0)
    seed(world.ctx.upper_deps["configmaps"], {"metadata": {"name": "settings", "namespace": "ns",
                                                            "resourceVersion": "1"}, "data": {}})
    live = world.pod_using("p")
    # Seen live, then deleted before any worker ran (a virtual node that was stopped meanwhile)...
    world.deps._on_pod("upper", None, live)
    world.deps._on_pod("upper", live, never_copied(live))
    assert KEY not in world.deps.referrers
    await world.deps.reconcile(KEY)
    # ...or only ever seen like that: nothing is made downstairs, not even the namespace.
    world.deps._on_pod("upper", None, never_copied(world.pod_using("q")))
    assert KEY not in world.deps.referrers
    await world.deps.reconcile(KEY)
    assert world.lower.of("POST") == [] and world.lower.of("PUT") == []


async def test_a_terminating_upper_pod_keeps_the_copies_its_running_copy_uses() -> None:
    world = World(gc_delay=0.0)
    world.copy("configmaps", "settings")
    upper = world.pod_using("p")
    lower = {**upper, "metadata": {**upper["metadata"], "labels": world.ctx.owner.labels}}
    world.deps._on_pod("upper", None, upper)
    world.deps._on_pod("lower", None, lower)
    world.deps._on_pod("upper", upper, _terminating(upper))
    assert world.deps.referrers[KEY] == {"lower:ns/p"}
    await world.deps.reconcile(KEY)
    assert world.lower.of("DELETE") == []
    world.deps._on_pod("lower", lower, None)  # the copy is gone: now the ConfigMap copy may go
    await world.deps.reconcile(KEY)
    assert [p for p, _ in world.lower.of("DELETE")] == ["/api/v1/namespaces/ns/configmaps/settings"]
