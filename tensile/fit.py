"""Does a pod fit a node: kube-scheduler's filter rules on plain dicts.

The capacity profile (:mod:`tensile.profile`) and the scheduler extender ask the same questions a
kube-scheduler asks of one node, so they are answered here once, with Kubernetes' semantics:

- ``nodeSelector``: every pair must be a label of the node (``NodeAffinity`` plugin);
- required node affinity: the terms are ORed, the requirements of a term ANDed, and a term with no
  requirement matches nothing. Operators ``In``, ``NotIn``, ``Exists``, ``DoesNotExist``, ``Gt`` and
  ``Lt`` on labels (``NotIn`` and ``DoesNotExist`` match a node without the label; ``Gt``/``Lt``
  compare integers and never match a missing or non-integer label); ``matchFields`` only on
  ``metadata.name``, with ``In`` and ``NotIn``;
- taints: every ``NoSchedule`` and ``NoExecute`` taint must be tolerated (``TaintToleration``);
  ``PreferNoSchedule`` only scores, so it never filters;
- resources (``NodeResourcesFit``: only what the pod requests is compared, ``pods`` always) are
  compared on integer vectors by :meth:`tensile.profile.Profile.assess`.

Pure: plain dicts in, answers out. A malformed constraint (which the API server would have refused)
raises :class:`~tensile.cluster_selector.MalformedPodError`, never a crash of the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tensile.cluster_selector import REQUIRED, MalformedPodError, as_array, as_object, tolerates

JSONObject = dict[str, Any]

#: Taint effects that keep a pod off a node; ``PreferNoSchedule`` only lowers its score.
FILTER_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
#: The one field ``matchFields`` may name.
NAME_FIELD = "metadata.name"


def _int_label(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def requirement_matches(requirement: JSONObject, labels: Mapping[str, str]) -> bool:
    """One ``matchExpressions`` entry against a node's labels."""
    key = requirement.get("key")
    operator = requirement.get("operator")
    values = requirement.get("values") or []
    if not isinstance(key, str) or not isinstance(values, list):
        raise MalformedPodError(f"node selector requirement {requirement!r} is malformed")
    value = labels.get(key)
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt"):
        if len(values) != 1 or _int_label(str(values[0])) is None:
            raise MalformedPodError(f"{operator} needs exactly one integer value, not {values!r}")
        have = _int_label(value)
        want = int(str(values[0]))
        return have is not None and (have > want if operator == "Gt" else have < want)
    raise MalformedPodError(f"unknown node selector operator {operator!r}")


def field_matches(requirement: JSONObject, name: str | None) -> bool | None:
    """One ``matchFields`` entry against a node's name; ``None``: the name is not known."""
    if requirement.get("key") != NAME_FIELD:
        raise MalformedPodError(f"matchFields supports only {NAME_FIELD}, not {requirement.get('key')!r}")
    operator = requirement.get("operator")
    values = requirement.get("values") or []
    if operator not in ("In", "NotIn") or not isinstance(values, list):
        raise MalformedPodError(f"matchFields on {NAME_FIELD} supports In and NotIn, not {operator!r}")
    if name is None:
        return None
    return bool((name in values) == (operator == "In"))


def term_matches(term: JSONObject, labels: Mapping[str, str], name: str | None) -> bool:
    """One node selector term. With ``name`` ``None`` a ``matchFields`` entry is assumed to match.

    That is what the capacity profile does: it does not carry node names (5,000 of them would not
    fit its size bound), so a pod pinned to a lower node by name is given the benefit of the doubt
    and the lower scheduler decides.
    """
    expressions = as_array(term.get("matchExpressions"), "matchExpressions") or []
    fields = as_array(term.get("matchFields"), "matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches no node
    for raw in expressions:
        requirement = as_object(raw, "matchExpressions[]")
        if requirement is None or not requirement_matches(requirement, labels):
            return False
    for raw in fields:
        requirement = as_object(raw, "matchFields[]")
        if requirement is None or field_matches(requirement, name) is False:
            return False
    return True


def required_matches(required: JSONObject | None, labels: Mapping[str, str], name: str | None = None) -> bool:
    """A ``requiredDuringSchedulingIgnoredDuringExecution`` block; ``None`` matches every node."""
    if required is None:
        return True
    terms = as_array(required.get("nodeSelectorTerms"), "nodeSelectorTerms") or []
    return any(term_matches(as_object(t, "nodeSelectorTerms[]") or {}, labels, name) for t in terms)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """``spec.nodeSelector``."""
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def node_affinity_required(spec: JSONObject) -> JSONObject | None:
    affinity = as_object(spec.get("affinity"), "spec.affinity") or {}
    node_affinity = as_object(affinity.get("nodeAffinity"), "spec.affinity.nodeAffinity") or {}
    return as_object(node_affinity.get(REQUIRED), f"spec.affinity.nodeAffinity.{REQUIRED}")


def placement_matches(spec: JSONObject, labels: Mapping[str, str], name: str | None = None) -> bool:
    """nodeSelector and required node affinity of the pod spec ``spec`` against one node."""
    selector = as_object(spec.get("nodeSelector"), "spec.nodeSelector")
    return selector_matches(selector, labels) and required_matches(node_affinity_required(spec), labels, name)


def untolerated(taints: Iterable[Mapping[str, Any]], tolerations: Sequence[JSONObject]) -> Mapping[str, Any] | None:
    """The first ``NoSchedule``/``NoExecute`` taint no toleration tolerates, or ``None``."""
    for taint in taints:
        effect = taint.get("effect") or ""
        if effect not in FILTER_EFFECTS:
            continue
        key, value = taint.get("key") or "", taint.get("value") or ""
        if not any(tolerates(t, key, value, effect) for t in tolerations):
            return taint
    return None


def describe_taint(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint.get('key')}{'=' + str(value) if value else ''}:{taint.get('effect')}"
