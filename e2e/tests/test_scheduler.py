"""Capacity-aware placement: the upper kube-scheduler with ``tensile scheduler`` as its extender.

Two lower clusters behind two virtual nodes: A has 40 small nodes (1 CPU each), B two big ones
(8 CPU each). A has the larger sum, so kube-scheduler's own scoring prefers A for every pod; only the
extender, reading the ClusterProfiles the virtual nodes publish, knows that a 4-CPU pod fits no node
of A. The upper kube-scheduler is configured with the output of ``tensile scheduler config``, and
the extender runs with the upper kubeconfig only.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import _start, _stop
from e2e.kube_helpers import create_namespace, kubectl, unique, wait_pod_running
from e2e.kwok import NodeSpec
from e2e.process import free_port
from e2e.schedulerproc import SchedulerProcess, kube_scheduler_config
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

SMALL = [NodeSpec(f"a-{i}", cpu="1", memory="4Gi", labels={"pool": "small"}) for i in range(40)]
BIG = [NodeSpec(f"b-{i}", cpu="8", memory="32Gi", labels={"pool": "big"}) for i in range(2)]
# The upper cluster's own node takes no opted-in pod: the webhook pins those to virtual nodes.
UPPER = [NodeSpec("upper-0", cpu="2", memory="4Gi")]


class Placement:
    def __init__(self, upper: LocalCluster, a: LocalCluster, b: LocalCluster, extender: SchedulerProcess,
                 vnodes: dict[str, VirtualNodeProcess]) -> None:
        self.upper, self.a, self.b, self.extender, self.vnodes = upper, a, b, extender, vnodes


@pytest.fixture(scope="module")
def placement() -> Iterator[Placement]:
    port = free_port()
    started: list[Any] = []
    try:
        # kube-scheduler starts before the extender listens; it retries, and ignorable covers the gap.
        upper = _start("sched-upper", UPPER, scheduler_config=kube_scheduler_config(f"http://127.0.0.1:{port}"))
        started.append(upper)
        a = _start("lower-small", SMALL)
        started.append(a)
        b = _start("lower-big", BIG)
        started.append(b)
        extender = SchedulerProcess(upper, port)
        extender.start()
        started.append(extender)
        webhook = WebhookProcess(upper)
        webhook.start()
        started.append(webhook)
        vnodes = {}
        for name, lower in (("vk-a", a), ("vk-b", b)):
            vn = VirtualNodeProcess(upper, lower, name, extra_args=["--profile-interval=500ms", f"--cluster-id={name}"])
            vn.start()
            started.append(vn)
            vnodes[name] = vn
        p = Placement(upper, a, b, extender, vnodes)
        wait_for(lambda: profile(p, "vk-a") and profile(p, "vk-b"), 60, what="both capacity profiles")
        yield p
    finally:
        for part in reversed(started):
            if isinstance(part, LocalCluster):
                _stop(part)
            else:
                part.stop()


def profile(p: Placement, name: str) -> dict[str, Any] | None:
    api = k8s.CustomObjectsApi(p.upper.api())
    try:
        obj: Any = api.get_cluster_custom_object(c.PROFILE_GROUP, c.PROFILE_VERSION, c.PROFILE_PLURAL, name)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(obj)


@pytest.fixture
def ns(placement: Placement) -> str:
    name = unique("sched")
    for cluster in (placement.upper, placement.a, placement.b):
        create_namespace(cluster, name)
    return name


def opted_in(name: str, cpu: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}},
            "spec": {"containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": cpu}}}],
                     "terminationGracePeriodSeconds": 1, **spec}}


def failed_scheduling(p: Placement, ns: str, pod: str) -> str:
    return failed_scheduling_in(p.upper, ns, pod)


def test_profiles_read_with_kubectl_get(placement: Placement) -> None:
    out = kubectl(placement.upper, "get", "clusterprofiles")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert out.split()[:6] == ["NAME", "CLUSTER", "NODES", "GROUPS", "LARGEST-CPU", "LARGEST-MEMORY"]
    assert rows["vk-a"][1:6] == ["vk-a", "40", "1", "1", "4Gi"]
    assert rows["vk-b"][1:6] == ["vk-b", "2", "1", "8", "32Gi"]
    prof = profile(placement, "vk-a")
    assert prof is not None and prof["metadata"]["ownerReferences"][0]["name"] == "vk-a"
    assert len(json.dumps(prof["status"])) < 2048  # 40 nodes, one signature: one frontier point


def test_four_cpu_pod_lands_on_the_cluster_with_big_nodes(placement: Placement, ns: str) -> None:
    p = placement
    # The precondition that makes the test mean something: on summed allocatable alone (kube-scheduler's
    # LeastAllocated and BalancedAllocation), A scores higher for this pod than B.
    alloc = {n: int(p.upper.core.read_node(n).status.allocatable["cpu"]) for n in ("vk-a", "vk-b")}
    assert alloc["vk-a"] - 4 > 0 and (alloc["vk-a"] - 4) / alloc["vk-a"] > (alloc["vk-b"] - 4) / alloc["vk-b"]
    p.upper.core.create_namespaced_pod(ns, opted_in("four", "4"))
    up = wait_pod_running(p.upper, ns, "four", timeout=90)
    assert up.spec.node_name == "vk-b"  # A's 40 CPUs would win on summed allocatable alone
    low = wait_pod_running(p.b, ns, "four", timeout=30)
    assert low.spec.node_name.startswith("b-")


def test_original_node_selector_for_the_small_pool_lands_on_a(placement: Placement, ns: str) -> None:
    p = placement
    p.upper.core.create_namespaced_pod(ns, opted_in("small", "500m", nodeSelector={"pool": "small"}))
    up = wait_pod_running(p.upper, ns, "small", timeout=90)
    assert up.spec.node_name == "vk-a"
    assert "pool" not in (up.spec.node_selector or {})  # the webhook set it aside; the extender restored it
    low = wait_pod_running(p.a, ns, "small", timeout=30)
    assert low.spec.node_name.startswith("a-") and low.spec.node_selector == {"pool": "small"}


def test_pod_that_fits_nowhere_stays_pending_with_the_extenders_reason(placement: Placement, ns: str) -> None:
    p = placement
    p.upper.core.create_namespaced_pod(ns, opted_in("huge", "12"))
    message = wait_for(lambda: failed_scheduling(p, ns, "huge"), 60, what="FailedScheduling event")
    assert "no lower node is big enough: the pod needs 12 CPU, the largest lower node has 8 CPU" in message
    assert "the largest lower node has 1 CPU" in message
    time.sleep(2)
    pod = p.upper.core.read_namespaced_pod("huge", ns)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    samples = p.extender.metrics()
    assert samples.total("tensile_scheduler_verdicts_total", verb="filter", verdict="never") >= 2


def test_garbage_requests_get_a_400_with_a_message(placement: Placement) -> None:
    for body in (b"{not json", b"[]", json.dumps({"Pod": {}}).encode(), b"\x00" * 100):
        request = urllib.request.Request(f"{placement.extender.url}/filter", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        assert err.value.code == 400 and err.value.read()
    assert placement.extender.proc is not None and placement.extender.proc.alive()


def test_extender_holds_no_lower_cluster_credentials(placement: Placement) -> None:
    proc = placement.extender.proc
    assert proc is not None and proc.pid is not None
    argv = open(f"/proc/{proc.pid}/cmdline", "rb").read().split(b"\0")
    environ = open(f"/proc/{proc.pid}/environ", "rb").read().split(b"\0")
    kubeconfigs = [a for a in argv if b"kubeconfig" in a]
    assert kubeconfigs == [f"--kubeconfig={placement.upper.kubeconfig}".encode()]
    lower_dirs = [str(placement.a.dir).encode(), str(placement.b.dir).encode()]
    assert not any(d in item for d in lower_dirs for item in argv + environ)
    assert not any(e.startswith(b"KUBECONFIG=") for e in environ)
    assert os.path.exists(placement.upper.kubeconfig)


def test_extra_capacity_lets_a_pod_the_lower_cluster_must_scale_for_through(placement: Placement, ns: str) -> None:
    p = placement
    gpu = {"nvidia.com/gpu": "1"}
    p.upper.core.create_namespaced_pod(ns, opted_in("gpu-before", "1", containers=[
        {"name": "app", "image": "cuda", "resources": {"requests": {"cpu": "1", **gpu}, "limits": gpu}}]))
    message = wait_for(lambda: failed_scheduling(p, ns, "gpu-before"), 60, what="FailedScheduling event")
    assert "Insufficient nvidia.com/gpu" in message  # no virtual node offers a GPU yet
    # A third virtual node for cluster B, whose autoscaler can add 4-GPU nodes from zero.
    vn = VirtualNodeProcess(p.upper, p.b, "vk-gpu", extra_args=[
        "--profile-interval=500ms", "--cluster-id=vk-gpu", "--extra-capacity=cpu=8,memory=32Gi,nvidia.com/gpu=4"])
    vn.start()
    try:
        wait_for(lambda: profile(p, "vk-gpu"), 30, what="vk-gpu's profile")
        assert p.upper.core.read_node("vk-gpu").status.allocatable["nvidia.com/gpu"] == "4"
        p.upper.core.create_namespaced_pod(ns, opted_in("gpu", "1", containers=[
            {"name": "app", "image": "cuda", "resources": {"requests": {"cpu": "1", **gpu}, "limits": gpu}}]))
        up = wait_for(lambda: p.upper.core.read_namespaced_pod("gpu", ns).spec.node_name, 60, what="gpu pod bound")
        assert up == "vk-gpu"
        # Downstairs it waits for the node the autoscaler would add: Pending, with the lower scheduler's reason.
        low = wait_for(lambda: failed_scheduling_in(p.b, ns, "gpu"), 60, what="the lower copy's FailedScheduling")
        assert "nvidia.com/gpu" in low
    finally:
        vn.stop()
        p.upper.core.delete_node("vk-gpu")


def failed_scheduling_in(cluster: LocalCluster, ns: str, pod: str) -> str:
    events = cluster.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod}").items
    return "\n".join(e.message or "" for e in events if e.reason == "FailedScheduling")


def test_cordoning_the_big_nodes_moves_the_verdict_to_fits_nowhere(placement: Placement, ns: str) -> None:
    p = placement
    cordoned_at = time.monotonic()
    for node in BIG:
        kubectl(p.b, "cordon", node.name)
    try:
        wait_for(lambda: (profile(p, "vk-b") or {}).get("status", {}).get("nodes") == 0, 30,
                 what="vk-b's profile without cordoned nodes")
        print(f"profile reflected the cordon after {time.monotonic() - cordoned_at:.1f}s")
        p.upper.core.create_namespaced_pod(ns, opted_in("after-cordon", "4"))
        message = wait_for(lambda: failed_scheduling(p, ns, "after-cordon"), 60, what="FailedScheduling event")
        assert "no usable lower node" in message and "the largest lower node has 1 CPU" in message
        assert p.upper.core.read_namespaced_pod("after-cordon", ns).spec.node_name is None
    finally:
        for node in BIG:
            kubectl(p.b, "uncordon", node.name)
