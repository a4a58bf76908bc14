"""The descheduler on three real control planes: upper, lower A (whose nodes refuse every pod), lower B.

A pod bound to vk-a stays Pending in A (its nodes carry a NoSchedule taint the copy does not
tolerate); vk-a shows it upstairs as ContainersReady=False, reason Unschedulable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.deschedulerproc import DeschedulerProcess
from e2e.fixtures import _start, _stop
from e2e.kube_helpers import create_namespace, deployment_manifest, events_for, pod_manifest, unique
from e2e.kwok import NodeSpec
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Mesh = tuple[LocalCluster, LocalCluster, LocalCluster]
FULL = {"key": "full", "value": "yes", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    upper = _start("upper", [NodeSpec("upper-0", cpu="4", memory="8Gi")])
    started = [upper]
    vnodes: list[VirtualNodeProcess] = []
    try:
        lower_a = _start("lower-a", [NodeSpec("a-0", cpu="16", memory="64Gi", taints=[FULL])])
        started.append(lower_a)
        lower_b = _start("lower-b", [NodeSpec("b-0", cpu="16", memory="64Gi")])
        started.append(lower_b)
        for lower, name in ((lower_a, "vk-a"), (lower_b, "vk-b")):
            vn = VirtualNodeProcess(upper, lower, name)
            vn.start()
            vnodes.append(vn)
        yield upper, lower_a, lower_b
    finally:
        for vn in vnodes:
            vn.stop()
        for cluster in reversed(started):
            _stop(cluster)


def _stuck_upstairs(upper: LocalCluster, ns: str, name: str) -> bool:
    pod = upper.core.read_namespaced_pod(name, ns)
    return any(cond.type == "ContainersReady" and cond.reason == "Unschedulable"
               for cond in pod.status.conditions or [])


def _logs(*procs: DeschedulerProcess) -> list[str]:
    return [p.log_path.read_text() if p.log_path.exists() else "" for p in procs]


def test_a_bare_pod_is_recreated_on_another_virtual_node_by_one_of_two_replicas(mesh: Mesh) -> None:
    upper, _, lower_b = mesh
    ns = unique("bare")
    create_namespace(upper, ns)
    body = pod_manifest("lonely", node_name="vk-a", labels={"app": "lonely", "team": "a"})
    body["metadata"]["annotations"] = {"owner": "team-a"}
    body["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "batch"}]
    upper.core.create_namespaced_pod(ns, body)
    old_uid = upper.core.read_namespaced_pod("lonely", ns).metadata.uid
    wait_for(lambda: _stuck_upstairs(upper, ns, "lonely"), 60, what="the pod refused in lower cluster A")
    replicas = [DeschedulerProcess(upper, f"descheduler-{i}") for i in range(2)]
    try:
        for d in replicas:
            d.start()
        new = wait_for(lambda: (p := upper.core.read_namespaced_pod("lonely", ns)).metadata.uid != old_uid
                       and p.spec.node_name and p, 90, what="the pod recreated and placed")
        assert new.spec.node_name == "vk-b"
        assert new.metadata.labels == {"app": "lonely", "team": "a"}
        assert new.metadata.annotations["owner"] == "team-a"
        assert new.metadata.annotations[c.PREFIX + "rescheduled-from"] == "vk-a"
        assert new.spec.containers[0].env[0].value == "batch"
        wait_for(lambda: lower_b.core.read_namespaced_pod("lonely", ns).status.phase == "Running", 60,
                 what="running in lower cluster B")
        assert sum(log.count(f"recreated {ns}/lonely ") for log in _logs(*replicas)) == 1  # one acted, once
        lease = k8s.CoordinationV1Api(upper.api()).read_namespaced_lease("tensile-descheduler", "kube-system")
        assert lease.spec.holder_identity
        assert [cm.metadata.name for cm in upper.core.list_namespaced_config_map(ns).items
                if cm.metadata.name.startswith("tensile-backup-")] == []  # the backup went after the create
    finally:
        for d in replicas:
            d.stop()


def test_a_deployments_pod_is_evicted_and_its_replacement_avoids_the_node(mesh: Mesh) -> None:
    """With the webhook reading the avoidance records, the ReplicaSet's replacement lands on vk-b."""
    upper, _, lower_b = mesh
    ns = unique("move")
    create_namespace(upper, ns)
    labels = {"app": "shop", c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}
    apps = k8s.AppsV1Api(upper.api())
    with WebhookProcess(upper, extra_args=["--avoidance-records", f"--kubeconfig={upper.kubeconfig}"]):
        # vk-b cordoned while the first pod is placed: it goes to vk-a, which cannot start it.
        upper.core.patch_node("vk-b", {"spec": {"unschedulable": True}})
        try:
            dep = deployment_manifest("shop", 1, labels)
            for key in ("tolerations", "nodeSelector"):  # the webhook adds what a virtual node needs
                dep["spec"]["template"]["spec"].pop(key, None)
            apps.create_namespaced_deployment(ns, dep)
            first = wait_for(lambda: next((p for p in upper.core.list_namespaced_pod(ns).items if p.spec.node_name),
                                          None), 60, what="the first pod placed")
            assert first.spec.node_name == "vk-a"
            wait_for(lambda: _stuck_upstairs(upper, ns, first.metadata.name), 60, what="refused in lower cluster A")
        finally:
            upper.core.patch_node("vk-b", {"spec": {"unschedulable": False}})
        with DeschedulerProcess(upper, "descheduler-move") as d:
            replacement = wait_for(lambda: next((p for p in upper.core.list_namespaced_pod(ns).items
                                                 if p.metadata.uid != first.metadata.uid and p.spec.node_name), None),
                                   90, what="the replacement placed")
            assert replacement.spec.node_name == "vk-b"
            terms = replacement.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
            assert any(e.key == c.HOSTNAME_LABEL and e.operator == "NotIn" and e.values == ["vk-a"]
                       for t in terms.node_selector_terms for e in t.match_expressions or [])
            wait_for(lambda: lower_b.core.read_namespaced_pod(replacement.metadata.name, ns).status.phase == "Running",
                     60, what="the replacement running in lower cluster B")
            owner = replacement.metadata.owner_references[0].uid
            record = upper.core.read_namespaced_config_map(f"tensile-avoid-{owner}", ns)
            assert "vk-a" in record.data["avoid"]
            reasons = {e.reason for e in events_for(upper, ns, first.metadata.name)}
            assert "Rescheduled" in reasons
            assert d.metrics().total("tensile_descheduler_pods_evicted_total", result="evicted") == 1


