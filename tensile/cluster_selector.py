"""The ``clusterSelector`` annotation: a pod's real scheduling constraints, set aside.

The webhook saves a pod's original scheduling constraints here before it relaxes them for the upper
scheduler; the virtual node puts them back on the lower copy with :func:`restore_constraints`. Both
sides use this module, so the format and the constraint arithmetic live in one place.

The value stays Tensile Kube's JSON object ``{"nodeSelector", "affinity", "tolerations"}``, so either
side can still be paired with Tensile Kube's. Tensile adds two fields, which Go's encoding/json
ignores:

- ``topologySpreadConstraints``: the original list, present only when the pod had any. The webhook
  removes the required ones upstairs (a virtual node is a whole cluster, not a host), so the lower
  copy needs them from here.
- ``ignoreSelectorKeys``: the webhook's ``--ignore-selector-keys``, sorted. Selectors on those keys
  stayed on the upper pod because only virtual nodes carry them, so the lower copy must not get them
  back. Recording them here makes the webhook the one source of truth, instead of two flags (the
  webhook's and the virtual node's) that must agree.

An annotation with ``ignoreSelectorKeys`` was written by tensile's webhook. One without it was
written by Tensile Kube (or an older tensile), whose webhook never touched pod (anti-)affinity or
spreading, so for such annotations the upper pod's are the originals.

Pure: plain dicts in and out, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    NOT_READY_TAINT,
    PROVIDER_TAINT_KEY,
    UNREACHABLE_TAINT,
    VIRTUAL_NODE_TYPE_LABEL,
    VIRTUAL_NODE_TYPE_VALUE,
)

JSONObject = dict[str, Any]

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
#: The fields saved in the annotation, in Tensile Kube's order.
SAVED_FIELDS = ("nodeSelector", "affinity", "tolerations")
SPREAD_FIELD = "topologySpreadConstraints"
IGNORE_KEYS_FIELD = "ignoreSelectorKeys"
#: The lists inside an affinity, as ``(part, field)``; the required node affinity is not a list.
AFFINITY_LISTS = (
    ("nodeAffinity", PREFERRED),
    ("podAffinity", REQUIRED),
    ("podAffinity", PREFERRED),
    ("podAntiAffinity", REQUIRED),
    ("podAntiAffinity", PREFERRED),
)

_ANNOTATION = f"annotation {CLUSTER_SELECTOR_ANNOTATION}"
_NO_EXECUTE = "NoExecute"
_EXISTS = "Exists"
_EQUAL = "Equal"


class MalformedPodError(ValueError):
    """The pod (or a clusterSelector annotation) does not have the shape of a Kubernetes object."""


# --- shape checks ----------------------------------------------------------------------------------


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


def as_objects(value: Any, where: str) -> list[JSONObject] | None:
    """An array of objects (no nulls), ``None`` when absent."""
    items = as_array(value, where)
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise MalformedPodError(f"{where}[{i}] must be an object, not {type(item).__name__}")
    return items


def as_tolerations(value: Any, where: str) -> list[JSONObject] | None:
    items = as_objects(value, where)
    for i, toleration in enumerate(items or []):
        seconds = toleration.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise MalformedPodError(f"{where}[{i}].tolerationSeconds must be an integer")
    return items


def affinity_items(affinity: JSONObject | None, part: str, field: str, where: str) -> list[JSONObject]:
    """``affinity[part][field]`` (one of :data:`AFFINITY_LISTS`), ``[]`` when absent."""
    if affinity is None:
        return []
    inner = as_object(affinity.get(part), f"{where}.{part}")
    return (as_objects(inner.get(field), f"{where}.{part}.{field}") if inner else None) or []


def check_affinity(affinity: JSONObject | None, where: str) -> JSONObject | None:
    """``affinity`` itself, after checking every part the webhook or the virtual node reads."""
    required = required_of(affinity, where)
    if required is not None:
        as_objects(required.get("nodeSelectorTerms"), f"{where}.nodeAffinity.{REQUIRED}.nodeSelectorTerms")
    for part, field in AFFINITY_LISTS:
        affinity_items(affinity, part, field, where)
    return affinity


# --- affinity arithmetic ------------------------------------------------------------------------------


def filter_required(required: JSONObject, drop: Callable[[str], bool], where: str,
                    keep: Callable[[JSONObject], bool] | None = None) -> JSONObject | None:
    """Remove the requirements whose key satisfies ``drop`` (unless ``keep`` says otherwise) from a
    required node-affinity block.

    Terms are ORed and the requirements inside a term are ANDed. A term that loses *all* its
    requirements no longer constrains anything, so the whole OR is unconstrained and the block is
    dropped (returns ``None``). Terms that were empty to begin with (they match no node) are kept
    as they are, and a filtered term equal to one already kept is not repeated. A block left with no
    term at all is dropped too: an empty ``nodeSelectorTerms`` list is invalid in Kubernetes.
    Returns ``required`` itself when nothing changed.
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
                if drop(key) and not (keep is not None and keep(requirement)):
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
        if new_term not in new_terms:  # "A or A" is "A"
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
    return as_object(node_affinity.get(REQUIRED), f"{where}.nodeAffinity.{REQUIRED}")


