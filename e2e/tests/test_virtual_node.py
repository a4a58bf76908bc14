"""The virtual node between a real upper and lower cluster (issue: virtual node)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    events_for,
    get_or_none,
    lower_ip_of,
    pod_manifest,
    unique,
    wait_event,
    wait_gone,
    wait_pod_running,
)
from e2e.kwok import NodeSpec
from e2e.secretscan import secret_value
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c
from tensile import quantity

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"


@pytest.fixture
def ns(federation: Fed) -> Iterator[str]:
    upper, _, _ = federation
    name = unique("t")
    create_namespace(upper, name)
    yield name


def vk_status(upper: LocalCluster) -> Any:
    return upper.core.read_node(VK).status


def lower_sum(lower: LocalCluster, resource: str) -> Fraction:
    total = Fraction(0)
    for n in lower.core.list_node().items:
        if not n.spec.unschedulable:
            total += quantity.parse(n.status.allocatable[resource])
    return total


def test_node_registers_with_labels_taint_and_lower_capacity(federation: Fed) -> None:
    upper, lower, _ = federation
    # A new Node carries node.kubernetes.io/not-ready (TaintNodesByCondition) until the
    # controller-manager sees it Ready; then only tensile's taint remains.
    node = wait_for(lambda: (n := upper.core.read_node(VK)) and [t.key for t in n.spec.taints or []] == [
        c.PROVIDER_TAINT_KEY] and n, 60, what="virtual node with only tensile's taint")
    labels = node.metadata.labels
    assert labels[c.VIRTUAL_NODE_TYPE_LABEL] == c.VIRTUAL_NODE_TYPE_VALUE
    assert labels[c.ROLE_LABEL] == c.ROLE_VALUE
    assert labels[c.HOSTNAME_LABEL] == VK
    assert labels[c.OS_LABEL] == "linux" and labels[c.ARCH_LABEL] == "amd64"
    lower_ns = lower.core.read_namespace("kube-system")
    assert labels[c.CLUSTER_ID_LABEL] == lower_ns.metadata.uid
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        (c.PROVIDER_TAINT_KEY, c.PROVIDER_TAINT_VALUE, c.PROVIDER_TAINT_EFFECT)]
    assert quantity.parse(node.status.capacity["cpu"]) == lower_sum(lower, "cpu") == 16
    assert quantity.parse(node.status.capacity["memory"]) == lower_sum(lower, "memory")
    assert quantity.parse(node.status.capacity["pods"]) == 220
    assert node.status.node_info.kubelet_version.startswith("v1.")
    assert node.status.daemon_endpoints.kubelet_endpoint.port > 0
    assert any(cond.type == "Ready" and cond.status == "True" for cond in node.status.conditions)
    lease = k8s.CoordinationV1Api(upper.api()).read_namespaced_lease(VK, c.NODE_LEASE_NAMESPACE)
    assert lease.spec.holder_identity == VK and lease.spec.renew_time is not None


def test_capacity_follows_lower_nodes_and_foreign_pods(federation: Fed) -> None:
    upper, lower, _ = federation

    def cpu(field: str) -> Fraction:
        return quantity.parse(getattr(vk_status(upper), field)["cpu"])

    before = cpu("capacity")
    lower.add_node(NodeSpec("lower-extra", cpu="6", memory="8Gi"))
    wait_for(lambda: cpu("capacity") == before + 6, 30, what="capacity to grow by the new node")
    # A pod tensile did not create uses lower capacity: allocatable shrinks.
    alloc = cpu("allocatable")
    lower.core.create_namespaced_pod("default", {
        "metadata": {"name": "foreign-hog"},
        "spec": {"nodeName": "lower-extra", "containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": "2"}}}]}})
    wait_for(lambda: cpu("allocatable") == alloc - 2, 30, what="allocatable to drop by the foreign pod")
    lower.core.delete_namespaced_pod("foreign-hog", "default", grace_period_seconds=0)
    wait_for(lambda: cpu("allocatable") == alloc, 30, what="allocatable back after the foreign pod ends")
    # Copies of another virtual node count too: of this upper cluster (a second node pool), and of
    # another upper cluster whose virtual node has the same name (a mesh). Each is in a different
    # watch of the virtual node than its own copies.
    upper_id = upper.core.read_namespace("kube-system").metadata.uid
    for name, owner_cluster, owner_node in (("sibling", upper_id, "vk-other"), ("namesake", "other-upper", VK)):
        lower.core.create_namespaced_pod("default", {
            "metadata": {"name": name, "labels": {
                c.OWNER_CLUSTER_LABEL: owner_cluster, c.OWNER_NODE_LABEL: owner_node}},
            "spec": {"nodeName": "lower-extra", "containers": [
                {"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}})
    wait_for(lambda: cpu("allocatable") == alloc - 2, 30, what="allocatable to drop by both other nodes' copies")
    for name in ("sibling", "namesake"):
        lower.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    wait_for(lambda: cpu("allocatable") == alloc, 30, what="allocatable back after the other copies end")
    # Cordoning removes the node from capacity; deleting it too.
    lower.core.patch_node("lower-extra", {"spec": {"unschedulable": True}})
    wait_for(lambda: cpu("capacity") == before, 30, what="capacity to drop after cordon")
    lower.core.delete_node("lower-extra")


def test_pod_with_all_dependency_kinds_runs_in_lower_cluster(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    core = upper.core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "app-config"}, "data": {"mode": "blue"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "proj-config"}, "data": {"x": "1"}})
    password = secret_value("password")
    core.create_namespaced_secret(ns, {"metadata": {"name": "app-secret"},
                                       "data": {"password": base64.b64encode(password.encode()).decode()}})
    # Storage: a PV in each cluster, as the admins of each would provide.
    for cl, pv in ((upper, unique("pv-up")), (lower, unique("pv-low"))):
        cl.core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": ns,
            "hostPath": {"path": f"/tmp/{pv}"}}})
    core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": ns, "resources": {"requests": {"storage": "1Gi"}}}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "robot"}})
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    core.create_namespaced_pod(ns, pod_manifest(
        "web-0", labels={"app": "web"}, serviceAccountName="robot",
        containers=[{"name": "app", "image": "nginx:1.25",
                     "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret",
                                                                                  "key": "password"}}}],
                     "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "proj", "mountPath": "/p"},
                                      {"name": "data", "mountPath": "/data"}]}],
        volumes=[{"name": "cfg", "configMap": {"name": "app-config"}},
                 {"name": "proj", "projected": {"sources": [{"configMap": {"name": "proj-config"}}]}},
                 {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    ))
    low_pod = wait_pod_running(lower, ns, "web-0", timeout=90)
    up_pod = wait_pod_running(upper, ns, "web-0", timeout=30)
    assert up_pod.spec.node_name == VK
    # Without a flat network the lower IP is unreachable upstairs: kept out of status.podIP, so no
    # upper Service sends traffic to it, and recorded in an annotation for people.
    assert up_pod.status.pod_ip is None
    assert lower_ip_of(up_pod) == low_pod.status.pod_ip
    assert up_pod.status.host_ip == "127.0.0.1"
    assert low_pod.spec.node_name in ("lower-a", "lower-b")
    assert low_pod.metadata.labels[c.VIRTUAL_POD_LABEL] == c.VIRTUAL_POD_VALUE
    assert low_pod.metadata.annotations[c.UPPER_UID_ANNOTATION] == up_pod.metadata.uid
    assert lower.core.read_namespaced_config_map("app-config", ns).data == {"mode": "blue"}
    assert lower.core.read_namespaced_config_map("proj-config", ns).data == {"x": "1"}
    assert base64.b64decode(lower.core.read_namespaced_secret("app-secret", ns).data["password"]) == password.encode()
    assert lower.core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound"
    # The lower copy runs as the lower cluster's own same-name ServiceAccount, with a lower token.
    assert low_pod.spec.service_account_name == "robot"
    assert lower.core.read_namespaced_service_account("robot", ns).metadata.labels[c.OWNER_NODE_LABEL] == VK
    upper_tokens = {v.name for v in up_pod.spec.volumes if v.name.startswith(c.SERVICE_ACCOUNT_TOKEN_PREFIX)}
    assert upper_tokens and not upper_tokens & {v.name for v in low_pod.spec.volumes}
    svc = lower.core.read_namespaced_service("web", ns)
    assert svc.spec.selector == {"app": "web"}
    # The lower cluster's own endpoint controller routes the Service to the lower pod.
    disc = k8s.DiscoveryV1Api(lower.api())

    def endpoint_ips() -> set[str]:
        slices = disc.list_namespaced_endpoint_slice(ns, label_selector="kubernetes.io/service-name=web").items
        return {a for s in slices for e in (s.endpoints or []) for a in e.addresses}

    wait_for(lambda: endpoint_ips() == {low_pod.status.pod_ip}, 30, what="lower EndpointSlice with the pod IP")
    assert wait_event(upper, ns, "web-0", "ProviderCreateSuccess")

    # An update of the upper ConfigMap reaches the lower copy.
    core.patch_namespaced_config_map("app-config", ns, {"data": {"mode": "green"}})
    wait_for(lambda: lower.core.read_namespaced_config_map("app-config", ns).data == {"mode": "green"}, 20,
             what="ConfigMap update in the lower copy")

    # Deleting the upper pod removes the lower pod, then every unreferenced copy.
    core.delete_namespaced_pod("web-0", ns)
    wait_gone(lower.core.read_namespaced_pod, "web-0", ns, what="lower pod deleted")
    wait_gone(core.read_namespaced_pod, "web-0", ns, what="upper pod removed after the lower one")
    for fn, name in ((lower.core.read_namespaced_config_map, "app-config"),
                     (lower.core.read_namespaced_config_map, "proj-config"),
                     (lower.core.read_namespaced_secret, "app-secret"),
                     (lower.core.read_namespaced_service_account, "robot"),
                     (lower.core.read_namespaced_service, "web")):
        wait_gone(fn, name, ns, timeout=60, what=f"unreferenced lower copy {name} deleted")
    # The claim copy holds data: it lives as long as the upper claim, not as long as its pods.
    assert lower.core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound"
    core.delete_namespaced_persistent_volume_claim("data", ns)
    wait_gone(lower.core.read_namespaced_persistent_volume_claim, "data", ns, timeout=60,
              what="claim copy deleted with the upper claim")


def test_pod_updates_reach_the_lower_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest("upd", labels={"v": "1"}))
    wait_pod_running(lower, ns, "upd")
    upper.core.patch_namespaced_pod("upd", ns, {
        "metadata": {"labels": {"v": "2"}, "annotations": {"note": "x"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}], "activeDeadlineSeconds": 3600}})

    def updated() -> bool:
        p = lower.core.read_namespaced_pod("upd", ns)
        return bool(p.metadata.labels.get("v") == "2" and p.metadata.annotations.get("note") == "x"
                    and p.spec.containers[0].image == "nginx:1.27" and p.spec.active_deadline_seconds == 3600)

    wait_for(updated, 30, what="labels, annotations, image and deadline on the lower copy")
    assert lower.core.read_namespaced_pod("upd", ns).metadata.labels[c.OWNER_NODE_LABEL] == VK


def test_missing_dependency_holds_pod_until_it_appears(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest(
        "needs-cm", volumes=[{"name": "v", "configMap": {"name": "late"}},
                             {"name": "o", "configMap": {"name": "never", "optional": True}}],
        containers=[{"name": "app", "image": "nginx", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]))
    # As virtual-kubelet names it, and once, not every retry.
    event = wait_event(upper, ns, "needs-cm", "MandatoryConfigMapNotFound")
    assert event.message == 'configmap "late" not found' and event.type == "Warning"
    # As a kubelet shows it: the container waits with CreateContainerConfigError.
    def waiting() -> Any:
        st = upper.core.read_namespaced_pod("needs-cm", ns).status
        cs = st.container_statuses or []
        return cs and cs[0].state.waiting and cs[0].state.waiting.reason == "CreateContainerConfigError" and cs[0]
    status = wait_for(waiting, 30, what="container waiting with CreateContainerConfigError")
    assert status.state.waiting.message == 'configmap "late" not found'
    optional = wait_event(upper, ns, "needs-cm", "OptionalConfigMapNotFound")
    assert "never" in optional.message
    time.sleep(12)  # more than two rechecks of the held pod
    held = [e for e in events_for(upper, ns, "needs-cm") if e.reason == "MandatoryConfigMapNotFound"]
    assert len(held) == 1 and (held[0].count or 1) == 1
    assert get_or_none(lower.core.read_namespaced_pod, "needs-cm", ns) is None
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "late"}, "data": {"a": "b"}})
    wait_pod_running(lower, ns, "needs-cm", timeout=60)
    assert get_or_none(lower.core.read_namespaced_config_map, "never", ns) is None


def test_lower_pod_deleted_out_of_band_gets_replaced_by_its_deployment(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.apps.create_namespaced_deployment(ns, deployment_manifest("oob", 1, {"app": "oob"}))
    first = wait_for(lambda: [p for p in upper.core.list_namespaced_pod(ns, label_selector="app=oob").items
                              if p.status.phase == "Running"], 60, what="deployment pod running")[0]
    name = first.metadata.name
    wait_pod_running(lower, ns, name)
    lower.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)

    def replaced() -> list[k8s.V1Pod]:
        pods = upper.core.list_namespaced_pod(ns, label_selector="app=oob").items
        return [p for p in pods if p.metadata.name != name and p.status.phase == "Running"]

    new = wait_for(replaced, 90, what="a replacement pod running upstairs")[0]
    wait_pod_running(lower, ns, new.metadata.name)
    old = get_or_none(upper.core.read_namespaced_pod, name, ns)
    assert old is None or old.status.phase == "Failed"
    assert any(e.reason == "LowerPodDeleted" for e in events_for(upper, ns, name))


def test_name_collisions_with_unowned_lower_objects_are_refused_and_reported(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    lower.core.create_namespace({"metadata": {"name": ns}})
    lower.core.create_namespaced_config_map(ns, {"metadata": {"name": "clash"}, "data": {"owner": "someone"}})
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "clash"}, "data": {"owner": "tensile"}})
    upper.core.create_namespaced_pod(ns, pod_manifest(
        "uses-clash", volumes=[{"name": "v", "configMap": {"name": "clash"}}]))
    event = wait_event(upper, ns, "uses-clash", "DependencyConflict")
    assert "clash" in event.message and "not managed" in event.message
    # A pod of the same name that someone else runs downstairs.
    wait_for(lambda: lower.core.read_namespaced_service_account("default", ns), 30, what="lower default SA")
    lower.core.create_namespaced_pod(ns, {"metadata": {"name": "taken", "labels": {"who": "else"}},
                                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    upper.core.create_namespaced_pod(ns, pod_manifest("taken"))
    event = wait_event(upper, ns, "taken", "NameConflict")
    assert "not managed" in event.message
    assert lower.core.read_namespaced_config_map("clash", ns).data == {"owner": "someone"}
    assert get_or_none(lower.core.read_namespaced_pod, "uses-clash", ns) is None
    foreign = lower.core.read_namespaced_pod("taken", ns)
    assert foreign.metadata.labels == {"who": "else"} and foreign.metadata.deletion_timestamp is None
    # The upper pod whose name is held downstairs can still be deleted, and the foreign pod stays.
    upper.core.delete_namespaced_pod("taken", ns)
    wait_gone(upper.core.read_namespaced_pod, "taken", ns, timeout=30, what="held upper pod deleted")
    foreign = lower.core.read_namespaced_pod("taken", ns)
    assert foreign.metadata.labels == {"who": "else"} and foreign.metadata.deletion_timestamp is None


def test_deleted_node_is_registered_again(federation: Fed) -> None:
    upper, _, _ = federation
    old_uid = upper.core.read_node(VK).metadata.uid
    upper.core.delete_node(VK)
    new = wait_for(lambda: (n := get_or_none(upper.core.read_node, VK)) is not None and n.metadata.uid != old_uid
                   and n, 30, what="virtual node re-registered")
    wait_for(lambda: any(cond.type == "Ready" and cond.status == "True"
                         for cond in (upper.core.read_node(VK).status.conditions or [])), 30,
             what="re-registered node Ready")
    assert new.metadata.labels[c.VIRTUAL_NODE_TYPE_LABEL] == c.VIRTUAL_NODE_TYPE_VALUE
