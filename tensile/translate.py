"""Pure translations between the upper and the lower cluster. No I/O.

- ``lower_pod``: the copy of an upper pod that runs in the lower cluster.
- ``pod_update_patch``: what Kubernetes lets change on a running pod,
  brought from the upper pod to its lower copy.
- ``upper_status``: the lower pod's status as the upper pod should show it.
- ``lower_object``: ConfigMap/Secret/PVC/ServiceAccount/Service copies.

Every lower object records which upper cluster and which virtual node own
it (labels, so the lower caches can filter server-side), and lower pods
record the upper pod's UID. Tensile Kube records neither, which is why it
cannot share a lower cluster or clean up after a restart.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from tensile import cluster_selector
from tensile import conventions as c

JSON = dict[str, Any]

#: PriorityClasses that exist in every cluster; other names may not exist downstairs.
BUILTIN_PRIORITY_CLASSES = frozenset({"system-cluster-critical", "system-node-critical"})
#: Pod spec fields the apiserver or the lower admission chain fills in again.
_DROPPED_SPEC_FIELDS = ("nodeName", "priority", "preemptionPolicy", "ephemeralContainers", "readinessGates",
                        "schedulerName", "serviceAccount", "schedulingGates", "resourceClaims")


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who owns a lower object: the upper cluster's id and the virtual node's name."""

    upper_cluster: str
    node_name: str

    @property
    def labels(self) -> dict[str, str]:
        return {
            c.OWNER_CLUSTER_LABEL: self.upper_cluster,
            c.OWNER_NODE_LABEL: self.node_name,
            c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE,
        }

    @property
    def selector(self) -> str:
        return f"{c.OWNER_CLUSTER_LABEL}={self.upper_cluster},{c.OWNER_NODE_LABEL}={self.node_name}"

    def owns(self, obj: JSON | None) -> bool:
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        return bool(
            labels.get(c.OWNER_CLUSTER_LABEL) == self.upper_cluster and labels.get(c.OWNER_NODE_LABEL) == self.node_name
        )


def _is_token_volume(volume: JSON) -> bool:
    if not volume.get("name", "").startswith(c.SERVICE_ACCOUNT_TOKEN_PREFIX):
        return False
    sources = (volume.get("projected") or {}).get("sources") or []
    return any("serviceAccountToken" in s for s in sources)


def _clean_meta(meta: JSON, owner: Owner, extra_annotations: dict[str, str] | None = None) -> JSON:
    out: JSON = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    labels = dict(meta.get("labels") or {})
    labels.update(owner.labels)
    out["labels"] = labels
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items()
        if k != c.LAST_APPLIED_ANNOTATION and not k.startswith(c.CONTROLLER_ANNOTATION_PREFIXES)
    }
    annotations.update(extra_annotations or {})
    if annotations:
        out["annotations"] = annotations
    return out


def lower_pod(upper: JSON, owner: Owner) -> JSON:
    """The lower copy of ``upper``. Raises ``ValueError`` on a malformed clusterSelector."""
    meta = upper.get("metadata") or {}
    spec = copy.deepcopy(upper.get("spec") or {})
    out_meta = _clean_meta(meta, owner, {c.UPPER_UID_ANNOTATION: str(meta.get("uid", ""))})
    out_meta["labels"][c.VIRTUAL_POD_LABEL] = c.VIRTUAL_POD_VALUE

    for field in _DROPPED_SPEC_FIELDS:
        spec.pop(field, None)
    if spec.get("priorityClassName") not in BUILTIN_PRIORITY_CLASSES:
        spec.pop("priorityClassName", None)

    # The upper token would not authenticate against the lower apiserver; the
    # lower ServiceAccount admission mounts the lower cluster's own token.
    dropped = {v["name"] for v in spec.get("volumes") or [] if _is_token_volume(v)}
    if dropped:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in dropped]
        for field in ("initContainers", "containers"):
            for container in spec.get(field) or []:
                mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") not in dropped]
                if mounts:
                    container["volumeMounts"] = mounts
                else:
                    container.pop("volumeMounts", None)

    annotation = (meta.get("annotations") or {}).get(c.CLUSTER_SELECTOR_ANNOTATION)
    spec = cluster_selector.restore_constraints(spec, annotation)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": out_meta, "spec": spec}


def _map_diff(current: dict[str, str], desired: dict[str, str]) -> dict[str, str | None]:
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch


def _tol_key(t: JSON) -> tuple[Any, ...]:
    return (t.get("key"), t.get("operator"), t.get("value"), t.get("effect"), t.get("tolerationSeconds"))


def pod_update_patch(desired: JSON, lower: JSON) -> JSON | None:
    """A strategic-merge patch bringing the mutable fields of ``lower`` to ``desired``.

    ``desired`` is ``lower_pod(upper)``. Kubernetes lets a running pod change
    its images, labels, annotations, activeDeadlineSeconds, and add
    tolerations; nothing else is attempted (the apiserver would refuse it).
    """
    patch: JSON = {}
    dmeta, lmeta = desired.get("metadata") or {}, lower.get("metadata") or {}
    meta_patch: JSON = {}
    for field in ("labels", "annotations"):
        diff = _map_diff(lmeta.get(field) or {}, dmeta.get(field) or {})
        if diff:
            meta_patch[field] = diff
    if meta_patch:
        patch["metadata"] = meta_patch

    dspec, lspec = desired.get("spec") or {}, lower.get("spec") or {}
    spec_patch: JSON = {}
    for field in ("initContainers", "containers"):
        current = {x.get("name"): x.get("image") for x in lspec.get(field) or []}
        changed = [
            {"name": x.get("name"), "image": x.get("image")}
            for x in dspec.get(field) or []
            if x.get("name") in current and current[x.get("name")] != x.get("image")
        ]
        if changed:
            spec_patch[field] = changed
    if dspec.get("activeDeadlineSeconds") != lspec.get("activeDeadlineSeconds") and dspec.get(
        "activeDeadlineSeconds"
    ) is not None:
        spec_patch["activeDeadlineSeconds"] = dspec["activeDeadlineSeconds"]
    have = {_tol_key(t) for t in lspec.get("tolerations") or []}
    added = [t for t in dspec.get("tolerations") or [] if _tol_key(t) not in have]
    if added:
        spec_patch["tolerations"] = list(lspec.get("tolerations") or []) + added
    if spec_patch:
        patch["spec"] = spec_patch
    return patch or None


#: Status fields that belong to the upper pod and are kept as they are.
_UPPER_OWNED_STATUS = ("qosClass", "nominatedNodeName", "resize", "resourceClaimStatuses")


def upper_status(lower: JSON, upper: JSON, node_ip: str) -> JSON:
    """The status the upper pod should have, given its lower copy."""
    lstatus = copy.deepcopy(lower.get("status") or {})
    ustatus = upper.get("status") or {}
    status: JSON = {k: v for k, v in lstatus.items() if k not in _UPPER_OWNED_STATUS and k not in ("hostIP", "hostIPs")}
    for k in _UPPER_OWNED_STATUS:
        if k in ustatus:
            status[k] = ustatus[k]
    if "phase" in status or "podIP" in status:
        status["hostIP"] = node_ip
        status["hostIPs"] = [{"ip": node_ip}]
    # Conditions set upstairs (readiness gates, DisruptionTarget) that the lower pod
    # cannot know about are kept; the rest mirror the lower pod.
    lower_types = {cond.get("type") for cond in status.get("conditions") or []}
    kept = [cond for cond in ustatus.get("conditions") or [] if cond.get("type") not in lower_types and cond.get(
        "type") not in ("PodScheduled", "Initialized", "Ready", "ContainersReady", "PodReadyToStartContainers")]
    if kept:
        status["conditions"] = list(status.get("conditions") or []) + kept
    return status


def status_patch(current: JSON, desired: JSON) -> JSON | None:
    """A merge patch for ``/status`` turning ``current`` into ``desired``; None if equal."""
    if current == desired:
        return None
    patch: JSON = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return {"status": patch} if patch else None


def failed_status(upper: JSON, reason: str, message: str) -> JSON:
    """The upper pod's status once its lower copy vanished out of band."""
    status = copy.deepcopy(upper.get("status") or {})
    status.update({"phase": "Failed", "reason": reason, "message": message})
    for cs in status.get("containerStatuses") or []:
        cs["ready"] = False
        if "running" in (cs.get("state") or {}):
            cs["state"] = {"terminated": {"exitCode": 137, "reason": reason,
                                          "startedAt": cs["state"]["running"].get("startedAt")}}
    conds = []
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Ready", "ContainersReady"):
            cond = {**cond, "status": "False", "reason": reason}
        conds.append(cond)
    if conds:
        status["conditions"] = conds
    return status