def with_required(affinity: JSONObject | None, required: JSONObject | None, keep_empty: bool) -> JSONObject:
    """A copy of ``affinity`` whose required node affinity is ``required`` (``None`` = none).

    Preferred node affinity, podAffinity and podAntiAffinity are carried over untouched. An emptied
    ``nodeAffinity`` is dropped unless ``keep_empty``.
    """
    result = dict(affinity) if affinity is not None else {}
    node_affinity = result.get("nodeAffinity")
    new_node_affinity = dict(node_affinity) if isinstance(node_affinity, dict) else {}
    new_node_affinity.pop(REQUIRED, None)
    if required is not None:
        new_node_affinity[REQUIRED] = required
    if new_node_affinity or keep_empty:
        result["nodeAffinity"] = new_node_affinity
    else:
        result.pop("nodeAffinity", None)
    return result


def with_items(affinity: JSONObject | None, part: str, field: str, items: list[JSONObject]) -> JSONObject:
    """A copy of ``affinity`` with ``affinity[part][field] = items``; levels left empty are dropped."""
    result = dict(affinity) if affinity is not None else {}
    inner = result.get(part)
    new_inner = dict(inner) if isinstance(inner, dict) else {}
    if items:
        new_inner[field] = items
    else:
        new_inner.pop(field, None)
    if new_inner:
        result[part] = new_inner
    else:
        result.pop(part, None)
    return result


def _drop_keys(required: JSONObject | None, keys: Iterable[str], where: str) -> JSONObject | None:
    key_set = frozenset(keys)
    if required is None or not key_set:
        return required
    return filter_required(required, lambda key: key in key_set, where)


# --- tolerations ----------------------------------------------------------------------------------------


def tolerates(toleration: JSONObject, key: str, value: str, effect: str) -> bool:
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


def covers(broad: JSONObject, narrow: JSONObject) -> bool:
    """Does ``broad`` tolerate every taint ``narrow`` tolerates, for at least as long?

    Broader means: no key with ``Exists`` (every key), ``Exists`` on the same key (every value), no
    effect (every effect), and no ``tolerationSeconds`` (forever) over a bounded one. A toleration
    with an unknown operator tolerates nothing and is covered only by an identical one.
    """
    if broad == narrow:
        return True
    broad_operator, narrow_operator = broad.get("operator") or _EQUAL, narrow.get("operator") or _EQUAL
    if broad_operator not in (_EQUAL, _EXISTS) or narrow_operator not in (_EQUAL, _EXISTS):
        return False
    same_value = narrow_operator == _EQUAL and (broad.get("value") or "") == (narrow.get("value") or "")
    return (
        _every_or_same(broad, narrow, "key")
        and _every_or_same(broad, narrow, "effect")
        and (broad_operator == _EXISTS or same_value)
        and _lasts_as_long(broad.get("tolerationSeconds"), narrow.get("tolerationSeconds"))
    )


def _every_or_same(broad: JSONObject, narrow: JSONObject, field: str) -> bool:
    """An empty ``key`` or ``effect`` matches every key or effect."""
    mine = broad.get(field) or ""
    return not mine or mine == (narrow.get(field) or "")


def _lasts_as_long(broad: int | None, narrow: int | None) -> bool:
    return broad is None or (narrow is not None and broad >= narrow)


def is_virtual_node_toleration(toleration: JSONObject) -> bool:
    """Is this one of the tolerations the webhook adds so a pod can run on a virtual node?

    The provider taint's (of any shape), and ``Exists`` NoExecute tolerations of the not-ready and
    unreachable taints. They belong to the upper pod only.
    """
    key = toleration.get("key")
    if key == PROVIDER_TAINT_KEY:
        return True
    return (
        key in (NOT_READY_TAINT, UNREACHABLE_TAINT)
        and toleration.get("operator") == _EXISTS
        and toleration.get("effect") == _NO_EXECUTE
    )


