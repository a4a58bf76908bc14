import json
from typing import Any

import pytest

from tensile import cluster_selector, selectors, translate
from tensile import conventions as c

OWNER = translate.Owner("upper-uid", "vk-a")


def upper_pod(**spec: Any) -> dict[str, Any]:
    base_spec: dict[str, Any] = {
        "nodeName": "vk-a",
        "schedulerName": "default-scheduler",
        "priority": 0,
        "serviceAccountName": "default",
        "containers": [{"name": "app", "image": "nginx:1", "volumeMounts": [
            {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "data", "mountPath": "/data"}]}],
        "volumes": [
            {"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
            {"name": "data", "configMap": {"name": "cm"}},
        ],
        "tolerations": [
            {"key": c.PROVIDER_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
        ],
        "nodeSelector": {c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE},
    }
    base_spec.update(spec)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "x", "controller": True}],
                     "labels": {"app": "web"}, "annotations": {"note": "hi"},
                     "creationTimestamp": "2020-01-01T00:00:00Z",
                     "managedFields": [{}]},
        "spec": base_spec,
        "status": {"phase": "Pending"},
    }


def opted_in(pod: dict[str, Any]) -> dict[str, Any]:
    pod["metadata"]["labels"][c.VIRTUAL_POD_LABEL] = c.VIRTUAL_POD_VALUE
    return pod


def test_lower_pod_clears_identity_node_and_status_and_records_ownership() -> None:
    low = translate.lower_pod(upper_pod(), OWNER)
    meta = low["metadata"]
    assert set(meta) == {"name", "namespace", "labels", "annotations"}
    assert "status" not in low and "nodeName" not in low["spec"]
    assert meta["labels"][c.VIRTUAL_POD_LABEL] == c.VIRTUAL_POD_VALUE
    assert OWNER.owns(low)
    assert meta["annotations"][c.UPPER_UID_ANNOTATION] == "u-1"
    assert "priority" not in low["spec"] and "schedulerName" not in low["spec"]


def test_lower_pod_drops_the_upper_token_volume_and_its_mounts() -> None:
    low = translate.lower_pod(upper_pod(), OWNER)
    assert [v["name"] for v in low["spec"]["volumes"]] == ["data"]
    assert [m["name"] for m in low["spec"]["containers"][0]["volumeMounts"]] == ["data"]


def test_lower_pod_restores_original_constraints_from_cluster_selector() -> None:
    original = {
        "nodeSelector": {"disktype": "ssd", c.CLUSTER_ID_LABEL: "lower-a"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    }
    up = opted_in(upper_pod(affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}))
    up["spec"]["tolerations"] += original["tolerations"]  # the webhook keeps the author's tolerations upstairs
    up["metadata"]["annotations"][c.CLUSTER_SELECTOR_ANNOTATION] = cluster_selector.encode(original)
    low = translate.lower_pod(up, OWNER)["spec"]
    assert low["nodeSelector"] == {"disktype": "ssd"}  # clusterID pins the virtual node, not a lower node
    assert low["affinity"]["nodeAffinity"] == original["affinity"]["nodeAffinity"]
    assert "podAntiAffinity" in low["affinity"]
    assert low["tolerations"] == original["tolerations"]


def test_lower_pod_without_annotation_sheds_virtual_node_constraints() -> None:
    low = translate.lower_pod(upper_pod(), OWNER)["spec"]
    assert "nodeSelector" not in low
    assert all(t["key"] != c.PROVIDER_TAINT_KEY for t in low["tolerations"])


def test_malformed_cluster_selector_is_a_clear_error() -> None:
    up = opted_in(upper_pod())
    up["metadata"]["annotations"][c.CLUSTER_SELECTOR_ANNOTATION] = "{not json"
    with pytest.raises(ValueError, match=c.CLUSTER_SELECTOR_ANNOTATION):
        translate.lower_pod(up, OWNER)


def test_virtual_only_required_affinity_is_dropped_without_leaving_empty_terms() -> None:
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": c.CLUSTER_ID_LABEL, "operator": "In", "values": ["x"]}]}]}}}
    low = translate.lower_pod(upper_pod(affinity=aff), OWNER)["spec"]
    assert "affinity" not in low


