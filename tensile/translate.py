"""Pure translations between the upper and the lower cluster. No I/O.

- ``lower_pod``: the copy of an upper pod that runs in the lower cluster.
- ``pod_update_patch``: what Kubernetes lets change on a running pod,
  brought from the upper pod to its lower copy.
- ``ephemeral_containers_patch``: ``kubectl debug`` containers for the copy.
- (the upper pod's status is ``pod_status``'s.)
- ``lower_object``: ConfigMap/Secret/PVC/ServiceAccount/Service copies.

Every lower object records which upper cluster and which virtual node own
it (labels, so the lower caches can filter server-side), and lower pods
record the upper pod's UID. Tensile Kube records neither, which is why it
cannot share a lower cluster or clean up after a restart.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from tensile import cluster_selector, origin, selectors
from tensile import conventions as c
from tensile.namespacing import SAME_NAMESPACES, NamespaceMapping

JSON = dict[str, Any]

#: PriorityClasses that exist in every cluster; other names may not exist downstairs.
BUILTIN_PRIORITY_CLASSES = frozenset({"system-cluster-critical", "system-node-critical"})
#: Pod spec fields the apiserver or the lower admission chain fills in again. ``overhead`` comes
#: from the upper RuntimeClass; the lower RuntimeClass admission sets its own, and rejects a pod
#: whose overhead does not match its RuntimeClass.
_DROPPED_SPEC_FIELDS = ("nodeName", "priority", "preemptionPolicy", "ephemeralContainers", "readinessGates",
                        "schedulerName", "serviceAccount", "schedulingGates", "resourceClaims", "overhead")
#: Node labels every virtual node sets on itself that no real lower node carries. Selectors on
#: them (the ACI walkthrough's ``kubernetes.io/role: agent``) chose the virtual node upstairs and
#: must not reach the lower copy, or it stays Pending forever.
VIRTUAL_NODE_KEYS = frozenset({c.VIRTUAL_NODE_TYPE_LABEL, c.ROLE_LABEL, c.HOSTNAME_LABEL, c.CLUSTER_ID_LABEL,
                               c.LOWER_CLUSTER_LABEL})


def is_virtual_node(node: JSON) -> bool:
    """A Node carrying ``type=virtual-kubelet`` (tensile's, Tensile Kube's or another virtual kubelet's)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, dict) and labels.get(c.VIRTUAL_NODE_TYPE_LABEL) == c.VIRTUAL_NODE_TYPE_VALUE


def is_daemonset_pod(pod: JSON) -> bool:
    """A pod a DaemonSet controls: accepted by a virtual node but never copied (see ``pods.py``)."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners)


def virtual_node_keys(node_labels: dict[str, str]) -> frozenset[str]:
    """The keys only this virtual node satisfies: the fixed ones and every ``--node-label``."""
    return VIRTUAL_NODE_KEYS | frozenset(node_labels)


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who owns a lower object: the upper cluster's id and the virtual node's name.

    ``namespaces`` says where the owner's copies live downstairs; ``lower_cluster`` is the lower
    cluster's kube-system UID, the last link of the origin chain on its pod copies.
    """

    upper_cluster: str
    node_name: str
    namespaces: NamespaceMapping = SAME_NAMESPACES
    lower_cluster: str = ""

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

    @property
    def others_selectors(self) -> tuple[str, str]:
        """Label selectors that together match every object :attr:`selector` does not, and none it does:
        another upper cluster's (or nobody's), and this upper cluster's other virtual nodes'."""
        return (f"{c.OWNER_CLUSTER_LABEL}!={self.upper_cluster}",
                f"{c.OWNER_CLUSTER_LABEL}={self.upper_cluster},{c.OWNER_NODE_LABEL}!={self.node_name}")

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
    namespace = str(meta.get("namespace") or "")
    out: JSON = {"name": meta.get("name"), "namespace": owner.namespaces.lower(namespace)}
    labels = dict(meta.get("labels") or {})
    labels.update(owner.labels)
    out["labels"] = labels
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items()
        if k != c.LAST_APPLIED_ANNOTATION and not k.startswith(c.CONTROLLER_ANNOTATION_PREFIXES)
    }
    annotations.update(extra_annotations or {})
    annotations.update(owner.namespaces.annotations(namespace))
    if annotations:
        out["annotations"] = annotations
    return out


