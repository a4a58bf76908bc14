"""The node controller's registration, Lease and readiness against fakes."""

from __future__ import annotations

import time
from typing import Any

from tensile import capacity
from tensile import conventions as c
from tensile.controllers.context import Config, Context
from tensile.controllers.node import NodeController
from tensile.kube.errors import ApiError
from tests.fakes import FakeKube

JSON = dict[str, Any]


def world(**config: Any) -> tuple[Context, NodeController, FakeKube]:
    upper, lower = FakeKube("upper"), FakeKube("lower")
    ctx = Context.build(Config(node_name="vk-a", cluster_id="low", node_ip="10.0.0.1", **config),
                        upper, lower, "up")  # type: ignore[arg-type]
    heartbeat = ctx.heartbeat
    assert isinstance(heartbeat, FakeKube)
    return ctx, NodeController(ctx), heartbeat


async def test_a_missing_node_is_registered_through_the_heartbeat_client() -> None:
    ctx, node, heartbeat = world()
    heartbeat.answer("GET", "/api/v1/nodes/vk-a", ApiError(404, "NotFound", "no node"))
    heartbeat.answer("POST", "/api/v1/nodes", lambda p, body: {**body, "metadata": {**body["metadata"], "uid": "n"}})
    await node.ensure_registered()
    (_, body), = heartbeat.of("POST")
    labels = body["metadata"]["labels"]
    assert labels[c.VIRTUAL_NODE_TYPE_LABEL] == c.VIRTUAL_NODE_TYPE_VALUE and labels[c.ROLE_LABEL] == c.ROLE_VALUE
    assert labels[c.BETA_OS_LABEL] == "linux"
    assert body["spec"]["taints"] == [{"key": c.PROVIDER_TAINT_KEY, "value": c.PROVIDER_TAINT_VALUE,
                                       "effect": c.PROVIDER_TAINT_EFFECT}]
    assert ctx.upper.requests == 0  # type: ignore[attr-defined]  # pod traffic's client untouched
    assert node.node_uid == "n"


async def test_with_node_credentials_no_forbidden_label_or_taint_change_is_sent() -> None:
    _, node, heartbeat = world(node_credentials=True)
    existing = {"metadata": {"name": "vk-a", "resourceVersion": "5", "labels": {}},
                "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]}}
    heartbeat.answer("GET", "/api/v1/nodes/vk-a", existing)
    await node.ensure_registered()
    (_, body), = heartbeat.of("PATCH")
    assert "spec" not in body  # NodeRestriction: a node may not change its own taints
    assert c.ROLE_LABEL not in body["metadata"]["labels"] and c.MANAGED_BY_LABEL not in body["metadata"]["labels"]


async def test_registration_keeps_other_taints_and_adds_tensiles() -> None:
    _, node, heartbeat = world()
    other = {"key": "dedicated", "value": "x", "effect": "NoSchedule"}
    heartbeat.answer("GET", "/api/v1/nodes/vk-a", {"metadata": {"name": "vk-a", "resourceVersion": "5"},
                                                   "spec": {"taints": [other]}})
    await node.ensure_registered()
    (_, body), = heartbeat.of("PATCH")
    assert body["spec"]["taints"][0] == other and body["spec"]["taints"][1]["key"] == c.PROVIDER_TAINT_KEY
    assert body["metadata"]["resourceVersion"] == "5"


async def test_the_lease_is_created_when_missing_and_renewed_after() -> None:
    _, node, heartbeat = world()
    node.node_uid = "n"
    lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/vk-a"
    heartbeat.answer("PATCH", lease, ApiError(404, "NotFound", "no lease"))
    await node._renew_and_record()
    (_, created), = heartbeat.of("POST")
    assert created["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Node", "name": "vk-a",
                                                         "uid": "n"}
    assert created["spec"]["holderIdentity"] == "vk-a" and node.lease_fresh()
    node.last_renewed = time.monotonic() - 41
    assert not node.lease_fresh()


async def test_an_unreachable_lower_cluster_turns_the_node_not_ready_after_the_grace() -> None:
    ctx, node, _ = world(lower_unreachable_grace=5.0)
    lower = ctx.lower
    assert isinstance(lower, FakeKube)
    lower.answer("GET", "/version", ApiError.connection(ConnectionRefusedError("down"), "GET", "/version"))
    await node.ping_lower()
    assert node.status({})["conditions"][0]["status"] == "True"  # within the grace
    node.last_lower_ok = time.monotonic() - 6
    ready = node.status({})["conditions"][0]
    assert ready["status"] == "False" and ready["reason"] == "LowerClusterUnreachable"
    lower.answer("GET", "/version", {"gitVersion": "v1.34.4"})
    await node.ping_lower()
    assert node.status({})["conditions"][0]["status"] == "True" and node.kubelet_version == "v1.34.4"


async def test_only_pods_tensile_did_not_create_change_the_status_and_it_follows_them() -> None:
    ctx, node, _ = world()
    lower_node = {"metadata": {"name": "n1"}, "spec": {},
                  "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                             "conditions": [{"type": "Ready", "status": "True"}]}}
    ctx.lower_nodes.store["n1"] = lower_node

    def lower_pod(name: str, labels: dict[str, str]) -> JSON:
        return {"metadata": {"name": name, "namespace": "ns", "labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
                "status": {"phase": "Running"}}

    node._dirty.clear()
    ctx.lower_pods._notify(None, lower_pod("copy", ctx.owner.labels))
    assert not node._dirty.is_set()
    ctx.lower_pods_others[0]._notify(None, capacity.shrink_pod(lower_pod("theirs", {})))
    assert node._dirty.is_set()
    _, alloc = node._capacity()
    assert alloc["cpu"] == "3"  # the copy is the upper scheduler's to count, not the allocatable's