def test_a_pdb_with_max_unavailable_zero_blocks_the_eviction(mesh: Mesh) -> None:
    upper, _, _ = mesh
    ns = unique("pdb")
    create_namespace(upper, ns)
    k8s.AppsV1Api(upper.api()).create_namespaced_deployment(
        ns, deployment_manifest("web", 1, {"app": "web"}, nodeName="vk-a"))
    k8s.PolicyV1Api(upper.api()).create_namespaced_pod_disruption_budget(ns, {
        "metadata": {"name": "web"}, "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}}})
    pod = wait_for(lambda: next(iter(upper.core.list_namespaced_pod(ns).items), None), 60, what="the pod")
    name, uid = pod.metadata.name, pod.metadata.uid
    wait_for(lambda: _stuck_upstairs(upper, ns, name), 60, what="the pod refused in lower cluster A")
    with DeschedulerProcess(upper, "descheduler-pdb") as d:
        event = wait_for(lambda: next((e for e in events_for(upper, ns, name) if e.reason == "EvictionBlocked"),
                                      None), 60, what="the EvictionBlocked Event")
        assert "PodDisruptionBudget web allows no disruption" in event.message
        passes = d.metrics().total("tensile_descheduler_pass_duration_seconds_count")
        wait_for(lambda: d.metrics().total("tensile_descheduler_pass_duration_seconds_count") >= passes + 3, 30,
                 what="three more passes")
        assert upper.core.read_namespaced_pod(name, ns).metadata.uid == uid  # it stays
        assert d.metrics().total("tensile_descheduler_pods_evicted_total", result="blocked") >= 1
        assert d.metrics().total("tensile_descheduler_pods_evicted_total", result="evicted") == 0


def test_dry_run_changes_nothing(mesh: Mesh) -> None:
    upper, _, _ = mesh
    ns = unique("dry")
    create_namespace(upper, ns)
    upper.core.create_namespaced_pod(ns, pod_manifest("stuck", node_name="vk-a"))
    wait_for(lambda: _stuck_upstairs(upper, ns, "stuck"), 60, what="the pod refused in lower cluster A")
    before = upper.core.read_namespaced_pod("stuck", ns).metadata.resource_version
    with DeschedulerProcess(upper, "descheduler-dry", extra_args=["--dry-run", "--leader-elect=false"]) as d:
        wait_for(lambda: "dry run: would recreate" in d.log_path.read_text(), 60, what="the dry-run decision")
    after = upper.core.read_namespaced_pod("stuck", ns)
    assert after.metadata.resource_version == before
    assert [e for e in events_for(upper, ns, "stuck") if e.source and e.source.component == "tensile-descheduler"] \
        == []
    assert [cm.metadata.name for cm in upper.core.list_namespaced_config_map(ns).items
            if cm.metadata.name.startswith("tensile-")] == []


def test_with_both_lower_clusters_full_a_pod_moves_at_most_once_per_cooldown(mesh: Mesh) -> None:
    upper, _, lower_b = mesh
    lower_b.core.patch_node("b-0", {"spec": {"taints": [FULL]}})
    try:
        ns = unique("full")
        create_namespace(upper, ns)
        upper.core.create_namespaced_pod(ns, pod_manifest("roamer", node_name="vk-a", labels={"app": "roamer"}))
        wait_for(lambda: _stuck_upstairs(upper, ns, "roamer"), 60, what="refused in lower cluster A")
        with DeschedulerProcess(upper, "descheduler-full", extra_args=["--cooldown=10m"]) as d:
            moved = wait_for(lambda: (p := upper.core.read_namespaced_pod("roamer", ns)).spec.node_name == "vk-b"
                             and p, 90, what="moved once, to vk-b")
            wait_for(lambda: _stuck_upstairs(upper, ns, "roamer"), 60, what="refused in lower cluster B as well")
            event = wait_for(lambda: next((e for e in events_for(upper, ns, "roamer")
                                           if e.reason == "NotRescheduled" and e.involved_object.uid
                                           == moved.metadata.uid), None), 60, what="the staying Event")
            assert "no other virtual node can take this pod; staying on vk-b" in event.message
            passes = d.metrics().total("tensile_descheduler_pass_duration_seconds_count")
            wait_for(lambda: d.metrics().total("tensile_descheduler_pass_duration_seconds_count") >= passes + 3, 30,
                     what="three more passes")
            assert upper.core.read_namespaced_pod("roamer", ns).metadata.uid == moved.metadata.uid
            assert d.log_path.read_text().count(f"recreated {ns}/roamer ") == 1
    finally:
        lower_b.core.patch_node("b-0", {"spec": {"taints": []}})