def _strip_mounts(containers: list[JSON], dropped: set[str]) -> None:
    for container in containers:
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") not in dropped]
        if mounts:
            container["volumeMounts"] = mounts
        else:
            container.pop("volumeMounts", None)


def _token_volumes(spec: JSON) -> set[str]:
    return {v["name"] for v in spec.get("volumes") or [] if _is_token_volume(v)}


def managed_keys(lower: JSON) -> dict[str, list[str]]:
    """The label and annotation keys tensile wrote on ``lower`` (empty for copies made before it recorded them)."""
    raw = ((lower.get("metadata") or {}).get("annotations") or {}).get(c.MANAGED_METADATA_ANNOTATION)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: [str(x) for x in v] for k, v in value.items() if k in ("labels", "annotations") and isinstance(v, list)}


def _record_managed_keys(meta: JSON) -> None:
    annotations = meta.setdefault("annotations", {})
    annotations.pop(c.MANAGED_METADATA_ANNOTATION, None)
    record = {"labels": sorted(meta.get("labels") or {}), "annotations": sorted(annotations)}
    annotations[c.MANAGED_METADATA_ANNOTATION] = json.dumps(record, separators=(",", ":"))


def unsupported_reason(upper: JSON) -> str | None:
    """Why ``upper`` cannot run in another cluster at all; None when it can be copied.

    Dynamic resource allocation: the ResourceClaims and their allocations live in the upper
    cluster, so a lower copy would be rejected (its containers name claims it does not have) or,
    with the claims stripped, run without the devices it asked for.
    """
    spec = upper.get("spec") or {}
    claims = [cl.get("name") for cl in spec.get("resourceClaims") or []]
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            claims += [cl.get("name") for cl in (container.get("resources") or {}).get("claims") or []]
    if claims:
        names = ", ".join(sorted({str(n) for n in claims if n}))
        return (f"the pod uses dynamic resource allocation (resource claims {names}); claims are allocated in "
                "the upper cluster and cannot be honoured in a lower cluster")
    return None


def _honoured_cluster_selector(meta: JSON) -> tuple[str | None, bool]:
    """(the clusterSelector annotation to restore, or None; whether the pod opted in)."""
    opted_in = (meta.get("labels") or {}).get(c.VIRTUAL_POD_LABEL) == c.VIRTUAL_POD_VALUE
    annotation = (meta.get("annotations") or {}).get(c.CLUSTER_SELECTOR_ANNOTATION) if opted_in else None
    return annotation, opted_in


def scheduling_spec(upper: JSON, upper_only_keys: frozenset[str] = VIRTUAL_NODE_KEYS) -> JSON:
    """The spec the lower scheduler will see, as far as placement goes: :func:`lower_pod`'s restore.

    The scheduler extender asks "does this pod fit a lower node" of exactly the constraints the
    virtual node will put on the copy. Shares the pod spec (nothing is deep-copied); raises
    ``ValueError`` on a malformed clusterSelector.
    """
    annotation, _ = _honoured_cluster_selector(upper.get("metadata") or {})
    return cluster_selector.restore_constraints(upper.get("spec") or {}, annotation, upper_only_keys=upper_only_keys)