# --- the annotation ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SavedConstraints:
    """What a ``clusterSelector`` annotation holds: a pod's original scheduling constraints.

    A ``None`` field was absent. ``ignore_selector_keys`` is ``None`` for an annotation written by
    Tensile Kube or an older tensile (see the module docstring).
    """

    node_selector: JSONObject | None = None
    affinity: JSONObject | None = None
    tolerations: list[JSONObject] | None = None
    topology_spread_constraints: list[JSONObject] | None = None
    ignore_selector_keys: frozenset[str] | None = None

    @classmethod
    def from_spec(cls, spec: JSONObject, ignore_selector_keys: frozenset[str] | None = None) -> SavedConstraints:
        """The scheduling constraints of the pod spec ``spec``; raises :class:`MalformedPodError`."""
        return cls(
            node_selector=as_object(spec.get("nodeSelector"), "spec.nodeSelector"),
            affinity=check_affinity(as_object(spec.get("affinity"), "spec.affinity"), "spec.affinity"),
            tolerations=as_tolerations(spec.get("tolerations"), "spec.tolerations"),
            topology_spread_constraints=as_objects(spec.get(SPREAD_FIELD), f"spec.{SPREAD_FIELD}") or None,
            ignore_selector_keys=ignore_selector_keys,
        )

    @property
    def written_by_tensile(self) -> bool:
        return self.ignore_selector_keys is not None

    def as_json(self) -> JSONObject:
        """The annotation's JSON object: Tensile Kube's fields in its order, then tensile's; only those set."""
        saved: JSONObject = {}
        values = (self.node_selector, self.affinity, self.tolerations, self.topology_spread_constraints)
        for field, value in zip((*SAVED_FIELDS, SPREAD_FIELD), values, strict=True):
            if value is not None:
                saved[field] = value
        if self.ignore_selector_keys is not None:
            saved[IGNORE_KEYS_FIELD] = sorted(self.ignore_selector_keys)
        return saved

    def encode(self) -> str:
        """The annotation value."""
        try:
            return orjson.dumps(self.as_json()).decode()
        except TypeError as exc:  # only reachable with non-JSON Python values
            raise MalformedPodError(f"pod scheduling fields are not JSON: {exc}") from exc


def parse(value: object) -> SavedConstraints:
    """Parse and check an annotation value; raises :class:`MalformedPodError` (a ``ValueError``)."""
    if not isinstance(value, str):
        raise MalformedPodError(f"{_ANNOTATION} must be a string")
    try:
        saved = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedPodError(f"{_ANNOTATION} is not valid JSON: {exc}") from exc
    if not isinstance(saved, dict):
        raise MalformedPodError(f"{_ANNOTATION} must be a JSON object, not {type(saved).__name__}")
    where = f"{_ANNOTATION}: "
    return SavedConstraints(
        node_selector=as_object(saved.get("nodeSelector"), where + "nodeSelector"),
        affinity=check_affinity(as_object(saved.get("affinity"), where + "affinity"), where + "affinity"),
        tolerations=as_tolerations(saved.get("tolerations"), where + "tolerations"),
        topology_spread_constraints=as_objects(saved.get(SPREAD_FIELD), where + SPREAD_FIELD),
        ignore_selector_keys=_as_keys(saved.get(IGNORE_KEYS_FIELD), where + IGNORE_KEYS_FIELD),
    )


def _as_keys(value: Any, where: str) -> frozenset[str] | None:
    keys = as_array(value, where)
    if keys is None:
        return None
    if not all(isinstance(key, str) for key in keys):
        raise MalformedPodError(f"{where} must be an array of strings")
    return frozenset(keys)


def encode(spec: JSONObject) -> str:
    """The annotation value for ``spec``, in Tensile Kube's format (its scheduling fields that are set)."""
    return SavedConstraints.from_spec(spec).encode()


def decode(value: str) -> JSONObject:
    """Parse and check the annotation; its JSON object. Raises :class:`MalformedPodError`."""
    return parse(value).as_json()


# --- the lower copy -------------------------------------------------------------------------------------