def test_update_patch_carries_only_what_a_running_pod_may_change() -> None:
    up = upper_pod()
    lower = translate.lower_pod(up, OWNER)
    assert translate.pod_update_patch(translate.lower_pod(up, OWNER), lower) is None
    up["spec"]["containers"][0]["image"] = "nginx:2"
    up["metadata"]["labels"] = {"app": "web", "tier": "front"}
    up["spec"]["activeDeadlineSeconds"] = 60
    up["spec"]["tolerations"].append({"key": "new", "operator": "Exists"})
    up["spec"]["dnsPolicy"] = "None"  # immutable: must not be sent
    patch = translate.pod_update_patch(translate.lower_pod(up, OWNER), lower)
    assert patch is not None
    assert patch["spec"]["containers"] == [{"name": "app", "image": "nginx:2"}]
    assert patch["metadata"]["labels"] == {"tier": "front"}
    assert patch["spec"]["activeDeadlineSeconds"] == 60
    assert patch["spec"]["tolerations"][-1] == {"key": "new", "operator": "Exists"}
    assert "dnsPolicy" not in patch["spec"]


def test_update_patch_removes_deleted_labels_with_null() -> None:
    up = upper_pod()
    lower = translate.lower_pod(up, OWNER)
    del up["metadata"]["labels"]["app"]
    patch = translate.pod_update_patch(translate.lower_pod(up, OWNER), lower)
    assert patch is not None and patch["metadata"]["labels"] == {"app": None}
    record = json.loads(patch["metadata"]["annotations"][c.MANAGED_METADATA_ANNOTATION])
    assert "app" not in record["labels"] and set(patch) == {"metadata"}


def test_lower_configmap_and_secret_copy_data_and_mark_global() -> None:
    cm = {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7", "uid": "x"}, "data": {"k": "v"}}
    low = translate.lower_object("configmaps", cm, OWNER)
    assert low["data"] == {"k": "v"} and OWNER.owns(low)
    assert low["metadata"]["annotations"][c.GLOBAL_ANNOTATION] == c.GLOBAL_VALUE
    assert low["metadata"]["annotations"][c.UPPER_RESOURCE_VERSION_ANNOTATION] == "7"
    assert "uid" not in low["metadata"]
    secret = {"metadata": {"name": "s", "namespace": "ns"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}
    assert translate.lower_object("secrets", secret, OWNER)["type"] == "kubernetes.io/tls"


def test_needs_update_follows_upper_resource_version() -> None:
    cm = {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}, "data": {}}
    low = translate.lower_object("configmaps", cm, OWNER)
    assert not translate.needs_update("configmaps", low, low)
    cm["metadata"]["resourceVersion"] = "8"
    assert translate.needs_update("configmaps", translate.lower_object("configmaps", cm, OWNER), low)


def test_lower_service_keeps_selector_and_drops_cluster_ips_and_node_ports() -> None:
    svc = {"metadata": {"name": "web", "namespace": "ns"}, "spec": {
        "type": "NodePort", "selector": {"app": "web"}, "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}}
    low = translate.lower_object("services", svc, OWNER)["spec"]
    assert low["selector"] == {"app": "web"} and low["type"] == "ClusterIP"
    assert "clusterIP" not in low and "nodePort" not in low["ports"][0]


def test_lower_pvc_keeps_only_portable_spec_and_no_binding_annotations() -> None:
    pvc = {"metadata": {"name": "d", "namespace": "ns", "annotations": {
        "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes",
        "volume.kubernetes.io/storage-provisioner": "x", "team": "a"}}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "manual", "volumeName": "pv-upper"}}
    low = translate.lower_object("persistentvolumeclaims", pvc, OWNER)
    assert low["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "manual"}
    assert not [k for k in low["metadata"]["annotations"] if k.startswith(("pv.", "volume."))]
    assert low["metadata"]["annotations"]["team"] == "a"


def test_ownership_distinguishes_other_virtual_nodes_and_upper_clusters() -> None:
    other_node = translate.lower_object("configmaps", {"metadata": {"name": "x", "namespace": "n"}},
                                        translate.Owner("upper-uid", "vk-b"))
    other_upper = translate.lower_object("configmaps", {"metadata": {"name": "x", "namespace": "n"}},
                                         translate.Owner("other-upper", "vk-a"))
    assert not OWNER.owns(other_node) and not OWNER.owns(other_upper)
    assert not OWNER.owns({"metadata": {"labels": {}}})


def test_cluster_selector_round_trip() -> None:
    spec = {"nodeSelector": {"a": "b"}, "tolerations": [{"key": "k"}], "affinity": None}
    assert json.loads(cluster_selector.encode(spec)) == {"nodeSelector": {"a": "b"}, "tolerations": [{"key": "k"}]}
    assert cluster_selector.decode(cluster_selector.encode(spec))["nodeSelector"] == {"a": "b"}
    with pytest.raises(ValueError):
        cluster_selector.decode("[]")


def test_flat_network_service_has_no_selector() -> None:
    svc = {"metadata": {"name": "web", "namespace": "ns"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}}
    assert "selector" not in translate.lower_service(svc, OWNER, flat_network=True)["spec"]
    assert translate.lower_service(svc, OWNER, flat_network=False)["spec"]["selector"] == {"app": "web"}


def test_endpointslice_copy_keeps_addresses_and_drops_upper_references() -> None:
    upper = {"metadata": {"name": "web-abc", "namespace": "ns", "resourceVersion": "5", "labels": {
        c.SERVICE_NAME_LABEL: "web", c.ENDPOINTSLICE_MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}, "nodeName": "vk-a",
                       "targetRef": {"kind": "Pod", "name": "web-0", "uid": "u"}}]}
    low = translate.lower_endpointslice(upper, OWNER)
    assert low["metadata"]["labels"][c.SERVICE_NAME_LABEL] == "web"
    assert low["metadata"]["labels"][c.ENDPOINTSLICE_MANAGED_BY_LABEL] == c.ENDPOINTSLICE_MANAGER
    assert low["endpoints"] == [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}]
    assert low["ports"] == [{"port": 8080, "protocol": "TCP"}] and OWNER.owns(low)
    assert translate.needs_update("endpointslices", low, low) is False


# --- placement: what only the virtual node satisfies -------------------------------------------

ACI_SELECTOR = {c.ROLE_LABEL: c.ROLE_VALUE, c.BETA_OS_LABEL: "linux", c.VIRTUAL_NODE_TYPE_LABEL:
                c.VIRTUAL_NODE_TYPE_VALUE}


def test_walkthrough_selector_keeps_only_what_real_nodes_carry() -> None:
    # The ACI virtual-node walkthrough: no virtual-pod label, selects the virtual node by its own labels.
    low = translate.lower_pod(upper_pod(nodeSelector=dict(ACI_SELECTOR)), OWNER)["spec"]
    assert low["nodeSelector"] == {c.BETA_OS_LABEL: "linux"}


def test_node_label_keys_and_hostname_are_upper_only() -> None:
    keys = translate.virtual_node_keys({"pool": "burst"})
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": c.HOSTNAME_LABEL, "operator": "In", "values": ["vk-a"]},
                              {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}}}
    low = translate.lower_pod(upper_pod(nodeSelector={"pool": "burst", c.OS_LABEL: "linux"}, affinity=aff),
                              OWNER, keys)["spec"]
    assert low["nodeSelector"] == {c.OS_LABEL: "linux"}
    terms = low["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                            "values": ["a"]}]}]


def test_hand_written_cluster_selector_on_a_pod_that_did_not_opt_in_is_ignored() -> None:
    up = upper_pod(nodeSelector={"disktype": "ssd"})
    up["metadata"]["annotations"][c.CLUSTER_SELECTOR_ANNOTATION] = cluster_selector.encode({
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]})
    low = translate.lower_pod(up, OWNER)
    assert low["spec"]["nodeSelector"] == {"disktype": "ssd"}
    assert all(t.get("key") != "node-role.kubernetes.io/control-plane" for t in low["spec"]["tolerations"])
    assert c.CLUSTER_SELECTOR_ANNOTATION not in low["metadata"]["annotations"]