def lower_pod(upper: JSON, owner: Owner, upper_only_keys: frozenset[str] = VIRTUAL_NODE_KEYS,
              pool: tuple[JSON, ...] = ()) -> JSON:
    """The lower copy of ``upper``. Raises ``ValueError`` on a malformed clusterSelector.

    ``upper_only_keys`` are the node-label keys only the virtual node satisfies
    (:func:`virtual_node_keys`); selectors on them are left out of the copy. ``pool`` are the
    node-selector requirements of ``--lower-node-selector``: the copy must land on the pool's nodes.

    The ``clusterSelector`` annotation is honoured only on pods that opted in with
    ``virtual-pod=true``: those are the pods the webhook admitted (and signed). Any other pod
    carrying it wrote it itself, and upper admission never saw those constraints.
    """
    meta = upper.get("metadata") or {}
    spec = copy.deepcopy(upper.get("spec") or {})
    chain = origin.extended(origin.chain_of(upper), owner.upper_cluster, owner.lower_cluster)
    out_meta = _clean_meta(meta, owner, {c.UPPER_UID_ANNOTATION: str(meta.get("uid", "")),
                                         c.ORIGIN_CHAIN_ANNOTATION: origin.encode(chain)})
    out_meta["labels"][c.VIRTUAL_POD_LABEL] = c.VIRTUAL_POD_VALUE

    for field in _DROPPED_SPEC_FIELDS:
        spec.pop(field, None)
    if spec.get("priorityClassName") not in BUILTIN_PRIORITY_CLASSES:
        spec.pop("priorityClassName", None)

    # The upper token would not authenticate against the lower apiserver; the
    # lower ServiceAccount admission mounts the lower cluster's own token.
    dropped = _token_volumes(spec)
    if dropped:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in dropped]
        for field in ("initContainers", "containers"):
            _strip_mounts(spec.get(field) or [], dropped)

    annotation, opted_in = _honoured_cluster_selector(meta)
    spec = cluster_selector.restore_constraints(spec, annotation, upper_only_keys=upper_only_keys)
    spec = selectors.pinned(spec, list(pool))
    if owner.namespaces.mapped:
        _map_affinity_namespaces(spec, owner.namespaces)
    if not opted_in and c.CLUSTER_SELECTOR_ANNOTATION in out_meta.get("annotations", {}):
        del out_meta["annotations"][c.CLUSTER_SELECTOR_ANNOTATION]
    _record_managed_keys(out_meta)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": out_meta, "spec": spec}


def _map_affinity_namespaces(spec: JSON, mapping: NamespaceMapping) -> None:
    """Pod (anti-)affinity terms that name namespaces name the lower ones (in place, on a copy)."""
    affinity = spec.get("affinity") or {}
    for kind in ("podAffinity", "podAntiAffinity"):
        section = affinity.get(kind) or {}
        terms = list(section.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        terms += [w.get("podAffinityTerm") or {} for w in section.get("preferredDuringSchedulingIgnoredDuringExecution")
                  or []]
        for term in terms:
            if term.get("namespaces"):
                term["namespaces"] = [mapping.lower(str(ns)) for ns in term["namespaces"]]


def _map_diff(current: dict[str, str], desired: dict[str, str], managed: list[str]) -> dict[str, str | None]:
    """Set what ``desired`` says; remove only keys tensile wrote before (``managed``) and no longer wants."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in managed if k in current and k not in desired})
    return patch


def _tol_key(t: JSON) -> tuple[Any, ...]:
    return (t.get("key"), t.get("operator"), t.get("value"), t.get("effect"), t.get("tolerationSeconds"))


def pod_update_patch(desired: JSON, lower: JSON) -> JSON | None:
    """A strategic-merge patch bringing the mutable fields of ``lower`` to ``desired``.

    ``desired`` is ``lower_pod(upper)``. Kubernetes lets a running pod change
    its images, labels, annotations, activeDeadlineSeconds, and add
    tolerations; nothing else is attempted (the apiserver would refuse it).
    Labels and annotations the lower cluster added are never removed: only
    keys recorded as tensile's are.
    """
    patch: JSON = {}
    dmeta, lmeta = desired.get("metadata") or {}, lower.get("metadata") or {}
    managed = managed_keys(lower)
    meta_patch: JSON = {}
    for field in ("labels", "annotations"):
        diff = _map_diff(lmeta.get(field) or {}, dmeta.get(field) or {}, managed.get(field, []))
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


def ephemeral_containers_patch(upper: JSON, lower: JSON) -> JSON | None:
    """The ``ephemeralcontainers`` subresource patch adding what ``kubectl debug`` added upstairs.

    Ephemeral containers can only be added (never changed or removed), so the
    patch lists the lower ones plus the new upper ones. Mounts of the upper
    token volume, which the copy does not have, are left out.
    """
    have = {e.get("name") for e in (lower.get("spec") or {}).get("ephemeralContainers") or []}
    upper_spec = upper.get("spec") or {}
    new = [copy.deepcopy(e) for e in upper_spec.get("ephemeralContainers") or [] if e.get("name") not in have]
    if not new:
        return None
    _strip_mounts(new, _token_volumes(upper_spec))
    current = list((lower.get("spec") or {}).get("ephemeralContainers") or [])
    return {"spec": {"ephemeralContainers": current + new}}


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
        new_spec: JSON = {k: spec[k] for k in _SERVICE_SPEC_FIELDS if k in spec}
        if new_spec.get("type") in ("LoadBalancer", "NodePort"):
            new_spec["type"] = "ClusterIP"  # the lower cluster serves in-cluster traffic only
        if spec.get("clusterIP") == "None":
            new_spec["clusterIP"] = "None"  # headless stays headless
        new_spec["ports"] = ports
        body.update(apiVersion="v1", kind="Service", spec=new_spec)
    else:
        raise ValueError(f"unsupported dependency resource {resource!r}")
    return body


#: Service spec fields that mean the same in any cluster; IPs and node ports are the lower cluster's own.
_SERVICE_SPEC_FIELDS = ("selector", "type", "sessionAffinity", "sessionAffinityConfig", "publishNotReadyAddresses",
                        "ipFamilyPolicy", "ipFamilies", "internalTrafficPolicy", "trafficDistribution")


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
        c.UPPER_UID_ANNOTATION: str(meta.get("uid", "")),
    })}


#: CSI driver name on mirror volumes. Nothing serves it: the upper cluster never mounts them.
MIRROR_VOLUME_DRIVER = "tensile.io"


def mirror_volume_name(upper_claim_uid: str) -> str:
    """``pvc-<uid>``, the name dynamic provisioners give a claim's volume."""
    return f"pvc-{upper_claim_uid}"


def mirror_volume(upper_claim: JSON, lower_claim: JSON, owner: Owner) -> JSON:
    """An upper PV standing for the lower claim's volume, pre-bound to the upper claim."""
    meta = upper_claim.get("metadata") or {}
    uspec = upper_claim.get("spec") or {}
    lstatus = lower_claim.get("status") or {}
    lower_volume = (lower_claim.get("spec") or {}).get("volumeName", "")
    spec: JSON = {
        "capacity": lstatus.get("capacity") or (uspec.get("resources") or {}).get("requests") or {},
        "accessModes": lstatus.get("accessModes") or uspec.get("accessModes") or ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta.get("namespace"),
                     "name": meta.get("name"), "uid": meta.get("uid")},
        "csi": {"driver": MIRROR_VOLUME_DRIVER,
                "volumeHandle": f"{owner.node_name}/{meta.get('namespace')}/{lower_volume}"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": c.HOSTNAME_LABEL, "operator": "In", "values": [owner.node_name]}]}]}},
    }
    for field in ("storageClassName", "volumeMode"):
        if uspec.get(field) is not None:
            spec[field] = uspec[field]
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": mirror_volume_name(str(meta.get("uid", ""))), "labels": owner.labels,
                         "annotations": {c.LOWER_VOLUME_ANNOTATION: lower_volume}},
            "spec": spec}


