"""Move a pod's lower-node constraints aside so the upper scheduler can place it on a virtual node.

A pod meant for a lower cluster says which *lower* nodes it wants (nodeSelector, required node
affinity) and which *lower* taints it tolerates. The upper scheduler only sees virtual nodes, which
carry none of those labels, so such a pod would stay Pending upstairs. The admission webhook calls
:func:`mutate_pod` to save the original constraints in the ``clusterSelector`` annotation (Tensile
Kube's format) and relax them; the virtual node calls
``tensile.cluster_selector.restore_constraints`` to put them back on
the lower copy, where the lower scheduler honours them.

This module is pure: plain dicts in (pods decoded from JSON), plain dicts out, no I/O and no
Kubernetes client, so it can be tested exhaustively.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tensile import cluster_selector
from tensile.cluster_selector import (
    REQUIRED,
    MalformedPodError,
    as_object,
    as_tolerations,
    filter_required,
    required_of,
    with_required,
)
from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    KUBE_SYSTEM,
    NOT_READY_TAINT,
    PROVIDER_TAINT_EFFECT,
    PROVIDER_TAINT_KEY,
    PROVIDER_TAINT_VALUE,
    UNREACHABLE_TAINT,
    VIRTUAL_NODE_TYPE_LABEL,
    VIRTUAL_NODE_TYPE_VALUE,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)

__all__ = [
    "JSONPatch",
    "MalformedPodError",
    "MutateOptions",
    "is_opted_in",
    "mutate_pod",
    "pointer_escape",
]

JSONObject = dict[str, Any]
JSONPatch = list[JSONObject]

_REQUIRED = REQUIRED
_NO_EXECUTE = "NoExecute"
_EXISTS = "Exists"
_EQUAL = "Equal"


@dataclasses.dataclass(frozen=True)
class MutateOptions:
    """How :func:`mutate_pod` relaxes a pod.

    ``ignore_selector_keys`` are node-label keys that describe *virtual* nodes (by default
    ``clusterID``), so nodeSelector entries and required node-affinity requirements on them are kept
    on the upper pod: that is how a user pins a pod to one lower cluster.

    ``unreachable_toleration_seconds`` bounds the NoExecute tolerations added for the not-ready and
    unreachable taints. The default ``None`` tolerates them forever, as Tensile Kube does: a virtual
    node going NotReady means tensile itself blipped (restart, lost Lease), not that the workload
    died, and evicting the upper pod would delete and recreate running work in the lower cluster.
    Real lower-node failures are still handled by the lower cluster, because the lower copy carries
    the user's original tolerations.
    """

    ignore_selector_keys: frozenset[str] = frozenset({CLUSTER_ID_LABEL})
    add_virtual_node_selector: bool = True
    add_unreachable_tolerations: bool = True
    unreachable_toleration_seconds: int | None = None


# --- small helpers --------------------------------------------------------------------------------


def pointer_escape(token: str) -> str:
    """Escape one JSON-Pointer reference token (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")








def _tolerates(toleration: JSONObject, key: str, value: str, effect: str) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint`` on plain dicts."""
    t_effect = toleration.get("effect") or ""
    if t_effect and t_effect != effect:
        return False
    t_key = toleration.get("key") or ""
    if t_key and t_key != key:
        return False
    operator = toleration.get("operator") or _EQUAL
    if operator == _EXISTS:
        return True
    if operator == _EQUAL:
        return (toleration.get("value") or "") == value
    return False


def _lasts_at_least(toleration: JSONObject, seconds: int | None) -> bool:
    """Does ``toleration`` keep a pod bound for at least ``seconds`` (``None`` = forever)?"""
    mine = toleration.get("tolerationSeconds")
    if mine is None:
        return True
    return seconds is not None and int(mine) >= seconds


def is_opted_in(pod: JSONObject) -> bool:
    """Is the pod labelled ``virtual-pod=true``?"""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        return False
    labels = metadata.get("labels")
    return isinstance(labels, dict) and labels.get(VIRTUAL_POD_LABEL) == VIRTUAL_POD_VALUE










# --- the mutation ---------------------------------------------------------------------------------


def _relaxed_node_selector(selector: JSONObject | None, options: MutateOptions) -> JSONObject:
    kept = {k: v for k, v in (selector or {}).items() if k in options.ignore_selector_keys}
    if options.add_virtual_node_selector:
        kept[VIRTUAL_NODE_TYPE_LABEL] = VIRTUAL_NODE_TYPE_VALUE
    return kept


def _upper_tolerations(original: list[JSONObject], options: MutateOptions) -> list[JSONObject]:
    """The user's tolerations plus the ones a pod needs to run on a virtual node.

    The user's tolerations stay: they are harmless on virtual nodes. The exception is a *bounded*
    NoExecute toleration of the not-ready/unreachable taints that is shorter than ours (normally the
    300 s ones the DefaultTolerationSeconds admission plugin adds before webhooks run): the taint
    manager evicts after the shortest matching toleration, so keeping it would defeat ours. The
    originals are still restored on the lower copy from the annotation.
    """
    seconds = options.unreachable_toleration_seconds
    node_taints = (NOT_READY_TAINT, UNREACHABLE_TAINT) if options.add_unreachable_tolerations else ()
    result = [
        t
        for t in original
        if not (
            t.get("key") in node_taints
            and t.get("effect") == _NO_EXECUTE
            and t.get("tolerationSeconds") is not None
            and not _lasts_at_least(t, seconds)
        )
    ]
    if not any(_tolerates(t, PROVIDER_TAINT_KEY, PROVIDER_TAINT_VALUE, PROVIDER_TAINT_EFFECT) for t in result):
        result.append({"key": PROVIDER_TAINT_KEY, "operator": _EXISTS, "effect": PROVIDER_TAINT_EFFECT})
    for taint in node_taints:
        if any(_tolerates(t, taint, "", _NO_EXECUTE) and _lasts_at_least(t, seconds) for t in result):
            continue
        toleration: JSONObject = {"key": taint, "operator": _EXISTS, "effect": _NO_EXECUTE}
        if seconds is not None:
            toleration["tolerationSeconds"] = seconds
        result.append(toleration)
    return result


def _set(path: str, value: Any) -> JSONObject:
    # "add" creates the member or replaces it (RFC 6902 4.1), so it is valid whether or not the
    # apiserver's serialisation has the field (it omits empty maps and lists).
    return {"op": "add", "path": path, "value": value}




def mutate_pod(pod: JSONObject, options: MutateOptions | None = None, *, namespace: str | None = None) -> JSONPatch:
    """The RFC 6902 JSON patch that lets an opted-in pod schedule onto a virtual node.

    Returns ``[]`` (no change) when the pod is not labelled ``virtual-pod=true``, lives in
    ``kube-system``, or already carries the ``clusterSelector`` annotation. The last rule makes the
    mutation idempotent, so the webhook is safe with ``reinvocationPolicy: IfNeeded``.

    ``namespace`` is the request's namespace, used when the object itself has none.

    Raises :class:`MalformedPodError` (a ``ValueError``) when a field has the wrong JSON type.
    """
    options = options or MutateOptions()
    if not isinstance(pod, dict):
        raise MalformedPodError("pod must be an object")
    if not is_opted_in(pod):
        return []
    metadata: JSONObject = pod["metadata"]
    annotations = as_object(metadata.get("annotations"), "metadata.annotations")
    pod_namespace = metadata.get("namespace") or namespace
    if pod_namespace == KUBE_SYSTEM or (annotations is not None and CLUSTER_SELECTOR_ANNOTATION in annotations):
        return []
    spec = as_object(pod.get("spec"), "spec")
    if spec is None:
        raise MalformedPodError("pod has no spec")
    node_selector = as_object(spec.get("nodeSelector"), "spec.nodeSelector")
    affinity = as_object(spec.get("affinity"), "spec.affinity")
    tolerations = as_tolerations(spec.get("tolerations"), "spec.tolerations") or []
    saved = cluster_selector.encode(spec)

    patch: JSONPatch = []
    if annotations:
        patch.append(_set("/metadata/annotations/" + pointer_escape(CLUSTER_SELECTOR_ANNOTATION), saved))
    else:
        patch.append(_set("/metadata/annotations", {CLUSTER_SELECTOR_ANNOTATION: saved}))

    new_selector = _relaxed_node_selector(node_selector, options)
    if new_selector != (node_selector or {}):
        if new_selector:
            patch.append(_set("/spec/nodeSelector", new_selector))
        else:  # the old selector is non-empty, so the path exists
            patch.append({"op": "remove", "path": "/spec/nodeSelector"})

    required = required_of(affinity, "spec.affinity")
    if required is not None:
        where = f"spec.affinity.nodeAffinity.{_REQUIRED}"
        new_required = filter_required(required, lambda key: key not in options.ignore_selector_keys, where)
        if new_required is not required:
            new_affinity = with_required(affinity, new_required, keep_empty=False)
            if new_affinity:
                patch.append(_set("/spec/affinity", new_affinity))
            else:  # the old affinity held a required block, so the path exists
                patch.append({"op": "remove", "path": "/spec/affinity"})

    new_tolerations = _upper_tolerations(tolerations, options)
    if new_tolerations != tolerations:
        patch.append(_set("/spec/tolerations", new_tolerations))
    return patch


# --- the inverse ----------------------------------------------------------------------------------






