"""A mesh of real control planes: two uppers sharing a lower cluster, node pools, and a ring A -> B -> C -> A.

- Two upper clusters burst into one lower cluster. In ``suffixed`` mode each upper namespace gets
  a lower namespace of its own, so same-named ConfigMaps with different data both run; in ``same``
  mode the second upper's is refused with a Warning Event and the first is not touched.
- One lower cluster is two virtual nodes by pool: copies land only on their pool's nodes, each
  node counts only its pool, and a restart of one pool's process leaves the other's copies alone.
- A ring of three clusters whose virtual nodes carry no taint, with the webhook in each: a pod from
  A goes to B, on to C, and stops there, because C's virtual node leads back to A, which is in the
  pod's origin chain; the scheduler extender in C refuses such a node with the reason.
  ``tensile topology`` reports the ring and draws it.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import _start, _stop
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    events_for,
    get_or_none,
    pod_manifest,
    unique,
    wait_gone,
    wait_pod_running,
)
from e2e.kwok import NodeSpec
from e2e.process import free_port
from e2e.schedulerproc import SchedulerProcess, kube_scheduler_config
from e2e.secretscan import secret_value
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c
from tensile import quantity

pytestmark = pytest.mark.e2e


def _configmap(name: str, data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _reads_config(name: str, labels: dict[str, str], node: str) -> dict[str, object]:
    """A Deployment whose pods read ConfigMap ``app-config`` (a volume and an env var) and Secret ``app-secret``."""
    return deployment_manifest(name, 2, labels, nodeName=node, containers=[{
        "name": "app", "image": "nginx:1.25",
        "env": [{"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "colour"}}}],
        "envFrom": [{"secretRef": {"name": "app-secret"}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]}],
        volumes=[{"name": "cfg", "configMap": {"name": "app-config"}}])


def _service(name: str, selector: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 80}]}}


def _running(cluster: LocalCluster, ns: str, selector: str, count: int) -> list[k8s.V1Pod]:
    def ready() -> list[k8s.V1Pod] | None:
        pods = cluster.core.list_namespaced_pod(ns, label_selector=selector).items
        live = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return live if len(live) == count else None
    result: list[k8s.V1Pod] = wait_for(ready, 90, what=f"{count} Running pods {selector} in {ns}")
    return result


# --- two uppers, one lower -----------------------------------------------------------------------

SharedLower = tuple[LocalCluster, LocalCluster, LocalCluster]


@pytest.fixture(scope="module")
def shared_lower() -> Iterator[SharedLower]:
    started: list[LocalCluster] = []
    try:
        for name, nodes in (("east", [NodeSpec("east-0", cpu="4", memory="8Gi")]),
                            ("west", [NodeSpec("west-0", cpu="4", memory="8Gi")]),
                            ("shared", [NodeSpec("shared-0", cpu="16", memory="64Gi"),
                                        NodeSpec("shared-1", cpu="16", memory="64Gi")])):
            started.append(_start(name, nodes))
        yield started[0], started[1], started[2]
    finally:
        for cluster in reversed(started):
            _stop(cluster)


def test_two_uppers_share_a_lower_cluster_in_suffixed_mode(shared_lower: SharedLower) -> None:
    east, west, lower = shared_lower
    ns = unique("shop")
    # West runs with --flat-network, so its Service is copied without selector, beside its EndpointSlices.
    with VirtualNodeProcess(east, lower, "vk-east-sfx", extra_args=[
            "--namespace-mapping=suffixed", "--upper-cluster-name=east", "--dependency-gc-delay=1"]) as vk_east, \
         VirtualNodeProcess(west, lower, "vk-west-sfx", extra_args=[
            "--namespace-mapping=suffixed", "--upper-cluster-name=west", "--dependency-gc-delay=1",
            "--flat-network"]) as vk_west:
        tokens = {"blue": secret_value("blue"), "green": secret_value("green")}
        for upper, vk, colour in ((east, vk_east, "blue"), (west, vk_west, "green")):
            create_namespace(upper, ns)
            upper.core.create_namespaced_config_map(ns, _configmap("app-config", {"colour": colour}))
            upper.core.create_namespaced_secret(ns, {"metadata": {"name": "app-secret"},
                                                     "stringData": {"TOKEN": tokens[colour]}})
            upper.core.create_namespaced_service(ns, _service("shop", {"app": "shop"}))
            upper.apps.create_namespaced_deployment(ns, _reads_config("shop", {"app": "shop"}, vk.name))
        for upper in (east, west):
            _running(upper, ns, "app=shop", 2)

        # Each upper's objects live in a namespace of its own downstairs, with its own data.
        for suffix, colour in (("east", "blue"), ("west", "green")):
            lower_ns = f"{ns}-{suffix}"
            cm = lower.core.read_namespaced_config_map("app-config", lower_ns)
            assert cm.data == {"colour": colour}
            assert cm.metadata.annotations[c.UPPER_NAMESPACE_ANNOTATION] == ns
            copies = _running(lower, lower_ns, "app=shop", 2)
            assert {p.metadata.annotations[c.UPPER_NAMESPACE_ANNOTATION] for p in copies} == {ns}
            assert lower.core.read_namespace(lower_ns).metadata.annotations[c.UPPER_NAMESPACE_ANNOTATION] == ns
            secret = wait_for(partial(get_or_none, lower.core.read_namespaced_secret, "app-secret", lower_ns), 30,
                              what=f"Secret copy in {lower_ns}")
            assert base64.b64decode(secret.data["TOKEN"]).decode() == tokens[colour]
            svc = wait_for(partial(get_or_none, lower.core.read_namespaced_service, "shop", lower_ns), 30,
                           what=f"Service copy in {lower_ns}")
            assert svc.metadata.annotations[c.UPPER_NAMESPACE_ANNOTATION] == ns
        assert lower.core.read_namespaced_service("shop", f"{ns}-east").spec.selector == {"app": "shop"}
        assert not lower.core.read_namespaced_service("shop", f"{ns}-west").spec.selector

        def west_slices() -> list[k8s.V1EndpointSlice]:
            slices = k8s.DiscoveryV1Api(lower.api()).list_namespaced_endpoint_slice(
                f"{ns}-west", label_selector=f"{c.SERVICE_NAME_LABEL}=shop").items
            return [s for s in slices if s.endpoints]
        slices = wait_for(west_slices, 60, what="west's EndpointSlices copied into its mapped namespace")
        assert all(s.metadata.labels[c.ENDPOINTSLICE_MANAGED_BY_LABEL] == c.ENDPOINTSLICE_MANAGER for s in slices)
        assert get_or_none(lower.core.read_namespaced_config_map, "app-config", ns) is None
        west_before = {p.metadata.uid for p in _running(lower, f"{ns}-west", "app=shop", 2)}

        # Deleting east's workload removes only east's objects downstairs.
        east.apps.delete_namespaced_deployment("shop", ns)
        east.core.delete_namespaced_config_map("app-config", ns)
        wait_for(lambda: not lower.core.list_namespaced_pod(f"{ns}-east").items, 60, what="east copies gone")
        wait_gone(lower.core.read_namespaced_config_map, "app-config", f"{ns}-east", what="east ConfigMap copy gone")
        wait_gone(lower.core.read_namespaced_secret, "app-secret", f"{ns}-east", what="east Secret copy gone")
        wait_gone(lower.core.read_namespaced_service, "shop", f"{ns}-east", what="east Service copy gone")
        time.sleep(3)  # give a wrong deletion time to happen
        assert {p.metadata.uid for p in _running(lower, f"{ns}-west", "app=shop", 2)} == west_before
        assert lower.core.read_namespaced_config_map("app-config", f"{ns}-west").data == {"colour": "green"}
        assert lower.core.read_namespaced_service("shop", f"{ns}-west") and west_slices()
        _running(west, ns, "app=shop", 2)
        # The kubelet API finds the copy in its mapped namespace too.
        pod = west.core.list_namespaced_pod(ns, label_selector="app=shop").items[0]
        west.core.read_namespaced_pod_log(pod.metadata.name, ns, container="app")
        west.apps.delete_namespaced_deployment("shop", ns)


def test_same_mode_refuses_the_second_upper_and_leaves_the_first_alone(shared_lower: SharedLower) -> None:
    east, west, lower = shared_lower
    ns = unique("same")
    with VirtualNodeProcess(east, lower, "vk-east-same") as vk_east, \
         VirtualNodeProcess(west, lower, "vk-west-same") as vk_west:
        create_namespace(east, ns)
        east.core.create_namespaced_config_map(ns, _configmap("app-config", {"colour": "blue"}))
        volumes = [{"name": "cfg", "configMap": {"name": "app-config"}}]
        east.core.create_namespaced_pod(ns, pod_manifest("first", labels={"app": "first"}, node_name=vk_east.name,
                                                         volumes=volumes))
        wait_pod_running(east, ns, "first")
        first = lower.core.read_namespaced_pod("first", ns)

        create_namespace(west, ns)
        west.core.create_namespaced_config_map(ns, _configmap("app-config", {"colour": "green"}))
        west.core.create_namespaced_pod(ns, pod_manifest("second", labels={"app": "second"},
                                                         node_name=vk_west.name, volumes=volumes))

        def refused() -> k8s.CoreV1Event | None:
            return next((e for e in events_for(west, ns, "second")
                         if e.type == "Warning" and e.reason == "DependencyConflict"), None)
        event = wait_for(refused, 60, what="DependencyConflict Warning on the second upper's pod")
        assert "not managed by this virtual node" in event.message
        assert get_or_none(lower.core.read_namespaced_pod, "second", ns) is None
        assert west.core.read_namespaced_pod("second", ns).status.phase == "Pending"
        # The first upper's copy and ConfigMap are untouched.
        cm = lower.core.read_namespaced_config_map("app-config", ns)
        assert cm.data == {"colour": "blue"} and cm.metadata.labels[c.OWNER_NODE_LABEL] == vk_east.name
        now = lower.core.read_namespaced_pod("first", ns)
        assert (now.metadata.uid, now.status.phase) == (first.metadata.uid, "Running")
        assert east.core.read_namespaced_pod("first", ns).status.phase == "Running"
        for upper, name in ((east, "first"), (west, "second")):
            upper.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


# --- node pools ----------------------------------------------------------------------------------

def test_one_lower_cluster_as_two_virtual_nodes_by_pool() -> None:
    upper = _start("pools-upper", [NodeSpec("pu-0", cpu="4", memory="8Gi")])
    try:
        lower = _start("pools-lower", [
            NodeSpec("pa-0", cpu="4", memory="16Gi", labels={"pool": "a"}),
            NodeSpec("pa-1", cpu="4", memory="16Gi", labels={"pool": "a"}),
            NodeSpec("pb-0", cpu="8", memory="32Gi", labels={"pool": "b"}),
            NodeSpec("pb-1", cpu="8", memory="32Gi", labels={"pool": "b"}),
        ])
    except BaseException:
        _stop(upper)
        raise
    try:
        _pools(upper, lower)
    finally:
        _stop(lower)
        _stop(upper)


def _pools(upper: LocalCluster, lower: LocalCluster) -> None:
    with VirtualNodeProcess(upper, lower, "vk-pool-a", extra_args=["--lower-node-selector=pool=a"]) as vk_a, \
         VirtualNodeProcess(upper, lower, "vk-pool-b", extra_args=["--lower-node-selector=pool in (b)"]):
        for vk, cpu, memory in (("vk-pool-a", "8", "32Gi"), ("vk-pool-b", "16", "64Gi")):
            def counted(vk: str = vk, cpu: str = cpu) -> k8s.V1Node | None:
                node: k8s.V1Node = upper.core.read_node(vk)
                return node if node.status.capacity.get("cpu") == cpu else None
            node = wait_for(counted, 60, what=f"{vk} capacity {cpu} CPUs")
            assert quantity.parse(node.status.capacity["memory"]) == quantity.parse(memory)
        ns = unique("pools")
        create_namespace(upper, ns)
        for pool in ("a", "b"):
            upper.apps.create_namespaced_deployment(ns, deployment_manifest(
                f"web-{pool}", 4, {"app": f"web-{pool}"}, nodeName=f"vk-pool-{pool}",
                containers=[{"name": "app", "image": "nginx:1.25",
                             "resources": {"requests": {"cpu": "100m"}}}]))
        for pool in ("a", "b"):
            _running(upper, ns, f"app=web-{pool}", 4)
            copies = _running(lower, ns, f"app=web-{pool}", 4)
            assert {p.spec.node_name for p in copies} <= {f"p{pool}-0", f"p{pool}-1"}
            assert {p.metadata.labels[c.OWNER_NODE_LABEL] for p in copies} == {f"vk-pool-{pool}"}
        b_before = {p.metadata.uid for p in _running(lower, ns, "app=web-b", 4)}
        a_before = {p.metadata.uid for p in _running(lower, ns, "app=web-a", 4)}

        # A crash and restart of pool a's process: pool b's copies are not touched, and a's are adopted.
        vk_a.kill()
        vk_a.start()
        time.sleep(5)
        assert {p.metadata.uid for p in _running(lower, ns, "app=web-b", 4)} == b_before
        assert {p.metadata.uid for p in _running(lower, ns, "app=web-a", 4)} == a_before
        for pool in ("a", "b"):
            upper.apps.delete_namespaced_deployment(f"web-{pool}", ns)
        wait_for(lambda: not lower.core.list_namespaced_pod(ns).items, 60, what="every copy gone")


# --- a ring of three clusters --------------------------------------------------------------------

Ring = tuple[LocalCluster, LocalCluster, LocalCluster]
RELAY = {"key": "ring", "value": "relay", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def ring() -> Iterator[Ring]:
    """A -> B -> C -> A. B's only real node refuses the test pods, so B sends them on to C.

    C's kube-scheduler also calls the scheduler extender.
    """
    started: list[LocalCluster] = []
    procs: list[VirtualNodeProcess | WebhookProcess | SchedulerProcess] = []
    extender_port = free_port()
    try:
        for name, node in (("ring-a", NodeSpec("ra-0", cpu="16", memory="64Gi")),
                           ("ring-b", NodeSpec("rb-0", cpu="8", memory="32Gi", taints=[RELAY]))):
            started.append(_start(name, [node]))
        started.append(_start("ring-c", [NodeSpec("rc-0", cpu="4", memory="16Gi")],
                              scheduler_config=kube_scheduler_config(f"http://127.0.0.1:{extender_port}")))
        a, b, cl = started
        extender = SchedulerProcess(cl, extender_port)
        extender.start()
        procs.append(extender)
        for upper, lower, vk in ((a, b, "vk-ring-b"), (b, cl, "vk-ring-c"), (cl, a, "vk-ring-a")):
            vnode = VirtualNodeProcess(upper, lower, vk, extra_args=["--disable-taint"])
            vnode.start()
            procs.append(vnode)
        for cluster in started:
            webhook = WebhookProcess(cluster)
            webhook.start()
            procs.append(webhook)
        yield a, b, cl
    finally:
        for proc in reversed(procs):
            proc.stop()
        for cluster in reversed(started):
            _stop(cluster)


def _lineage(clusters: Ring, ns: str, name: str) -> list[tuple[str, str]]:
    """(cluster, node) of every pod named ``name`` in ``ns`` across the ring."""
    found = []
    for cluster in clusters:
        pod = get_or_none(cluster.core.read_namespaced_pod, name, ns)
        if pod is not None:
            found.append((cluster.name, pod.spec.node_name or ""))
    return found


def test_a_ring_of_virtual_nodes_runs_a_pod_in_exactly_one_cluster(ring: Ring) -> None:
    a, _, cl = ring
    ns = unique("ring")
    for cluster in ring:
        create_namespace(cluster, ns)
    pod = pod_manifest("hop", labels={c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}, virtual=False,
                       containers=[{"name": "app", "image": "nginx:1.25", "resources": {"requests": {"cpu": "2"}}}])
    began = time.monotonic()
    a.core.create_namespaced_pod(ns, pod)
    wait_pod_running(a, ns, "hop", timeout=120)
    # Kept with the cluster logs: created in A to Running upstairs, through two virtual nodes.
    (a.dir / "ring-latency.txt").write_text(f"{time.monotonic() - began:.2f} s\n")
    # It went A -> B -> C and runs on C's real node; C's virtual node back to A was never a place for it.
    assert _lineage(ring, ns, "hop") == [("ring-a", "vk-ring-b"), ("ring-b", "vk-ring-c"), ("ring-c", "rc-0")]
    in_c = cl.core.read_namespaced_pod("hop", ns)
    chain = in_c.metadata.annotations[c.ORIGIN_CHAIN_ANNOTATION].split(",")
    assert len(chain) == 3 and len(set(chain)) == 3
    terms = in_c.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert any(e.key == c.LOWER_CLUSTER_LABEL and e.operator == "NotIn" and set(e.values) == set(chain)
               for t in terms for e in t.match_expressions or [])
    time.sleep(5)  # a loop would show by now: more pods of this name somewhere
    assert _lineage(ring, ns, "hop") == [("ring-a", "vk-ring-b"), ("ring-b", "vk-ring-c"), ("ring-c", "rc-0")]

    # Deleted in A, gone everywhere.
    a.core.delete_namespaced_pod("hop", ns)
    wait_for(lambda: not _lineage(ring, ns, "hop"), 90, what="every copy of hop gone")


def test_a_copy_bound_into_its_own_chain_is_refused_by_the_virtual_node(ring: Ring) -> None:
    """Whatever placed it there (a nodeName, a scheduler without the webhook): vk-ring-a never copies it to A."""
    a, _, cl = ring
    ns = unique("loop")
    create_namespace(cl, ns)
    a_uid = a.core.read_namespace("kube-system").metadata.uid
    pod = pod_manifest("back", node_name="vk-ring-a", virtual=False)
    pod["metadata"]["annotations"] = {c.ORIGIN_CHAIN_ANNOTATION: f"{a_uid},other"}
    cl.core.create_namespaced_pod(ns, pod)

    def refused() -> k8s.CoreV1Event | None:
        return next((e for e in events_for(cl, ns, "back") if e.reason == "OriginLoop"), None)
    try:
        event = wait_for(refused, 60, what="OriginLoop Warning")
        assert f"leads to cluster {a_uid}" in event.message
        assert get_or_none(a.core.read_namespaced_pod, "back", ns) is None
    finally:
        cl.core.delete_namespaced_pod("back", ns, grace_period_seconds=0)


def test_the_scheduler_extender_refuses_a_virtual_node_into_the_chain_with_the_reason(ring: Ring) -> None:
    """Only vk-ring-a matches the pod's selector, and it leads back into the chain: the extender says so."""
    a, _, cl = ring
    ns = unique("extender")
    create_namespace(cl, ns)
    a_uid = a.core.read_namespace("kube-system").metadata.uid
    pod = pod_manifest("stuck", virtual=False, nodeSelector={c.LOWER_CLUSTER_LABEL: a_uid})
    pod["metadata"]["annotations"] = {c.ORIGIN_CHAIN_ANNOTATION: f"{a_uid},elsewhere"}
    cl.core.create_namespaced_pod(ns, pod)

    def failed() -> str | None:
        messages = [e.message or "" for e in events_for(cl, ns, "stuck") if e.reason == "FailedScheduling"]
        return next((m for m in messages if "origin chain" in m), None)
    try:
        message = wait_for(failed, 60, what="FailedScheduling with the extender's loop reason")
        assert f"virtual node vk-ring-a leads to cluster {a_uid}, which the pod already came through" in message
        assert not cl.core.read_namespaced_pod("stuck", ns).spec.node_name
    finally:
        cl.core.delete_namespaced_pod("stuck", ns, grace_period_seconds=0)


