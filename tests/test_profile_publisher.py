"""The virtual node's ClusterProfile publisher against fakes: write on change only, heartbeat, CRD."""

from __future__ import annotations

from typing import Any

import pytest

from tensile import clusterprofile
from tensile import conventions as c
from tensile.controllers.context import Config, Context
from tensile.controllers.node import NodeController
from tensile.controllers.profile import ProfilePublisher
from tensile.kube.errors import ApiError
from tensile.quantity import parse_list
from tests.fakes import FakeKube, not_found, seed

JSON = dict[str, Any]


def lower_node(name: str, cpu: str) -> JSON:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def world(**config: Any) -> tuple[Context, ProfilePublisher, FakeKube]:
    upper, lower = FakeKube("upper"), FakeKube("lower")
    ctx = Context.build(Config(node_name="vk-a", cluster_id="low", **config), upper, lower, "up")  # type: ignore[arg-type]
    node = NodeController(ctx)
    node.node_uid = "node-uid"
    seed(ctx.lower_nodes, lower_node("n1", "4"), lower_node("n2", "8"))
    return ctx, ProfilePublisher(ctx, node), upper


async def test_an_unchanged_profile_is_not_written_again_until_forced() -> None:
    _, publisher, upper = world()
    assert await publisher.publish()
    assert not await publisher.publish()
    assert await publisher.publish(force=True)
    patches = upper.of("PATCH")
    assert len(patches) == 2 and all(p == clusterprofile.object_path("vk-a") for p, _ in patches)
    body = patches[0][1]
    assert body["status"]["nodes"] == 2 and body["status"]["clusterID"] == "low"
    assert body["status"]["heartbeatTime"] and body["status"]["truncated"] is None  # a merge patch removes it
    assert body["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Node", "name": "vk-a",
                                                      "uid": "node-uid"}


async def test_a_changed_lower_cluster_is_written() -> None:
    ctx, publisher, upper = world()
    await publisher.publish()
    seed(ctx.lower_nodes, lower_node("n3", "16"))
    assert await publisher.publish()
    assert upper.of("PATCH")[-1][1]["status"]["summary"]["largestFreeCPU"] == "16"


async def test_a_missing_profile_is_created_installing_the_crd_when_needed() -> None:
    _, publisher, upper = world()
    upper.answer("PATCH", clusterprofile.object_path("vk-a"), not_found("clusterprofile"))
    served = iter([not_found("group"), {}])
    upper.answer("GET", f"/apis/{clusterprofile.API_VERSION}", lambda p, b: (
        (_ for _ in ()).throw(v) if isinstance(v := next(served), ApiError) else v))
    assert await publisher.publish()
    (crd_path, crd), (create_path, created) = upper.of("POST")
    assert crd["metadata"]["name"] == clusterprofile.CRD_NAME and crd_path.endswith("customresourcedefinitions")
    assert create_path == clusterprofile.collection_path()
    assert created["kind"] == c.PROFILE_KIND and "truncated" not in created["status"]
    assert publisher.metrics.writes.labels("changed", "success")._value.get() == 1


async def test_credentials_that_may_not_install_the_crd_get_the_command_to_run() -> None:
    _, publisher, upper = world()
    upper.answer("PATCH", clusterprofile.object_path("vk-a"), not_found("clusterprofile"))
    upper.answer("GET", f"/apis/{clusterprofile.API_VERSION}", not_found("group"))
    upper.answer("POST", "/apis/apiextensions.k8s.io", ApiError(403, "Forbidden", "no"))
    with pytest.raises(ApiError) as err:
        await publisher.publish()
    assert err.value.status == 403 and "tensile scheduler crd | kubectl apply -f -" in str(err.value)
    assert publisher.published is None
    assert publisher.metrics.writes.labels("changed", "refused")._value.get() == 1


def test_extra_capacity_is_added_to_the_node_and_the_profile() -> None:
    gpu = parse_list({"nvidia.com/gpu": "4", "cpu": "8", "memory": "32Gi"})
    _, publisher, _ = world(extra_capacity=(gpu,))
    cap, alloc = publisher.node._capacity()
    assert cap["nvidia.com/gpu"] == "4" and alloc["cpu"] == "20"  # 4 + 8 real, + 8 autoscalable
    built = publisher.build()
    assert built["groups"][-1]["autoscaled"] and "nvidia.com/gpu" in built["resources"]
    assert publisher.metrics.groups._value.get() == 2


async def test_a_failure_is_reported_once_on_the_node_and_its_end_too() -> None:
    ctx, publisher, _ = world()
    events: list[tuple[str, str, str]] = []
    ctx.recorder.event = lambda obj, etype, reason, message: events.append(  # type: ignore[method-assign]
        (obj["kind"], reason, message))
    refused = ApiError(403, "Forbidden", "may not")
    publisher._report(refused)
    publisher._report(refused)
    publisher._report(None)
    publisher._report(None)
    assert [(kind, reason) for kind, reason, _ in events] == [
        ("Node", "CapacityProfileNotPublished"), ("Node", "CapacityProfilePublished")]
    assert "may not" in events[0][2]
