"""The ``clusterSelector`` annotation: a pod's real scheduling constraints, set aside.

The webhook saves ``{"nodeSelector", "affinity", "tolerations"}`` here (Tensile
Kube's format) before it relaxes them for the upper scheduler; the virtual node
puts them back on the lower copy with :func:`restore_constraints`. Both sides
use this module, so the format and the affinity arithmetic live in one place.
Pure: plain dicts in and out, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    PROVIDER_TAINT_KEY,
    VIRTUAL_NODE_TYPE_LABEL,
    VIRTUAL_NODE_TYPE_VALUE,
)

JSONObject = dict[str, Any]

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_REQUIRED = REQUIRED
#: The fields saved in the annotation, in Tensile Kube's order.
SAVED_FIELDS = ("nodeSelector", "affinity", "tolerations")


class MalformedPodError(ValueError):
    """The pod (or a clusterSelector annotation) does not have the shape of a Kubernetes object."""



def as_object(value: Any, where: str) -> JSONObject | None:
    """``value`` as a JSON object, ``None`` when absent/null; anything else is malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedPodError(f"{where} must be an object, not {type(value).__name__}")
    return value


def as_array(value: Any, where: str) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise MalformedPodError(f"{where} must be an array, not {type(value).__name__}")
    return value


def as_tolerations(value: Any, where: str) -> list[JSONObject] | None:
    items = as_array(value, where)
    if items is None:
        return None
    for i, item in enumerate(items):
        toleration = as_object(item, f"{where}[{i}]")
        if toleration is None:
            raise MalformedPodError(f"{where}[{i}] must be an object, not null")
        seconds = toleration.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise MalformedPodError(f"{where}[{i}].tolerationSeconds must be an integer")
    return items


def filter_required(required: JSONObject, drop: Callable[[str], bool], where: str) -> JSONObject | None:
    """Remove the requirements whose key satisfies ``drop`` from a required node-affinity block.

    Terms are ORed and the requirements inside a term are ANDed. A term that loses *all* its
    requirements no longer constrains anything, so the whole OR is unconstrained and the block is
    dropped (returns ``None``). Terms that were empty to begin with (they match no node) are kept
    as they are. A block left with no term at all is dropped too: an empty ``nodeSelectorTerms``
    list is invalid in Kubernetes. Returns ``required`` itself when nothing changed.
    """
    terms = as_array(required.get("nodeSelectorTerms"), f"{where}.nodeSelectorTerms")
    if not terms:
        return None
    new_terms: list[Any] = []
    changed = False
    for i, raw_term in enumerate(terms):
        term_where = f"{where}.nodeSelectorTerms[{i}]"
        term = as_object(raw_term, term_where)
        if term is None:
            new_terms.append(raw_term)
            continue
        kept: dict[str, list[Any]] = {}
        removed = False
        for field in ("matchExpressions", "matchFields"):
            requirements = as_array(term.get(field), f"{term_where}.{field}") or []
            survivors = []
            for j, raw in enumerate(requirements):
                requirement_where = f"{term_where}.{field}[{j}]"
                requirement = as_object(raw, requirement_where)
                if requirement is None:
                    raise MalformedPodError(f"{requirement_where} must be an object, not null")
                key = requirement.get("key")
                if not isinstance(key, str):
                    raise MalformedPodError(f"{requirement_where}.key must be a string")
                if drop(key):
                    removed = True
                else:
                    survivors.append(raw)
            kept[field] = survivors
        if not removed:
            new_terms.append(term)
            continue
        changed = True
        if not kept["matchExpressions"] and not kept["matchFields"]:
            return None
        new_term = dict(term)
        for field, survivors in kept.items():
            if survivors:
                new_term[field] = survivors
            else:
                new_term.pop(field, None)
        new_terms.append(new_term)
    if not changed:
        return required
    return {**required, "nodeSelectorTerms": new_terms}


def node_affinity_of(affinity: JSONObject | None, where: str) -> JSONObject | None:
    if affinity is None:
        return None
    return as_object(affinity.get("nodeAffinity"), f"{where}.nodeAffinity")


def required_of(affinity: JSONObject | None, where: str) -> JSONObject | None:
    node_affinity = node_affinity_of(affinity, where)
    if node_affinity is None:
        return None
    return as_object(node_affinity.get(_REQUIRED), f"{where}.nodeAffinity.{_REQUIRED}")


def with_required(affinity: JSONObject | None, required: JSONObject | None, keep_empty: bool) -> JSONObject:
    """A copy of ``affinity`` whose required node affinity is ``required`` (``None`` = none).

    Preferred node affinity, podAffinity and podAntiAffinity are carried over untouched. An emptied
    ``nodeAffinity`` is dropped unless ``keep_empty``.
    """
    result = dict(affinity) if affinity is not None else {}
    node_affinity = result.get("nodeAffinity")
    new_node_affinity = dict(node_affinity) if isinstance(node_affinity, dict) else {}
    new_node_affinity.pop(_REQUIRED, None)
    if required is not None:
        new_node_affinity[_REQUIRED] = required
    if new_node_affinity or keep_empty:
        result["nodeAffinity"] = new_node_affinity
    else:
        result.pop("nodeAffinity", None)
    return result


