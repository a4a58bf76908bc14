"""Pod semantics: every pod behaves upstairs as it does downstairs (issue: pod semantics).

Each test is a case real workloads hit and users of Liqo, Admiralty and
virtual-kubelet file issues about. They share one upper/lower pair and one
virtual node, and isolate themselves by namespace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    events_for,
    get_or_none,
    kubectl,
    lower_ip_of,
    pod_manifest,
    unique,
    wait_event,
    wait_gone,
    wait_pod_running,
)
from e2e.kwok import EXIT_CODE_ANNOTATION, SIMULATE_LABEL
from e2e.secretscan import secret_value
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"


@pytest.fixture
def ns(federation: Fed) -> Iterator[str]:
    upper, _, _ = federation
    name = unique("sem")
    create_namespace(upper, name)
    yield name


def reasons(cluster: LocalCluster, ns: str, name: str, reason: str) -> list[k8s.CoreV1Event]:
    return [e for e in events_for(cluster, ns, name) if e.reason == reason]


def condition(pod: k8s.V1Pod, ctype: str) -> k8s.V1PodCondition | None:
    return next((cond for cond in pod.status.conditions or [] if cond.type == ctype), None)


def waiting_reason(pod: k8s.V1Pod) -> str | None:
    cs = pod.status.container_statuses or []
    return cs[0].state.waiting.reason if cs and cs[0].state and cs[0].state.waiting else None


# --- placement ------------------------------------------------------------------------------------

WALKTHROUGH = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: aci-helloworld
spec:
  replicas: 1
  selector:
    matchLabels:
      app: aci-helloworld
  template:
    metadata:
      labels:
        app: aci-helloworld
    spec:
      containers:
      - name: aci-helloworld
        image: mcr.microsoft.com/azuredocs/aci-helloworld
        ports:
        - containerPort: 80
      nodeSelector:
        kubernetes.io/role: agent
        beta.kubernetes.io/os: linux
        type: virtual-kubelet
      tolerations:
      - key: virtual-kubelet.io/provider
        operator: Exists
      - key: azure.com/aci
        effect: NoSchedule
"""


def test_walkthrough_deployment_that_targets_the_virtual_node_runs_downstairs(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    kubectl(upper, "apply", "-n", ns, "-f", "-", stdin=WALKTHROUGH)

    def lower_pod() -> k8s.V1Pod | None:
        pods = lower.core.list_namespaced_pod(ns, label_selector="app=aci-helloworld").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    low = wait_for(lower_pod, 90, what="the walkthrough's pod Running downstairs")
    # What only the virtual node carries chose it upstairs and stays there; the OS selector stays.
    assert low.spec.node_selector == {c.BETA_OS_LABEL: "linux"}
    up = upper.core.read_namespaced_pod(low.metadata.name, ns)
    assert up.spec.node_name == VK and up.status.phase == "Running"


# --- status and lifecycle -------------------------------------------------------------------------

def test_lower_scheduling_failure_is_a_warning_and_a_condition_upstairs(federation: Fed, ns: str) -> None:
    upper, _, _ = federation
    # 12 CPUs fit the virtual node (16 in sum) but no lower node (8 each): summed capacity lies.
    upper.core.create_namespaced_pod(ns, pod_manifest("big", containers=[
        {"name": "app", "image": "nginx", "resources": {"requests": {"cpu": "12"}}}]))
    event = wait_event(upper, ns, "big", "FailedScheduling", timeout=60)
    assert event.type == "Warning" and "Insufficient cpu" in event.message and "lower cluster" in event.message

    def not_ready() -> k8s.V1PodCondition | None:
        ready = condition(upper.core.read_namespaced_pod("big", ns), "Ready")
        return ready if ready is not None and ready.reason == "Unschedulable" else None

    ready = wait_for(not_ready, 30, what="Ready=False with the lower scheduler's reason")
    assert ready.status == "False" and "Insufficient cpu" in ready.message
    assert condition(upper.core.read_namespaced_pod("big", ns), "PodScheduled").status == "True"
    time.sleep(8)  # the lower scheduler retries; the Event does not repeat
    assert len(reasons(upper, ns, "big", "FailedScheduling")) == 1


def test_image_pull_failure_downstairs_is_visible_upstairs(federation: Fed, ns: str) -> None:
    upper, _, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest("pull", labels={SIMULATE_LABEL: "image-pull-failure"}))
    event = wait_event(upper, ns, "pull", "ErrImagePull")
    assert event.type == "Warning" and "not found" in event.message
    wait_for(lambda: waiting_reason(upper.core.read_namespaced_pod("pull", ns)) == "ErrImagePull", 30,
             what="container waiting with ErrImagePull upstairs")