# --- pods the lower apiserver would reject ------------------------------------------------------

def test_runtime_class_overhead_is_left_to_the_lower_runtime_class() -> None:
    low = translate.lower_pod(upper_pod(runtimeClassName="kata", overhead={"cpu": "250m"}), OWNER)["spec"]
    assert "overhead" not in low and low["runtimeClassName"] == "kata"


def test_dynamic_resource_claims_are_unsupported_with_a_reason() -> None:
    up = upper_pod(resourceClaims=[{"name": "gpu", "resourceClaimTemplateName": "gpu-tpl"}])
    up["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpu"}]}
    reason = translate.unsupported_reason(up)
    assert reason is not None and "gpu" in reason
    assert translate.unsupported_reason(upper_pod()) is None


def test_custom_audience_token_volume_is_kept_for_the_lower_cluster_to_mint() -> None:
    vol = {"name": "vault-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 3600, "path": "token"}}]}}
    up = upper_pod(volumes=[*upper_pod()["spec"]["volumes"], vol])
    assert "vault-token" in [v["name"] for v in translate.lower_pod(up, OWNER)["spec"]["volumes"]]


def test_ephemeral_containers_are_added_without_the_upper_token_mount() -> None:
    up = upper_pod()
    lower = translate.lower_pod(up, OWNER)
    assert translate.ephemeral_containers_patch(up, lower) is None
    up["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox", "targetContainerName": "app",
                                          "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/t"}]}]
    patch = translate.ephemeral_containers_patch(up, lower)
    assert patch == {"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox",
                                                       "targetContainerName": "app"}]}}
    lower["spec"]["ephemeralContainers"] = patch["spec"]["ephemeralContainers"]
    assert translate.ephemeral_containers_patch(up, lower) is None