# --- dependencies -------------------------------------------------------------------

def lower_object(resource: str, upper: JSON, owner: Owner) -> JSON:
    """The lower copy of an upper ConfigMap, Secret, PVC, ServiceAccount or Service."""
    body = lower_object_meta_only(upper, owner)
    if resource == "configmaps":
        body.update(apiVersion="v1", kind="ConfigMap")
        for f in ("data", "binaryData", "immutable"):
            if f in upper:
                body[f] = upper[f]
    elif resource == "secrets":
        body.update(apiVersion="v1", kind="Secret", type=upper.get("type", "Opaque"))
        for f in ("data", "immutable"):
            if f in upper:
                body[f] = upper[f]
        if body["type"] == "kubernetes.io/service-account-token":
            body["type"] = "Opaque"  # the lower token controller would overwrite it otherwise
    elif resource == "persistentvolumeclaims":
        spec = upper.get("spec") or {}
        body.update(apiVersion="v1", kind="PersistentVolumeClaim", spec={
            k: spec[k] for k in ("accessModes", "resources", "storageClassName", "volumeMode") if k in spec
        })
    elif resource == "serviceaccounts":
        body.update(apiVersion="v1", kind="ServiceAccount")
    elif resource == "services":
        spec = upper.get("spec") or {}
        ports = [{k: v for k, v in p.items() if k != "nodePort"} for p in spec.get("ports") or []]
        new_spec: JSON = {k: spec[k] for k in ("selector", "type", "sessionAffinity", "publishNotReadyAddresses",
                                                "ipFamilyPolicy", "ipFamilies", "internalTrafficPolicy") if k in spec}
        if new_spec.get("type") in ("LoadBalancer", "NodePort"):
            new_spec["type"] = "ClusterIP"  # the lower cluster serves in-cluster traffic only
        if spec.get("clusterIP") == "None":
            new_spec["clusterIP"] = "None"  # headless stays headless
        new_spec["ports"] = ports
        body.update(apiVersion="v1", kind="Service", spec=new_spec)
    else:
        raise ValueError(f"unsupported dependency resource {resource!r}")
    return body


def lower_service(upper: JSON, owner: Owner, flat_network: bool) -> JSON:
    """A Service copy. With a flat pod network it has no selector: its EndpointSlices are copied instead."""
    body = lower_object("services", upper, owner)
    if flat_network:
        body["spec"].pop("selector", None)
    return body


def lower_endpointslice(upper: JSON, owner: Owner) -> JSON:
    """An upper EndpointSlice for ``--flat-network``: the upper pod IPs, routable from the lower cluster."""
    body = lower_object_meta_only(upper, owner)
    body["metadata"]["labels"][c.ENDPOINTSLICE_MANAGED_BY_LABEL] = c.ENDPOINTSLICE_MANAGER
    body.update(apiVersion="discovery.k8s.io/v1", kind="EndpointSlice",
                addressType=upper.get("addressType", "IPv4"), ports=upper.get("ports") or [])
    body["endpoints"] = [
        {k: v for k, v in e.items() if k in ("addresses", "conditions", "hostname")}
        for e in upper.get("endpoints") or []
    ]
    return body


def lower_object_meta_only(upper: JSON, owner: Owner) -> JSON:
    meta = upper.get("metadata") or {}
    return {"metadata": _clean_meta(meta, owner, {
        c.GLOBAL_ANNOTATION: c.GLOBAL_VALUE,
        c.UPPER_RESOURCE_VERSION_ANNOTATION: str(meta.get("resourceVersion", "")),
    })}


def needs_update(resource: str, desired: JSON, lower: JSON) -> bool:
    """Whether the lower copy lags the upper object (by recorded upper resourceVersion)."""
    if resource in ("persistentvolumeclaims", "serviceaccounts"):
        return False  # PVC specs are immutable; SAs carry nothing we copy
    want = desired["metadata"]["annotations"].get(c.UPPER_RESOURCE_VERSION_ANNOTATION)
    have = ((lower.get("metadata") or {}).get("annotations") or {}).get(c.UPPER_RESOURCE_VERSION_ANNOTATION)
    return bool(want != have)


def lower_namespace(name: str, owner: Owner) -> JSON:
    labels = dict(owner.labels)
    labels[c.NAMESPACE_CREATED_LABEL] = "true"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