def test_refused_create_is_held_with_one_event_and_released_when_allowed(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    lower.core.create_namespace({"metadata": {"name": ns}})
    lower.core.create_namespaced_resource_quota(ns, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    wait_for(lambda: lower.core.read_namespaced_resource_quota("no-pods", ns).status.hard, 30,
             what="quota in force")
    upper.core.create_namespaced_pod(ns, pod_manifest("quota"))
    event = wait_event(upper, ns, "quota", "ProviderCreateFailed")
    assert "exceeded quota" in event.message and event.type == "Warning"
    wait_for(lambda: waiting_reason(upper.core.read_namespaced_pod("quota", ns)) == "CreateContainerError", 30,
             what="container waiting with the refusal")
    time.sleep(12)  # two rechecks later, still one Event
    assert len(reasons(upper, ns, "quota", "ProviderCreateFailed")) == 1
    lower.core.delete_namespaced_resource_quota("no-pods", ns)
    wait_pod_running(lower, ns, "quota", timeout=90)
    wait_pod_running(upper, ns, "quota", timeout=30)


def test_readiness_gates_keep_a_deployment_unavailable_until_they_pass(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    gate = "example.com/load-balancer"
    upper.apps.create_namespaced_deployment(ns, deployment_manifest(
        "gated", 1, {"app": "gated"}, readinessGates=[{"conditionType": gate}]))
    pod = wait_for(lambda: [p for p in upper.core.list_namespaced_pod(ns, label_selector="app=gated").items
                            if p.status.phase == "Running"], 60, what="gated pod running")[0]
    name = pod.metadata.name
    wait_pod_running(lower, ns, name)
    time.sleep(3)
    ready = condition(upper.core.read_namespaced_pod(name, ns), "Ready")
    assert ready is not None and ready.status == "False" and ready.reason == "ReadinessGatesNotReady"
    assert not upper.apps.read_namespaced_deployment("gated", ns).status.available_replicas
    # The gate's controller reports success.
    upper.core.patch_namespaced_pod_status(name, ns, {"status": {"conditions": [
        {"type": gate, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    wait_for(lambda: upper.apps.read_namespaced_deployment("gated", ns).status.available_replicas == 1, 30,
             what="deployment available once the gate passed")
    assert condition(upper.core.read_namespaced_pod(name, ns), gate).status == "True"


def _job(name: str, exit_code: int) -> dict[str, Any]:
    template = pod_manifest(name, labels={SIMULATE_LABEL: "complete"}, restartPolicy="Never")
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {
        "metadata": {"labels": {SIMULATE_LABEL: "complete"}, "annotations": {EXIT_CODE_ANNOTATION: str(exit_code)}},
        "spec": template["spec"]}}}


def test_completed_job_pods_are_never_resurrected(federation: Fed, ns: str) -> None:
    upper, lower, vn = federation
    batch = k8s.BatchV1Api(upper.api())
    batch.create_namespaced_job(ns, _job("ok", 0))
    batch.create_namespaced_job(ns, _job("bad", 3))

    def job_pod(job: str, phase: str) -> k8s.V1Pod | None:
        pods = upper.core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items
        return pods[0] if len(pods) == 1 and pods[0].status.phase == phase else None

    ok = wait_for(lambda: job_pod("ok", "Succeeded"), 90, what="job pod Succeeded upstairs")
    bad = wait_for(lambda: job_pod("bad", "Failed"), 90, what="failing job pod Failed upstairs")
    assert ok.status.container_statuses[0].state.terminated.exit_code == 0
    assert bad.status.container_statuses[0].state.terminated.exit_code == 3
    wait_for(lambda: (batch.read_namespaced_job("ok", ns).status.succeeded or 0) == 1, 60, what="job complete")
    # Everything that used to resurrect finished pods: the lower copy deleted, a restart, the namespace gone.
    lower.core.delete_namespaced_pod(ok.metadata.name, ns, grace_period_seconds=0)
    vn.kill()
    vn.start()
    lower.core.delete_namespace(ns)
    wait_gone(lower.core.read_namespace, ns, timeout=90, what="lower namespace deleted")
    time.sleep(10)
    for name, phase in ((ok.metadata.name, "Succeeded"), (bad.metadata.name, "Failed")):
        pod = upper.core.read_namespaced_pod(name, ns)
        assert pod.status.phase == phase, f"{name} turned {pod.status.phase}"
    assert len(upper.core.list_namespaced_pod(ns, label_selector="job-name").items) == 2  # no re-run
    assert get_or_none(lower.core.read_namespace, ns) is None  # nothing was copied down again
    assert (batch.read_namespaced_job("ok", ns).status.succeeded or 0) == 1


def test_shortened_grace_and_force_delete_reach_the_lower_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    for name in ("slow", "forced"):
        upper.core.create_namespaced_pod(ns, pod_manifest(name, labels={SIMULATE_LABEL: "graceful"},
                                                          terminationGracePeriodSeconds=300))
    for name in ("slow", "forced"):
        wait_pod_running(lower, ns, name)
    upper.core.delete_namespaced_pod("slow", ns)
    wait_for(lambda: (lower.core.read_namespaced_pod("slow", ns).metadata.deletion_grace_period_seconds or 0) == 300,
             30, what="lower copy terminating with the upper grace period")
    kubectl(upper, "delete", "pod", "slow", "-n", ns, "--grace-period=1", "--wait=false")
    wait_gone(lower.core.read_namespaced_pod, "slow", ns, timeout=30, what="lower copy gone after the shorter grace")
    wait_gone(upper.core.read_namespaced_pod, "slow", ns, timeout=30, what="upper pod gone")
    kubectl(upper, "delete", "pod", "forced", "-n", ns, "--force", "--grace-period=0")
    wait_gone(lower.core.read_namespaced_pod, "forced", ns, timeout=30, what="lower copy gone after a force delete")


def test_daemonset_pods_are_not_copied_and_do_not_block_a_rollout(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    labels = {"app": "agent"}
    ds = {"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": labels},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "template": {"metadata": {"labels": labels}, "spec": {
            "tolerations": [{"operator": "Exists"}],  # tolerates every taint, the virtual node's too
            "containers": [{"name": "agent", "image": "agent:1"}]}}}}
    upper.apps.create_namespaced_daemon_set(ns, ds)

    def settled(generation: int) -> k8s.V1DaemonSetStatus | None:
        st = upper.apps.read_namespaced_daemon_set("agent", ns).status
        done = (st.observed_generation or 0) >= generation and st.desired_number_scheduled >= 2 and (
            st.number_available == st.updated_number_scheduled == st.desired_number_scheduled)
        return st if done else None

    wait_for(lambda: settled(1), 90, what="DaemonSet available on every node, the virtual one included")
    vk_pod = next(p for p in upper.core.list_namespaced_pod(ns, label_selector="app=agent").items
                  if p.spec.node_name == VK)
    assert vk_pod.status.pod_ip is None and waiting_reason(vk_pod) == "DaemonSetPodNotCopied"
    assert condition(vk_pod, "Ready").status == "True"
    assert wait_event(upper, ns, vk_pod.metadata.name, "DaemonSetPodNotCopied").type == "Warning"
    assert get_or_none(lower.core.read_namespaced_pod, vk_pod.metadata.name, ns) is None
    upper.apps.patch_namespaced_daemon_set("agent", ns, {"spec": {"template": {"spec": {"containers": [
        {"name": "agent", "image": "agent:2"}]}}}})
    wait_for(lambda: settled(2), 120, what="DaemonSet rollout finished")


def test_status_flows_up_while_the_lower_cluster_refuses_spec_updates(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest("frozen", labels={"v": "1"}))
    wait_pod_running(lower, ns, "frozen")
    admission = k8s.AdmissionregistrationV1Api(lower.api())
    policy = f"freeze-{ns}"
    admission.create_validating_admission_policy({"metadata": {"name": policy}, "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                "operations": ["UPDATE"], "resources": ["pods"]}]},
        "validations": [{"expression": "false", "message": "pods are frozen in this namespace"}]}})
    admission.create_validating_admission_policy_binding({"metadata": {"name": policy}, "spec": {
        "policyName": policy, "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchLabels": {c.NAMESPACE_NAME_LABEL: ns}}}}})
    try:
        def refused() -> bool:
            try:
                lower.core.patch_namespaced_pod("frozen", ns, {"metadata": {"labels": {"probe": "x"}}})
            except k8s.ApiException as exc:
                return exc.status in (403, 422)
            lower.core.patch_namespaced_pod("frozen", ns, {"metadata": {"labels": {"probe": None}}})
            return False

        wait_for(refused, 30, what="the lower policy in force")
        upper.core.patch_namespaced_pod("frozen", ns, {"metadata": {"labels": {"v": "2"}}})
        event = wait_event(upper, ns, "frozen", "ProviderUpdateFailed")
        assert "frozen" in event.message
        # Meanwhile the lower pod's status changes (a probe condition); it must still reach upstairs.
        lower.core.patch_namespaced_pod_status("frozen", ns, {"status": {"conditions": [
            {"type": "example.com/probe", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
        wait_for(lambda: condition(upper.core.read_namespaced_pod("frozen", ns), "example.com/probe"), 30,
                 what="lower status change upstairs despite the refused update")
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)


def test_labels_and_annotations_the_lower_cluster_adds_are_kept(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest("meshed", labels={"v": "1"}))
    wait_pod_running(lower, ns, "meshed")
    # What Istio's and Calico's admission and agents add downstairs.
    lower.core.patch_namespaced_pod("meshed", ns, {"metadata": {
        "labels": {"security.istio.io/tlsMode": "istio"},
        "annotations": {"cni.projectcalico.org/podIP": "10.9.9.9/32", "k8s.v1.cni.cncf.io/network-status": "[]"}}})
    upper.core.patch_namespaced_pod("meshed", ns, {"metadata": {"labels": {"v": "2"}}})
    wait_for(lambda: lower.core.read_namespaced_pod("meshed", ns).metadata.labels.get("v") == "2", 30,
             what="upper label change downstairs")
    low = lower.core.read_namespaced_pod("meshed", ns)
    assert low.metadata.labels["security.istio.io/tlsMode"] == "istio"
    assert low.metadata.annotations["cni.projectcalico.org/podIP"] == "10.9.9.9/32"
    assert "k8s.v1.cni.cncf.io/network-status" in low.metadata.annotations


# --- pods the lower apiserver would reject ------------------------------------------------------------

def test_runtime_class_overhead_is_translated_and_a_missing_class_is_held(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    node_api = k8s.NodeV1Api(upper.api())
    kata, gvisor = unique("kata"), unique("gvisor")
    node_api.create_runtime_class({"metadata": {"name": kata}, "handler": "kata",
                                   "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}}})
    node_api.create_runtime_class({"metadata": {"name": gvisor}, "handler": "runsc"})
    k8s.NodeV1Api(lower.api()).create_runtime_class({"metadata": {"name": kata}, "handler": "kata"})
    upper.core.create_namespaced_pod(ns, pod_manifest("kata", runtimeClassName=kata))
    assert upper.core.read_namespaced_pod("kata", ns).spec.overhead == {"cpu": "250m", "memory": "64Mi"}
    low = wait_pod_running(lower, ns, "kata", timeout=60)
    assert low.spec.runtime_class_name == kata and not low.spec.overhead
    upper.core.create_namespaced_pod(ns, pod_manifest("gvisor", runtimeClassName=gvisor))
    event = wait_event(upper, ns, "gvisor", "ProviderCreateFailed")
    assert gvisor in event.message


def test_dynamic_resource_claims_are_held_with_a_clear_event(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest(
        "dra", node_name=VK, resourceClaims=[{"name": "gpu", "resourceClaimTemplateName": "gpu-template"}],
        containers=[{"name": "app", "image": "cuda", "resources": {"claims": [{"name": "gpu"}]}}]))
    event = wait_event(upper, ns, "dra", "UnsupportedPodSpec")
    assert "resource claims gpu" in event.message
    wait_for(lambda: waiting_reason(upper.core.read_namespaced_pod("dra", ns)) == "CreateContainerError", 30,
             what="held with the reason in its status")
    time.sleep(5)
    assert len(reasons(upper, ns, "dra", "UnsupportedPodSpec")) == 1
    assert get_or_none(lower.core.read_namespaced_pod, "dra", ns) is None


def test_custom_audience_tokens_and_kubectl_debug_reach_the_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, pod_manifest(
        "tok", volumes=[{"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "vault", "expirationSeconds": 3600, "path": "token"}}]}}],
        containers=[{"name": "app", "image": "nginx", "volumeMounts": [{"name": "vault-token", "mountPath": "/v"}]}]))
    low = wait_pod_running(lower, ns, "tok")
    token = next(v for v in low.spec.volumes if v.name == "vault-token")
    assert token.projected.sources[0].service_account_token.audience == "vault"
    wait_pod_running(upper, ns, "tok")
    kubectl(upper, "debug", "-n", ns, "tok", "--image=busybox:1.36", "--container=debugger", "--target=app")
    wait_for(lambda: [e.name for e in lower.core.read_namespaced_pod("tok", ns).spec.ephemeral_containers or []]
             == ["debugger"], 30, what="kubectl debug's container added to the lower copy")


# --- services and network -----------------------------------------------------------------------------

def test_upper_endpoints_never_list_unreachable_lower_pod_ips(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "trafficDistribution": "PreferClose"}})
    upper.core.create_namespaced_pod(ns, pod_manifest("web-virtual", labels={"app": "web"}))
    upper.core.create_namespaced_pod(ns, pod_manifest("web-upper", labels={"app": "web"}, virtual=False,
                                                      nodeName="upper-0"))
    real_ip = wait_pod_running(upper, ns, "web-upper").status.pod_ip
    virtual = wait_pod_running(upper, ns, "web-virtual")
    low = wait_pod_running(lower, ns, "web-virtual")
    assert virtual.status.pod_ip is None and lower_ip_of(virtual) == low.status.pod_ip
    disc = k8s.DiscoveryV1Api(upper.api())

    def upper_ips() -> set[str]:
        slices = disc.list_namespaced_endpoint_slice(ns, label_selector=f"{c.SERVICE_NAME_LABEL}=web").items
        return {a for s in slices for e in (s.endpoints or []) for a in e.addresses}

    wait_for(lambda: upper_ips() == {real_ip}, 30, what="upper endpoints: the real node's pod only")
    time.sleep(3)
    assert upper_ips() == {real_ip}
    svc = wait_for(lambda: get_or_none(lower.core.read_namespaced_service, "web", ns), 30, what="Service copy")
    assert svc.spec.session_affinity_config.client_ip.timeout_seconds == 600
    assert svc.spec.traffic_distribution == "PreferClose"


def test_pvc_resize_reaches_the_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    storage_class = unique("expandable")
    for cluster in (upper, lower):
        k8s.StorageV1Api(cluster.api()).create_storage_class({
            "metadata": {"name": storage_class}, "provisioner": "kubernetes.io/no-provisioner",
            "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"})
        cluster.core.create_persistent_volume({"metadata": {"name": unique(f"pv-{cluster.name}")}, "spec": {
            "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
            "hostPath": {"path": f"/tmp/{ns}"}}})
    upper.core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
        "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: upper.core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound", 30,
             what="upper claim bound")
    upper.core.create_namespaced_pod(ns, pod_manifest("db", volumes=[
        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
    wait_pod_running(lower, ns, "db", timeout=60)
    upper.core.patch_namespaced_persistent_volume_claim("data", ns, {"spec": {"resources": {"requests": {
        "storage": "2Gi"}}}})
    wait_for(lambda: lower.core.read_namespaced_persistent_volume_claim("data", ns).spec.resources.requests[
        "storage"] == "2Gi", 30, what="lower claim resized")


def test_upper_claim_is_bound_once_its_lower_copy_is(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    storage_class = unique("lower-only")
    # Only the lower cluster has storage for this class; no upper provisioner or PV serves it.
    for cluster in (upper, lower):
        k8s.StorageV1Api(cluster.api()).create_storage_class({
            "metadata": {"name": storage_class}, "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate"})
    lower.core.create_persistent_volume({"metadata": {"name": unique("pv-lower")}, "spec": {
        "capacity": {"storage": "3Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
        "hostPath": {"path": f"/tmp/{ns}"}}})
    upper.core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "state"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
        "resources": {"requests": {"storage": "1Gi"}}}})
    upper.core.create_namespaced_pod(ns, pod_manifest("stateful", node_name=VK, volumes=[
        {"name": "s", "persistentVolumeClaim": {"claimName": "state"}}]))
    wait_pod_running(lower, ns, "stateful", timeout=60)
    claim = wait_for(lambda: (pvc := upper.core.read_namespaced_persistent_volume_claim("state", ns)).status.phase
                     == "Bound" and pvc, 60, what="upper claim Bound")
    mirror = upper.core.read_persistent_volume(claim.spec.volume_name)
    assert mirror.spec.capacity["storage"] == "3Gi"
    assert mirror.spec.node_affinity.required.node_selector_terms[0].match_expressions[0].values == [VK]
    assert mirror.metadata.annotations[c.LOWER_VOLUME_ANNOTATION] == lower.core.read_namespaced_persistent_volume_claim(
        "state", ns).spec.volume_name
    upper.core.delete_namespaced_pod("stateful", ns)
    wait_gone(upper.core.read_namespaced_pod, "stateful", ns, what="pod gone")
    upper.core.delete_namespaced_persistent_volume_claim("state", ns)
    wait_gone(upper.core.read_persistent_volume, claim.spec.volume_name, timeout=60, what="mirror volume deleted")
    wait_gone(lower.core.read_namespaced_persistent_volume_claim, "state", ns, timeout=60, what="claim copy deleted")


# --- dependencies -----------------------------------------------------------------------------------------

def test_recreate_rollout_never_loses_a_copy_its_new_pods_need(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}, "data": {"k": "v"}})
    deployment = deployment_manifest("rec", 2, {"app": "rec"}, volumes=[
        {"name": "s", "configMap": {"name": "settings"}}])
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    upper.apps.create_namespaced_deployment(ns, deployment)
    wait_for(lambda: len([p for p in lower.core.list_namespaced_pod(ns, label_selector="app=rec").items
                          if p.status.phase == "Running"]) == 2, 90, what="first revision running downstairs")
    deleted: list[str] = []
    stop = threading.Event()

    def watch_copies() -> None:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        rv = lower.core.list_namespaced_config_map(ns).metadata.resource_version
        while not stop.is_set():
            for ev in w.stream(  # type: ignore[no-untyped-call]
                    lower.core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=2):
                rv = ev["object"].metadata.resource_version
                if ev["type"] == "DELETED" and ev["object"].metadata.name == "settings":
                    deleted.append(rv)

    watcher = threading.Thread(target=watch_copies, daemon=True)
    watcher.start()
    try:
        upper.apps.patch_namespaced_deployment("rec", ns, {"spec": {"template": {"metadata": {"annotations": {
            "rollout": "2"}}}}})

        def new_revision_running() -> bool:
            pods = upper.core.list_namespaced_pod(ns, label_selector="app=rec").items
            fresh = [p for p in pods if (p.metadata.annotations or {}).get("rollout") == "2"]
            return len(fresh) == 2 == len(pods) and all(p.status.phase == "Running" for p in fresh)

        wait_for(new_revision_running, 120, what="second revision running")
        time.sleep(2)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert deleted == [], "the ConfigMap copy was deleted during the rollout"
    assert lower.core.read_namespaced_config_map("settings", ns).data == {"k": "v"}


def test_lower_namespace_deleted_out_of_band_is_made_again_with_every_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"p": secret_value("p")}})
    upper.core.create_namespaced_service(ns, {"metadata": {"name": "svc"}, "spec": {
        "selector": {"app": "ns"}, "ports": [{"port": 80}]}})
    upper.apps.create_namespaced_deployment(ns, deployment_manifest("ns", 1, {"app": "ns"}, volumes=[
        {"name": "c", "configMap": {"name": "cfg"}}, {"name": "s", "secret": {"secretName": "sec"}}]))
    wait_for(lambda: [p for p in lower.core.list_namespaced_pod(ns, label_selector="app=ns").items
                      if p.status.phase == "Running"], 90, what="pod running downstairs")
    first_uid = lower.core.read_namespace(ns).metadata.uid
    lower.core.delete_namespace(ns)

    def everything_back() -> bool:
        space = get_or_none(lower.core.read_namespace, ns)
        if space is None or space.metadata.uid == first_uid or space.status.phase != "Active":
            return False
        return bool(get_or_none(lower.core.read_namespaced_config_map, "cfg", ns)
                    and get_or_none(lower.core.read_namespaced_secret, "sec", ns)
                    and get_or_none(lower.core.read_namespaced_service, "svc", ns)
                    and [p for p in lower.core.list_namespaced_pod(ns, label_selector="app=ns").items
                         if p.status.phase == "Running"])

    wait_for(everything_back, 120, what="namespace, ConfigMap, Secret, Service and pod made again")