def _storage_request(pvc: JSON) -> Any:
    return (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")


def pvc_resize_patch(desired: JSON, lower: JSON) -> JSON | None:
    """The patch growing a lower PVC copy to the upper request: the one PVC spec change Kubernetes allows."""
    want = _storage_request(desired)
    if want is None or want == _storage_request(lower):
        return None
    return {"spec": {"resources": {"requests": {"storage": want}}}}


def needs_update(resource: str, desired: JSON, lower: JSON) -> bool:
    """Whether the lower copy lags the upper object (by recorded upper resourceVersion)."""
    if resource == "serviceaccounts":
        return False  # SAs carry nothing we copy
    if resource == "persistentvolumeclaims":
        return pvc_resize_patch(desired, lower) is not None  # all but the request is immutable
    want = desired["metadata"]["annotations"].get(c.UPPER_RESOURCE_VERSION_ANNOTATION)
    have = ((lower.get("metadata") or {}).get("annotations") or {}).get(c.UPPER_RESOURCE_VERSION_ANNOTATION)
    return bool(want != have)


def lower_namespace(upper_namespace: str, owner: Owner) -> JSON:
    """The lower namespace for ``upper_namespace`` (named by the owner's namespace mapping)."""
    labels = dict(owner.labels)
    labels[c.NAMESPACE_CREATED_LABEL] = "true"
    meta: JSON = {"name": owner.namespaces.lower(upper_namespace), "labels": labels}
    if annotations := owner.namespaces.annotations(upper_namespace):
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
