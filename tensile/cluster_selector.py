"""The ``clusterSelector`` annotation: a pod's real scheduling constraints, set aside.

The webhook saves ``{"nodeSelector", "affinity", "tolerations"}`` here (Tensile
Kube's format) before it rewrites them for the upper scheduler; the virtual
node reads them back for the lower copy. Both sides use this module so the
format lives in one place. Pure: no I/O.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]


def encode(spec: JSON) -> str:
    saved: JSON = {}
    for field in ("nodeSelector", "affinity", "tolerations"):
        if spec.get(field) is not None:
            saved[field] = spec[field]
    return json.dumps(saved, sort_keys=True, separators=(",", ":"))


def decode(value: str) -> JSON:
    """Parse the annotation; raises ``ValueError`` with a readable message."""
    try:
        saved = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"annotation {c.CLUSTER_SELECTOR_ANNOTATION} is not JSON: {exc}") from exc
    if not isinstance(saved, dict):
        raise ValueError(f"annotation {c.CLUSTER_SELECTOR_ANNOTATION} must be a JSON object")
    if not isinstance(saved.get("nodeSelector") or {}, dict):
        raise ValueError(f"annotation {c.CLUSTER_SELECTOR_ANNOTATION}: nodeSelector must be an object")
    if not isinstance(saved.get("affinity") or {}, dict):
        raise ValueError(f"annotation {c.CLUSTER_SELECTOR_ANNOTATION}: affinity must be an object")
    if not isinstance(saved.get("tolerations") or [], list):
        raise ValueError(f"annotation {c.CLUSTER_SELECTOR_ANNOTATION}: tolerations must be a list")
    return saved


def is_provider_toleration(toleration: JSON) -> bool:
    return bool(toleration.get("key") == c.PROVIDER_TAINT_KEY)


def is_virtual_selector(key: str, values: list[str] | str | None) -> bool:
    """A selector that only virtual nodes satisfy: ``clusterID`` or ``type=virtual-kubelet``."""
    if key == c.CLUSTER_ID_LABEL:
        return True
    vals = [values] if isinstance(values, str) else list(values or [])
    return key == c.VIRTUAL_NODE_TYPE_LABEL and vals == [c.VIRTUAL_NODE_TYPE_VALUE]


def _strip_required(affinity: JSON | None) -> JSON | None:
    """Drop required node-affinity expressions only virtual nodes satisfy; drop emptied terms and blocks."""
    if not affinity:
        return affinity
    affinity = copy.deepcopy(affinity)
    node_aff = affinity.get("nodeAffinity") or {}
    required = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required:
        terms = []
        for term in required.get("nodeSelectorTerms") or []:
            exprs = [
                e for e in term.get("matchExpressions") or []
                if not is_virtual_selector(e.get("key", ""), e.get("values"))
            ]
            fields = list(term.get("matchFields") or [])
            if exprs or fields:
                new_term: JSON = {}
                if exprs:
                    new_term["matchExpressions"] = exprs
                if fields:
                    new_term["matchFields"] = fields
                terms.append(new_term)
        if terms:
            required["nodeSelectorTerms"] = terms
        else:
            node_aff.pop("requiredDuringSchedulingIgnoredDuringExecution", None)
    if "nodeAffinity" in affinity and not affinity["nodeAffinity"]:
        affinity.pop("nodeAffinity")
    return affinity or None


def lower_constraints(spec: JSON, annotation: str | None) -> JSON:
    """The lower copy's ``nodeSelector``/``affinity``/``tolerations``.

    With the annotation, the originals come back. Either way, constraints that
    only make sense for virtual nodes are removed so the lower scheduler can
    place the pod on a real node and never on a virtual node of a mesh:
    ``clusterID`` and ``type=virtual-kubelet`` selectors and the provider-taint
    toleration.
    """
    if annotation:
        saved = decode(annotation)
        node_selector = dict(saved.get("nodeSelector") or {})
        affinity = copy.deepcopy(spec.get("affinity") or {})
        original_node_aff = (saved.get("affinity") or {}).get("nodeAffinity")
        if original_node_aff:
            affinity["nodeAffinity"] = copy.deepcopy(original_node_aff)
        else:
            affinity.pop("nodeAffinity", None)
        tolerations = list(saved.get("tolerations") or [])
    else:
        node_selector = dict(spec.get("nodeSelector") or {})
        affinity = copy.deepcopy(spec.get("affinity") or {})
        tolerations = list(spec.get("tolerations") or [])
    node_selector = {k: v for k, v in node_selector.items() if not is_virtual_selector(k, v)}
    return {
        "nodeSelector": node_selector or None,
        "affinity": _strip_required(affinity),
        "tolerations": [t for t in tolerations if not is_provider_toleration(t)] or None,
    }
