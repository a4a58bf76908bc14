"""Crashes and outages: the virtual node converges and tells the truth."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.convergence import convergence_problems, wait_converged
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import create_namespace, node_condition, pod_manifest, unique, wait_pod_running
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

VK = "vk-lower"


def owned_lower_pods(lower: LocalCluster, ns: str) -> list[k8s.V1Pod]:
    return list(lower.core.list_namespaced_pod(ns, label_selector=f"{c.OWNER_NODE_LABEL}={VK}").items)


def test_kill_9_mid_sync_and_restart_converges_to_one_copy_per_pod(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    vn = make_virtual_node(upper, lower, VK)
    ns = unique("crash")
    create_namespace(upper, ns)
    count = 150
    # Queue up work: stop the node (its Node stays Ready for the lease duration),
    # bind many pods to it, then start it and kill it as soon as copying begins.
    vn.stop()
    for i in range(count):
        upper.core.create_namespaced_pod(ns, pod_manifest(f"p{i}", labels={"batch": "1"}))
    wait_for(lambda: all(p.spec.node_name == VK for p in upper.core.list_namespaced_pod(ns).items), 60,
             what="all pods bound to the virtual node")
    vn.start()
    wait_for(lambda: len(owned_lower_pods(lower, ns)) >= 1, 60, interval=0.02, what="sync under way")
    vn.kill()
    mid = len(owned_lower_pods(lower, ns))
    # While it is down: some upper pods are force-deleted (their copies become orphans),
    # and someone runs an unrelated pod downstairs that must never be touched.
    for i in range(5):
        upper.core.delete_namespaced_pod(f"p{i}", ns, grace_period_seconds=0)
    lower.core.create_namespaced_pod(ns, {"metadata": {"name": "not-ours"},
                                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    vn.start()

    def converged() -> bool:
        up = {p.metadata.name: p for p in upper.core.list_namespaced_pod(ns, label_selector="batch=1").items}
        low = owned_lower_pods(lower, ns)
        running = [p for p in up.values() if p.status.phase == "Running"]
        return (len(up) == count - 5 and len(running) == count - 5 and len(low) == count - 5
                and {p.metadata.name for p in low} == set(up)
                and all(p.metadata.annotations[c.UPPER_UID_ANNOTATION] == up[p.metadata.name].metadata.uid
                        for p in low))

    wait_for(converged, 120, what="one lower copy per upper pod after restart")
    assert 0 < mid < count, f"kill landed after the sync finished ({mid} copies); the test proves nothing"
    time.sleep(3)  # and it stays converged: no duplicate creations trickle in
    assert converged()
    foreign = lower.core.read_namespaced_pod("not-ours", ns)
    assert foreign.metadata.deletion_timestamp is None and not foreign.metadata.labels


@dataclasses.dataclass(frozen=True)
class Outage:
    seconds: float
    pods: int


@pytest.mark.parametrize("outage", [
    pytest.param(Outage(seconds=20, pods=10), id="short"),
    pytest.param(Outage(seconds=120, pods=30), id="long", marks=pytest.mark.long),
])
def test_lower_apiserver_outage_keeps_every_pod_and_memory_flat_then_catches_up(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess], outage: Outage
) -> None:
    """The lower apiserver stops for a while (two minutes in the long size), with pods running.

    Meanwhile: the node turns NotReady with a reason, no upper pod is failed, evicted or deleted, the
    process stays alive and healthy and its memory and task count stay flat. Pods created and deleted
    upstairs meanwhile wait. Once the apiserver is back: Ready again, every earlier lower copy is the
    same object (nothing was deleted downstairs), and the queued work is done, without a restart.
    """
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    vn = make_virtual_node(upper, lower, VK, extra_args=["--lower-unreachable-grace=5", "--dependency-gc-delay=1"])
    wait_for(lambda: (cond := node_condition(upper, VK)) and cond.status == "True", 30, what="node Ready")
    ns = unique("outage")
    create_namespace(upper, ns)
    names = [f"p{i}" for i in range(outage.pods)]
    for name in names:
        upper.core.create_namespaced_pod(ns, pod_manifest(name))
    for name in names:
        wait_pod_running(upper, ns, name, timeout=120)
    before = {str(p.metadata.name): str(p.metadata.uid) for p in owned_lower_pods(lower, ns)}
    assert sorted(before) == sorted(names)

    assert vn.proc is not None
    pid = vn.proc.pid

    lower.stop_apiserver()
    stopped = time.monotonic()
    cond = wait_for(lambda: (cd := node_condition(upper, VK)) and cd.status == "False" and cd, 60,
                    what="node NotReady after the lower apiserver stopped")
    assert cond.reason == "LowerClusterUnreachable"
    assert "unreachable" in cond.message
    # Work that arrives during the outage: two pods go, two new ones come.
    gone, added = names[:2], [f"new{i}" for i in range(2)]
    for name in gone:
        upper.core.delete_namespaced_pod(name, ns)
    for name in added:
        upper.core.create_namespaced_pod(ns, pod_manifest(name))
    first = (vn.rss_kib(), vn.metrics().total("tensile_asyncio_tasks"))
    rss, tasks = [first[0]], [first[1]]
    while time.monotonic() - stopped < outage.seconds:
        time.sleep(2)
        assert vn.proc is not None and vn.proc.alive(), vn.log_tail()
        assert vn.healthz() == 200, "an unreachable lower cluster is not a reason to restart the process"
        rss.append(vn.rss_kib())
        tasks.append(vn.metrics().total("tensile_asyncio_tasks"))
        for pod in upper.core.list_namespaced_pod(ns).items:
            if pod.metadata.name in gone:
                continue
            assert pod.metadata.deletion_timestamp is None, f"{pod.metadata.name} is being deleted upstairs"
            assert pod.status.phase in ("Running", "Pending"), f"{pod.metadata.name} turned {pod.status.phase}"
    print(f"outage {time.monotonic() - stopped:.0f}s: RSS {first[0] / 1024:.1f} -> max {max(rss) / 1024:.1f} "
          f"-> {rss[-1] / 1024:.1f} MiB over {len(rss)} samples; asyncio tasks {min(tasks):.0f}..{max(tasks):.0f}")
    growth = (rss[-1] - first[0]) / first[0]
    assert growth <= 0.10, f"RSS grew {growth:+.1%} during the outage: {rss}"
    assert max(tasks) <= first[1] + 5, f"asyncio tasks grew during the outage: {tasks}"
    for name in names[2:]:
        pod = upper.core.read_namespaced_pod(name, ns)
        assert pod.status.phase == "Running" and not pod.metadata.deletion_timestamp, (name, pod.status.phase)

    lower.start_apiserver()
    back = time.monotonic()
    cond = wait_for(lambda: (cd := node_condition(upper, VK)) and cd.status == "True" and cd, 60,
                    what="node Ready after the lower apiserver returned")
    assert cond.reason == "KubeletReady"
    expected = {p.metadata.name: p.metadata.uid for p in upper.core.list_namespaced_pod(ns).items
                if p.metadata.name not in gone}
    caught_up = wait_converged(lambda: convergence_problems(upper, lower, ns, expected, VK), back, 120,
                               "the work queued during the outage done")
    print(f"caught up {caught_up:.1f}s after the lower apiserver returned")
    after = {str(p.metadata.name): str(p.metadata.uid) for p in owned_lower_pods(lower, ns)}
    assert {n: u for n, u in after.items() if n in before} == {n: u for n, u in before.items() if n not in gone}, (
        "a lower copy made before the outage was deleted or replaced")
    assert vn.proc is not None and vn.proc.alive() and vn.proc.pid == pid, "the process was restarted"
    assert "Traceback" not in vn.log_path.read_text()


def test_sigterm_shuts_down_cleanly(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    vn = make_virtual_node(upper, lower, VK)
    ns = unique("term")
    create_namespace(upper, ns)
    for i in range(20):
        upper.core.create_namespaced_pod(ns, pod_manifest(f"p{i}"))
    vn.stop()  # SIGTERM while pods are being copied
    assert vn.proc is not None and vn.proc.returncode == 0
    log = vn.log_path.read_text()
    assert "signal received, shutting down" in log and "virtual node stopped" in log
    assert "Traceback" not in log
