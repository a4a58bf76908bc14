"""Fold constraints that another webhook added after ours into the saved originals.

The webhook is registered with ``reinvocationPolicy: IfNeeded``, so the apiserver calls it again
when a webhook after it changed the pod. If that webhook added a lower-node constraint (a
nodeSelector entry, a toleration, a required node affinity, spreading, a hostname anti-affinity
term), the upper pod now asks for something no virtual node has and stays Pending, and the lower
copy would not get the constraint at all. So on a re-invocation the webhook compares the pod with
what its own relaxation produced (:func:`additions`), adds what is new to the originals saved in the
annotation (:func:`fold`), and relaxes again.

Only additions count, and only the fields they were added to are relaxed again: a constraint a
later webhook removed stays removed, upstairs and, for tolerations, downstairs too (the virtual node
restores only saved tolerations the upper pod still covers).

Pure: plain dicts in and out, no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tensile.cluster_selector import (
    AFFINITY_LISTS,
    SPREAD_FIELD,
    JSONObject,
    SavedConstraints,
    affinity_items,
    as_array,
    as_object,
    as_objects,
    as_tolerations,
    required_of,
    with_items,
    with_required,
)
from tensile.conventions import VIRTUAL_NODE_TYPE_LABEL, VIRTUAL_NODE_TYPE_VALUE

__all__ = ["additions", "both", "fold"]


def additions(spec: JSONObject, produced: JSONObject) -> JSONObject:
    """What the pod spec ``spec`` carries that the webhook's relaxation (``produced``) did not put there.

    ``produced`` is a partial pod spec (a missing field is absent). The result is one too, empty
    when nothing was added: nodeSelector entries (other than ``type=virtual-kubelet``), tolerations,
    topology spread constraints and affinity list items that were not produced, and the whole
    required node affinity when it differs from the produced one. Raises ``MalformedPodError``.
    """
    found: JSONObject = {}
    selector = _selector_additions(as_object(spec.get("nodeSelector"), "spec.nodeSelector"), produced)
    if selector:
        found["nodeSelector"] = selector
    lists = {
        "tolerations": as_tolerations(spec.get("tolerations"), "spec.tolerations"),
        SPREAD_FIELD: as_objects(spec.get(SPREAD_FIELD), f"spec.{SPREAD_FIELD}"),
    }
    for field, current in lists.items():
        new = _new_items(current or [], produced.get(field) or [])
        if new:
            found[field] = new
    affinity = _affinity_additions(as_object(spec.get("affinity"), "spec.affinity"), produced.get("affinity"))
    if affinity:
        found["affinity"] = affinity
    return found


def fold(saved: SavedConstraints, added: JSONObject) -> SavedConstraints:
    """``saved`` with ``added`` (from :func:`additions`) folded in.

    New nodeSelector entries win over saved ones, list items not saved yet are appended, and a new
    required node affinity is ANDed with the saved one (:func:`both`). An addition that is already
    saved changes nothing: a pod created from a copy of its own manifest (the upper scheduler's
    spec, the saved annotation) is relaxed again, and keeps its annotation as it was.
    """
    return dataclasses.replace(
        saved,
        node_selector=_merged(saved.node_selector, added.get("nodeSelector")),
        affinity=_folded_affinity(saved.affinity, added.get("affinity")),
        tolerations=_appended(saved.tolerations, added.get("tolerations")),
        topology_spread_constraints=_appended(saved.topology_spread_constraints, added.get(SPREAD_FIELD)),
    )


def both(first: JSONObject | None, second: JSONObject) -> JSONObject:
    """A required node affinity satisfied exactly where both ``first`` and ``second`` are.

    Terms are ORed and requirements ANDed, so the result has one term per pair of terms, holding
    the requirements of both. An empty term matches no node, and so does any pair it is part of.
    """
    first_terms, second_terms = _terms(first, "affinity"), _terms(second, "spec.affinity")
    if first == second:
        return second
    # A block without terms constrains nothing (see filter_required).
    if not first_terms:
        return second
    if not second_terms:
        return first or second
    terms: list[JSONObject] = []
    for a in first_terms:
        for b in second_terms:
            term = _both_terms(a, b)
            if term not in terms:
                terms.append(term)
    return {**(first or {}), "nodeSelectorTerms": terms}


# --- helpers ------------------------------------------------------------------------------------------


def _selector_additions(current: JSONObject | None, produced: JSONObject) -> JSONObject:
    ours = produced.get("nodeSelector") or {}
    return {
        key: value
        for key, value in (current or {}).items()
        if ours.get(key) != value and not (key == VIRTUAL_NODE_TYPE_LABEL and value == VIRTUAL_NODE_TYPE_VALUE)
    }


def _new_items(current: list[Any], produced: list[Any]) -> list[Any]:
    return [item for item in current if item not in produced]


def _affinity_additions(current: JSONObject | None, produced: JSONObject | None) -> JSONObject:
    found: JSONObject = {}
    for part, field in AFFINITY_LISTS:
        new = _new_items(
            affinity_items(current, part, field, "spec.affinity"), affinity_items(produced, part, field, "affinity")
        )
        if new:
            found = with_items(found, part, field, new)
    required = required_of(current, "spec.affinity")
    if _terms(required, "spec.affinity") and required != required_of(produced, "affinity"):
        found = with_required(found, required, keep_empty=False)
    return found


def _folded_affinity(saved: JSONObject | None, added: JSONObject | None) -> JSONObject | None:
    if not added:
        return saved
    affinity = dict(saved or {})
    for part, field in AFFINITY_LISTS:
        new = affinity_items(added, part, field, "affinity")
        merged = _appended(affinity_items(affinity, part, field, "affinity"), new)
        if merged:
            affinity = with_items(affinity, part, field, merged)
    required = required_of(added, "affinity")
    if required is not None:
        affinity = with_required(affinity, both(required_of(affinity, "affinity"), required), keep_empty=False)
    return affinity


def _terms(required: JSONObject | None, where: str) -> list[JSONObject]:
    if required is None:
        return []
    return as_objects(required.get("nodeSelectorTerms"), f"{where}.nodeSelectorTerms") or []


def _both_terms(a: JSONObject, b: JSONObject) -> JSONObject:
    fields = ("matchExpressions", "matchFields")
    requirements = {field: (_requirements(a, field), _requirements(b, field)) for field in fields}
    if not any(mine for mine, _ in requirements.values()) or not any(theirs for _, theirs in requirements.values()):
        return {}
    term: JSONObject = {}
    for field, (mine, theirs) in requirements.items():
        combined = mine + [r for r in theirs if r not in mine]
        if combined:
            term[field] = combined
    return term


def _requirements(term: JSONObject, field: str) -> list[Any]:
    return list(as_array(term.get(field), f"nodeSelectorTerms[].{field}") or [])


def _merged(saved: JSONObject | None, added: JSONObject | None) -> JSONObject | None:
    return saved if not added else {**(saved or {}), **added}


def _appended(saved: list[Any] | None, added: list[Any] | None) -> list[Any] | None:
    new = [item for item in added or [] if item not in (saved or [])]
    return saved if not new else [*(saved or []), *new]