def test_topology_prints_the_ring_and_draws_it(ring: Ring, tmp_path: Path) -> None:
    a = ring[0]
    ns = unique("topo")
    for cluster in ring:
        create_namespace(cluster, ns)
    a.core.create_namespaced_pod(ns, pod_manifest("seen", labels={c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE},
                                                  virtual=False))
    wait_pod_running(a, ns, "seen", timeout=120)
    out = tmp_path / "topology.png"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tensile.cli", "topology", *(f"--kubeconfig={x.kubeconfig}" for x in ring),
         f"--out={out}"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "ring-a -> ring-b -> ring-c -> ring-a" in text, text
    assert "ring-a -> ring-b  via vk-ring-b        Ready     1 pod(s) placed, 1 copy downstairs" in text
    assert "ring-b -> ring-c  via vk-ring-c        Ready     1 pod(s) placed, 1 copy downstairs" in text
    assert "ring-c -> ring-a  via vk-ring-a        Ready     0 pod(s) placed, 0 copies downstairs" in text
    assert "pods from ring-a stop in ring-c: vk-ring-a lead(s) back to ring-a" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digraph tensile" in out.with_suffix(".dot").read_text()
    (a.dir / "topology.txt").write_text(f"{text}\n(took {time.monotonic() - began:.2f} s)\n")  # kept with the logs
    a.core.delete_namespaced_pod("seen", ns)
    bad = subprocess.run([sys.executable, "-m", "tensile.cli", "topology", "--kubeconfig=/nonexistent"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
