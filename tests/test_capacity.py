from fractions import Fraction
from typing import Any

from tensile import capacity
from tensile import conventions as c
from tensile.translate import Owner

OWNER = Owner("upper-uid", "vk")


def node(name: str, cpu: str = "4", mem: str = "8Gi", pods: str = "110", ready: bool = True,
         unschedulable: bool = False, taints: list[dict[str, str]] | None = None, **extra: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64"}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods, **extra},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(node_name: str | None, cpu: str = "1", mem: str = "1Gi", phase: str = "Running", ours: bool = False,
        init: list[dict[str, Any]] | None = None, overhead: dict[str, str] | None = None) -> dict[str, Any]:
    labels = OWNER.labels if ours else {}
    spec: dict[str, Any] = {"nodeName": node_name, "containers": [
        {"name": "a", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}
    if init:
        spec["initContainers"] = init
    if overhead:
        spec["overhead"] = overhead
    return {"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": spec, "status": {"phase": phase}}


def test_capacity_sums_ready_schedulable_nodes_only() -> None:
    cap, alloc = capacity.compute(
        [node("a"), node("b"), node("down", ready=False), node("cordoned", unschedulable=True),
         node("tainted", taints=[{"key": c.UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}])],
        [], OWNER.owns)
    assert cap == {"cpu": 8, "memory": 16 * 2**30, "pods": 220}
    assert alloc == cap


def test_allocatable_subtracts_foreign_pods_but_not_ours_or_finished_or_unscheduled() -> None:
    pods = [pod("a", "1", "1Gi"), pod("a", "2", "2Gi", ours=True), pod("a", "1", "1Gi", phase="Succeeded"),
            pod(None, "1", "1Gi"), pod("down", "1", "1Gi")]
    _, alloc = capacity.compute([node("a"), node("down", ready=False)], pods, OWNER.owns)
    assert alloc == {"cpu": 3, "memory": 7 * 2**30, "pods": 109}


def test_allocatable_is_clamped_at_zero_for_every_resource() -> None:
    pods = [pod("a", "10", "20Gi")]
    _, alloc = capacity.compute([node("a", **{"nvidia.com/gpu": "1"})], pods, OWNER.owns)
    assert alloc["cpu"] == 0 and alloc["memory"] == 0
    assert alloc["nvidia.com/gpu"] == 1
    assert all(v >= 0 for v in alloc.values())


def test_pod_requests_take_max_of_init_and_sum_of_app_containers_plus_overhead() -> None:
    p = pod("a", "1", "1Gi", init=[{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            overhead={"cpu": "250m"})
    req = capacity.pod_requests(p)
    assert req["cpu"] == Fraction(13, 4)  # max(3, 1) + 0.25
    assert req["memory"] == 2**30
    assert req["pods"] == 1


def test_sidecar_init_containers_add_to_app_containers() -> None:
    p = pod("a", "1", "1Gi", init=[
        {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
        {"name": "setup", "resources": {"requests": {"cpu": "1"}}},
    ])
    # app + sidecar = 1.5; setup runs with the sidecar = 1.5; max = 1.5
    assert capacity.pod_requests(p)["cpu"] == Fraction(3, 2)


def test_limits_default_missing_requests() -> None:
    p = {"spec": {"containers": [{"resources": {"limits": {"cpu": "2"}}}]}}
    assert capacity.pod_requests(p)["cpu"] == 2


def test_arch_comes_from_the_lower_nodes() -> None:
    assert capacity.node_labels_majority([node("a"), node("b")], "kubernetes.io/arch", "amd64") == "arm64"
    assert capacity.node_labels_majority([], "kubernetes.io/arch", "amd64") == "amd64"


def test_shrunk_pod_keeps_what_capacity_needs() -> None:
    p = pod("a", "1", "1Gi", ours=True, overhead={"cpu": "1"})
    p["spec"]["containers"][0]["env"] = [{"name": "SECRET", "value": "x"}]
    small = capacity.shrink_pod(p)
    assert capacity.requests_of(small) == capacity.pod_requests(p)
    assert OWNER.owns(small)
    assert "containers" not in small["spec"]
    _, from_full = capacity.compute([node("a")], [p], lambda _: False)
    _, from_small = capacity.compute([node("a")], [small], lambda _: False)
    assert from_full == from_small
