"""Crashes and outages: the virtual node converges and tells the truth."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import create_namespace, node_condition, pod_manifest, unique
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


def test_lower_apiserver_outage_turns_node_not_ready_then_ready(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    make_virtual_node(upper, lower, VK, extra_args=["--lower-unreachable-grace=5"])
    wait_for(lambda: (cond := node_condition(upper, VK)) and cond.status == "True", 30, what="node Ready")
    lower.stop_apiserver()
    cond = wait_for(lambda: (cd := node_condition(upper, VK)) and cd.status == "False" and cd, 60,
                    what="node NotReady after the lower apiserver stopped")
    assert cond.reason == "LowerClusterUnreachable"
    assert "unreachable" in cond.message
    lower.start_apiserver()
    cond = wait_for(lambda: (cd := node_condition(upper, VK)) and cd.status == "True" and cd, 60,
                    what="node Ready after the lower apiserver returned")
    assert cond.reason == "KubeletReady"


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