def restore_constraints(
    pod_spec: JSONObject,
    annotation_value: str | None,
    *,
    upper_only_keys: frozenset[str] = frozenset({CLUSTER_ID_LABEL}),
) -> JSONObject:
    """The lower copy's spec: ``pod_spec`` with the constraints saved by the webhook put back.

    - ``nodeSelector`` becomes the original one (absent if it was absent);
    - the required node affinity becomes the original one. The rest of the affinity (preferred node
      affinity, pod affinity and anti-affinity) is the original too for an annotation tensile's
      webhook wrote, which removed hostname anti-affinity upstairs; for a Tensile Kube one it is the
      upper pod's, which that webhook left as it was;
    - ``topologySpreadConstraints`` become the original ones when the annotation saved them;
    - tolerations: see :func:`_restored_tolerations`. Tolerations of the virtual-node provider taint
      are never restored, so the lower copy can never land on a virtual node of the lower cluster;
    - ``type=virtual-kubelet`` is in the nodeSelector only if it was in the original.

    ``upper_only_keys``, together with the annotation's ``ignoreSelectorKeys``, are node-label keys
    that exist only on *virtual* nodes: a ``clusterID`` selector pinned the pod to a virtual node,
    and lower nodes do not carry the label, so restoring it would leave the lower copy Pending. They
    are left out of the restored nodeSelector and required node affinity.

    With ``annotation_value`` ``None`` (the pod was never mutated) the spec is copied as it is,
    except for what only virtual nodes satisfy: the provider-taint tolerations, a
    ``type=virtual-kubelet`` selector and ``upper_only_keys`` selectors and requirements.

    Returns a new dict and never modifies ``pod_spec``; fields other than the restored ones are
    shared with ``pod_spec``, not deep-copied. Raises ``ValueError`` (:class:`MalformedPodError`) for
    a malformed annotation.
    """
    spec = dict(pod_spec)
    if annotation_value is None:
        _shed_virtual_node_constraints(spec, upper_only_keys)
        return spec
    saved = parse(annotation_value)
    upper_only = upper_only_keys | (saved.ignore_selector_keys or frozenset())
    _restore_node_selector(spec, saved.node_selector, upper_only)
    _restore_affinity(spec, saved, upper_only)
    upper_tolerations = as_tolerations(spec.get("tolerations"), "spec.tolerations") or []
    tolerations = _restored_tolerations(upper_tolerations, saved.tolerations or [])
    _set_or_drop(spec, "tolerations", tolerations, keep_empty=saved.tolerations is not None)
    if saved.topology_spread_constraints is not None:
        spec[SPREAD_FIELD] = saved.topology_spread_constraints
    return spec


def _set_or_drop(spec: JSONObject, field: str, value: Any, *, keep_empty: bool) -> None:
    if value or keep_empty:
        spec[field] = value
    else:
        spec.pop(field, None)


def _is_virtual_node_selector(key: str, value: Any, upper_only: frozenset[str]) -> bool:
    return key in upper_only or (key == VIRTUAL_NODE_TYPE_LABEL and value == VIRTUAL_NODE_TYPE_VALUE)


def _shed_virtual_node_constraints(spec: JSONObject, upper_only: frozenset[str]) -> None:
    """An unmutated pod's copy: what only virtual nodes satisfy removed, the rest as it is."""
    current = as_tolerations(spec.get("tolerations"), "spec.tolerations")
    if current is not None:
        spec["tolerations"] = [t for t in current if t.get("key") != PROVIDER_TAINT_KEY]
    selector = as_object(spec.get("nodeSelector"), "spec.nodeSelector")
    if selector is not None:
        kept = {k: v for k, v in selector.items() if not _is_virtual_node_selector(k, v, upper_only)}
        _set_or_drop(spec, "nodeSelector", kept, keep_empty=False)
    upper_affinity = as_object(spec.get("affinity"), "spec.affinity")
    required = required_of(upper_affinity, "spec.affinity")
    if required is None:
        return
    new_required = _drop_keys(required, upper_only, f"spec.affinity.nodeAffinity.{REQUIRED}")
    if new_required is not required:
        _set_or_drop(spec, "affinity", with_required(upper_affinity, new_required, keep_empty=False), keep_empty=False)


def _restore_node_selector(spec: JSONObject, selector: JSONObject | None, upper_only: frozenset[str]) -> None:
    if selector is None:
        spec.pop("nodeSelector", None)
    else:
        spec["nodeSelector"] = {k: v for k, v in selector.items() if k not in upper_only}


def _restore_affinity(spec: JSONObject, saved: SavedConstraints, upper_only: frozenset[str]) -> None:
    where = f"{_ANNOTATION}: affinity.nodeAffinity.{REQUIRED}"
    required = _drop_keys(required_of(saved.affinity, "affinity"), upper_only, where)
    upper_affinity = as_object(spec.get("affinity"), "spec.affinity")
    base = saved.affinity if saved.written_by_tensile else upper_affinity
    had_node_affinity = node_affinity_of(saved.affinity, "affinity") is not None
    affinity = with_required(base, required, keep_empty=had_node_affinity)
    present = base is not None or saved.affinity is not None
    _set_or_drop(spec, "affinity", affinity, keep_empty=present)


def _restored_tolerations(upper: list[JSONObject], saved: list[JSONObject]) -> list[JSONObject]:
    """The lower copy's tolerations: the saved originals the upper pod still covers, then its additions.

    An original is kept only if some toleration of the upper pod tolerates at least as much
    (:func:`covers`): upper admission saw the upper spec, not the annotation, so the lower copy never
    tolerates a taint upper admission did not see a toleration for. Tolerations added to the upper
    pod after it was created are added too (Kubernetes allows adding them to a running pod), except
    the ones the webhook adds for virtual nodes (:func:`is_virtual_node_toleration`).
    """
    kept = [t for t in saved if t.get("key") != PROVIDER_TAINT_KEY and any(covers(u, t) for u in upper)]
    added = [u for u in upper if not is_virtual_node_toleration(u) and u not in kept]
    return kept + added