# --- lower-side metadata ----------------------------------------------------------------------------

def test_update_keeps_labels_and_annotations_the_lower_cluster_added() -> None:
    up = upper_pod()
    lower = translate.lower_pod(up, OWNER)
    lower["metadata"]["labels"]["security.istio.io/tlsMode"] = "istio"
    lower["metadata"]["annotations"]["cni.projectcalico.org/podIP"] = "10.9.0.5/32"
    assert translate.pod_update_patch(translate.lower_pod(up, OWNER), lower) is None
    up["metadata"]["labels"]["tier"] = "front"
    del up["metadata"]["annotations"]["note"]
    patch = translate.pod_update_patch(translate.lower_pod(up, OWNER), lower)
    assert patch is not None
    assert patch["metadata"]["labels"] == {"tier": "front"}
    assert patch["metadata"]["annotations"]["note"] is None
    assert "cni.projectcalico.org/podIP" not in patch["metadata"]["annotations"]


def test_copies_made_before_keys_were_recorded_lose_nothing() -> None:
    up = upper_pod()
    lower = translate.lower_pod(up, OWNER)
    del lower["metadata"]["annotations"][c.MANAGED_METADATA_ANNOTATION]
    lower["metadata"]["labels"]["added-downstairs"] = "x"
    patch = translate.pod_update_patch(translate.lower_pod(up, OWNER), lower)
    assert patch is not None and set(patch["metadata"]["annotations"]) == {c.MANAGED_METADATA_ANNOTATION}
    assert "labels" not in patch["metadata"]


def test_managed_keys_tolerates_a_broken_record() -> None:
    assert translate.managed_keys({"metadata": {"annotations": {c.MANAGED_METADATA_ANNOTATION: "{nope"}}}) == {}
    assert translate.managed_keys({"metadata": {"annotations": {c.MANAGED_METADATA_ANNOTATION: "[1]"}}}) == {}


# --- services and PVCs --------------------------------------------------------------------------------

def test_service_copy_keeps_session_affinity_config_and_traffic_distribution() -> None:
    svc = {"metadata": {"name": "web", "namespace": "ns"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "trafficDistribution": "PreferClose"}}
    spec = translate.lower_service(svc, OWNER, flat_network=False)["spec"]
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 600}}
    assert spec["trafficDistribution"] == "PreferClose"


def test_pvc_resize_is_the_only_pvc_update() -> None:
    def pvc(size: str) -> dict[str, Any]:
        return translate.lower_object("persistentvolumeclaims", {
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": size},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}, OWNER)

    assert not translate.needs_update("persistentvolumeclaims", pvc("1Gi"), pvc("1Gi"))
    assert translate.needs_update("persistentvolumeclaims", pvc("2Gi"), pvc("1Gi"))
    assert translate.pvc_resize_patch(pvc("2Gi"), pvc("1Gi")) == {
        "spec": {"resources": {"requests": {"storage": "2Gi"}}}}


def test_mirror_volume_is_pre_bound_to_the_upper_claim_and_pinned_to_the_virtual_node() -> None:
    upper_claim = {"metadata": {"name": "data", "namespace": "ns", "uid": "c-1"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}}
    lower_claim = {"spec": {"volumeName": "pv-low"}, "status": {"phase": "Bound", "capacity": {"storage": "5Gi"},
                                                              "accessModes": ["ReadWriteOnce"]}}
    pv = translate.mirror_volume(upper_claim, lower_claim, OWNER)
    assert pv["metadata"]["name"] == "pvc-c-1" == translate.mirror_volume_name("c-1")
    assert pv["spec"]["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ns",
                                      "name": "data", "uid": "c-1"}
    assert pv["spec"]["capacity"] == {"storage": "5Gi"} and pv["spec"]["storageClassName"] == "fast"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": c.HOSTNAME_LABEL, "operator": "In", "values": ["vk-a"]}
    assert pv["metadata"]["annotations"][c.LOWER_VOLUME_ANNOTATION] == "pv-low" and OWNER.owns(pv)


def test_the_copies_selector_and_the_others_selectors_split_every_label_set_in_exactly_one() -> None:
    owner = translate.Owner("up-uid", "vk-a")
    every = [selectors.requirements(s) for s in (owner.selector, *owner.others_selectors)]
    for cluster in (None, "up-uid", "other-uid"):
        for node in (None, "vk-a", "vk-b"):
            labels = {k: v for k, v in ((c.OWNER_CLUSTER_LABEL, cluster), (c.OWNER_NODE_LABEL, node)) if v}
            matched = [i for i, reqs in enumerate(every) if selectors.matches(reqs, labels)]
            assert len(matched) == 1, labels
            assert (matched == [0]) == owner.owns({"metadata": {"labels": labels}}), labels