def _parse_annotation(value: str) -> tuple[JSONObject | None, JSONObject | None, list[JSONObject] | None]:
    where = f"annotation {CLUSTER_SELECTOR_ANNOTATION}"
    if not isinstance(value, str):
        raise MalformedPodError(f"{where} must be a string")
    try:
        saved = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedPodError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(saved, dict):
        raise MalformedPodError(f"{where} must be a JSON object, not {type(saved).__name__}")
    selector = as_object(saved.get("nodeSelector"), f"{where}: nodeSelector")
    affinity = as_object(saved.get("affinity"), f"{where}: affinity")
    # Validate the nested shape now so a bad annotation fails here, not halfway through a copy.
    required_of(affinity, f"{where}: affinity")
    tolerations = as_tolerations(saved.get("tolerations"), f"{where}: tolerations")
    return selector, affinity, tolerations


def _drop_keys(required: JSONObject | None, keys: Iterable[str], where: str) -> JSONObject | None:
    key_set = frozenset(keys)
    if required is None or not key_set:
        return required
    return filter_required(required, lambda key: key in key_set, where)


def restore_constraints(
    pod_spec: JSONObject,
    annotation_value: str | None,
    *,
    upper_only_keys: frozenset[str] = frozenset({CLUSTER_ID_LABEL}),
) -> JSONObject:
    """The lower copy's spec: ``pod_spec`` with the constraints saved by :func:`mutate_pod` put back.

    - ``nodeSelector`` and ``tolerations`` become the original ones (absent if they were absent);
    - the required node affinity becomes the original one, while the upper pod's preferred node
      affinity, podAffinity and podAntiAffinity are kept;
    - tolerations of the virtual-node provider taint are removed, so the lower copy can never land
      on a virtual node of the lower cluster (in a mesh);
    - ``type=virtual-kubelet`` is in the nodeSelector only if it was in the original.

    ``upper_only_keys`` are node-label keys that exist only on *virtual* nodes (the webhook's ignore
    keys, ``clusterID`` by default): a ``clusterID`` selector pinned the pod to a virtual node, and
    lower nodes do not carry the label, so restoring it would leave the lower copy Pending. They are
    left out of the restored nodeSelector and required node affinity. Pass ``frozenset()`` to
    restore exactly the original.

    With ``annotation_value`` ``None`` (the pod was never mutated) the spec is copied as it is,
    except for what only virtual nodes satisfy: the provider-taint tolerations, a
    ``type=virtual-kubelet`` selector and ``upper_only_keys`` selectors and requirements.

    Returns a new dict and never modifies ``pod_spec``; fields other than the three restored ones are
    shared with ``pod_spec``, not deep-copied. Raises ``ValueError`` (:class:`MalformedPodError`) for
    a malformed annotation.
    """
    spec = dict(pod_spec)
    if annotation_value is None:
        current = as_tolerations(spec.get("tolerations"), "spec.tolerations")
        if current is not None:
            spec["tolerations"] = [t for t in current if t.get("key") != PROVIDER_TAINT_KEY]
        selector = as_object(spec.get("nodeSelector"), "spec.nodeSelector")
        if selector is not None:
            kept = {k: v for k, v in selector.items() if k not in upper_only_keys
                    and not (k == VIRTUAL_NODE_TYPE_LABEL and v == VIRTUAL_NODE_TYPE_VALUE)}
            if kept:
                spec["nodeSelector"] = kept
            else:
                spec.pop("nodeSelector", None)
        upper_affinity = as_object(spec.get("affinity"), "spec.affinity")
        required = required_of(upper_affinity, "spec.affinity")
        if required is not None:
            new_required = _drop_keys(required, upper_only_keys, f"spec.affinity.nodeAffinity.{_REQUIRED}")
            if new_required is not required:
                new_affinity = with_required(upper_affinity, new_required, keep_empty=False)
                if new_affinity:
                    spec["affinity"] = new_affinity
                else:
                    spec.pop("affinity", None)
        return spec

    selector, affinity, tolerations = _parse_annotation(annotation_value)
    where = f"annotation {CLUSTER_SELECTOR_ANNOTATION}: affinity.nodeAffinity.{_REQUIRED}"

    if selector is None:
        spec.pop("nodeSelector", None)
    else:
        spec["nodeSelector"] = {k: v for k, v in selector.items() if k not in upper_only_keys}

    required = _drop_keys(required_of(affinity, "affinity"), upper_only_keys, where)
    upper_affinity = as_object(spec.get("affinity"), "spec.affinity")
    had_node_affinity = node_affinity_of(affinity, "affinity") is not None
    new_affinity = with_required(upper_affinity, required, keep_empty=had_node_affinity)
    if new_affinity or upper_affinity is not None or affinity is not None:
        spec["affinity"] = new_affinity
    else:
        spec.pop("affinity", None)

    if tolerations is None:
        spec.pop("tolerations", None)
    else:
        spec["tolerations"] = [t for t in tolerations if t.get("key") != PROVIDER_TAINT_KEY]
    return spec


def encode(spec: JSONObject) -> str:
    """The annotation value for ``spec``: its scheduling fields that are set."""
    saved = {field: spec[field] for field in SAVED_FIELDS if spec.get(field) is not None}
    try:
        return orjson.dumps(saved).decode()
    except TypeError as exc:  # only reachable with non-JSON Python values
        raise MalformedPodError(f"pod scheduling fields are not JSON: {exc}") from exc


def decode(value: str) -> JSONObject:
    """Parse and validate the annotation; raises :class:`MalformedPodError` (a ``ValueError``)."""
    selector, affinity, tolerations = _parse_annotation(value)
    saved: JSONObject = {}
    for field, v in zip(SAVED_FIELDS, (selector, affinity, tolerations), strict=True):
        if v is not None:
            saved[field] = v
    return saved

