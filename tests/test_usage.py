"""Per-node request sums kept from pod events (tensile.usage) equal a full recount after any events.

The property: feed random adds, updates (moved, resized, finished, adopted), deletes (also of pods
never seen), relist-style repeats and resyncs through the handler as the informer would; after every
event, the node's allocatable and the capacity profile from :class:`Usage` are the ones the full
passes over the cache compute.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tensile import capacity, profile
from tensile.translate import Owner
from tensile.usage import Usage

OWNER = Owner("upper-uid", "vk")
NODES = ("a", "b", "c")


def node(name: str, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "2"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, node_name: str | None, cpu: str, memory: str, gpu: int, phase: str, ours: bool) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpu:
        requests["nvidia.com/gpu"] = str(gpu)
    return capacity.shrink_pod({
        "metadata": {"name": name, "namespace": "ns", "labels": OWNER.labels if ours else {}},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"requests": requests}}]},
        "status": {"phase": phase}})


pods = st.builds(
    pod, name=st.sampled_from(["p0", "p1", "p2", "p3", "p4"]), node_name=st.sampled_from([None, *NODES, "gone"]),
    cpu=st.sampled_from(["0", "100m", "1", "1500m"]), memory=st.sampled_from(["0", "1Mi", "1Gi", "1500M"]),
    gpu=st.integers(0, 1), phase=st.sampled_from(["Pending", "Running", "Running", "Succeeded", "Failed"]),
    ours=st.booleans())
events = st.lists(st.tuples(st.sampled_from(["put", "put", "delete", "delete-unseen", "resync"]), pods),
                  min_size=1, max_size=60)


def recount(store: dict[str, dict[str, Any]], usage: Usage) -> None:
    nodes = [node("a"), node("b"), node("c", ready=False)]
    assert capacity.compute_from(nodes, usage.foreign) == capacity.compute(nodes, store.values(), OWNER.owns)
    assert profile.build_from(nodes, usage.units) == profile.build(nodes, store.values())
    active = [p for p in store.values() if p["spec"]["nodeName"] and capacity.pod_is_active(p)]
    assert len(usage) == len(active)


@settings(max_examples=300, deadline=None)
@given(events)
def test_usage_kept_from_events_equals_a_full_recount_after_every_event(
        steps: list[tuple[str, dict[str, Any]]]) -> None:
    usage = Usage(OWNER.owns)
    store: dict[str, dict[str, Any]] = {}
    for action, obj in steps:
        key = f"ns/{obj['metadata']['name']}"
        if action == "put":
            old = store.get(key)
            store[key] = obj
            usage.on_pod(old, obj)
        elif action == "delete":
            old = store.pop(key, None)
            usage.on_pod(old if old is not None else obj, None)
        elif action == "delete-unseen":
            # The informer hands a delete it had not cached the watch's object: nothing to take back.
            if key not in store:
                usage.on_pod(obj, None)
        else:
            for cached in list(store.values()):
                usage.on_pod(cached, cached)
        recount(store, usage)


def test_a_pod_moving_between_caches_is_counted_once_whatever_order_the_watches_deliver_in() -> None:
    usage = Usage(OWNER.owns)
    copies, others = usage.handler("lower-pods"), usage.handler("lower-pods-foreign")
    theirs = pod("p0", "a", "1", "1Gi", 0, "Running", ours=False)
    mine = pod("p0", "a", "1", "1Gi", 0, "Running", ours=True)
    others(None, theirs)
    copies(None, mine)  # relabelled: the copies' watch tells first...
    others(theirs, None)  # ...the other watch's delete comes after
    assert usage.units == {"a": {"cpu": 1000, "memory": 2**30, "pods": 1}} and usage.foreign == {}


def test_a_node_whose_last_pod_left_is_dropped_from_the_sums() -> None:
    usage = Usage(OWNER.owns)
    mine = pod("p0", "a", "1", "1Gi", 0, "Running", ours=True)
    theirs = pod("p1", "a", "1", "1Gi", 0, "Running", ours=False)
    usage.on_pod(None, mine)
    usage.on_pod(None, theirs)
    assert usage.units["a"]["cpu"] == 2000 and usage.foreign["a"]["cpu"] == 1
    usage.on_pod(theirs, None)
    assert "a" not in usage.foreign and usage.units["a"]["cpu"] == 1000
    usage.on_pod(mine, {**mine, "status": {"phase": "Succeeded"}})
    assert usage.units == {} and usage.foreign == {} and len(usage) == 0
