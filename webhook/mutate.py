"""Move a pod's lower-node constraints aside so the upper scheduler can place it on a virtual node.

A pod meant for a lower cluster says which *lower* nodes it wants (nodeSelector, required node
affinity, spreading over hosts, one replica per host) and which *lower* taints it tolerates. The
upper scheduler only sees virtual nodes, which carry none of those labels and each stand for a whole
cluster, so such a pod would stay Pending upstairs. The admission webhook calls :func:`mutate` to
save the original constraints in the ``clusterSelector`` annotation (Tensile Kube's format, see
``tensile.cluster_selector``) and relax them; the virtual node calls
``tensile.cluster_selector.restore_constraints`` to put them back on the lower copy, where the lower
scheduler honours them.

The annotation is the webhook's, not the pod author's: it is signed (``webhook.signing``), and one
that does not verify is replaced, with an admission warning, so nobody can place constraints on the
lower copy that upper admission never saw. A verified one comes from an earlier call for the same
admission (``reinvocationPolicy: IfNeeded``); what a later webhook added since is folded into it
(``webhook.reinvocation``).

This module is pure: plain dicts in (pods decoded from JSON), plain dicts out, no I/O and no
Kubernetes client, so it can be tested exhaustively.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from tensile import avoidance, cluster_selector, origin, selectors
from tensile.cluster_selector import (
    REQUIRED,
    SPREAD_FIELD,
    MalformedPodError,
    SavedConstraints,
    as_object,
    as_objects,
    covers,
    filter_required,
    required_of,
    tolerates,
    with_items,
    with_required,
)
from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    HOSTNAME_LABEL,
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
from webhook import reinvocation, signing

__all__ = [
    "REPLACED_WARNING",
    "JSONPatch",
    "MalformedPodError",
    "MutateOptions",
    "Mutation",
    "is_opted_in",
    "mutate",
    "mutate_pod",
    "pointer_escape",
    "upper_constraints",
]

JSONObject = dict[str, Any]
JSONPatch = list[JSONObject]

_NO_EXECUTE = "NoExecute"
_EXISTS = "Exists"
_SCHEDULE_ANYWAY = "ScheduleAnyway"
#: The pod spec fields the webhook rewrites, in patch order.
_UPPER_FIELDS = ("nodeSelector", "affinity", "tolerations", SPREAD_FIELD)

#: Shown by kubectl when a pod came with its own clusterSelector.
REPLACED_WARNING = (
    f"the {CLUSTER_SELECTOR_ANNOTATION} annotation is written by the tensile webhook: "
    "the one in this pod was replaced with the pod's own scheduling constraints"
)


#: The default signing key: random per process, so a default can never be forged, and every
#: default-constructed MutateOptions of a process agrees with the others.
_PROCESS_KEY = secrets.token_bytes(32)


@dataclasses.dataclass(frozen=True)
class MutateOptions:
    """How :func:`mutate` relaxes a pod.

    ``ignore_selector_keys`` are node-label keys that describe *virtual* nodes (by default
    ``clusterID``), so nodeSelector entries and required node-affinity requirements on them are kept
    on the upper pod: that is how a user pins a pod to one lower cluster. They are recorded in the
    annotation, so the virtual node leaves them out of the lower copy.

    ``unreachable_toleration_seconds`` bounds the NoExecute tolerations added for the not-ready and
    unreachable taints. The default ``None`` tolerates them forever, as Tensile Kube does: a virtual
    node going NotReady means tensile itself blipped (restart, lost Lease), not that the workload
    died, and evicting the upper pod would delete and recreate running work in the lower cluster.
    Real lower-node failures are still handled by the lower cluster, because the lower copy carries
    the user's original tolerations.

    ``signing_key`` signs the annotation (``webhook.signing``). The server always passes the key it
    derives from its serving key, which every replica shares. The default, random per process, suits
    tests and can never be forged, but no other process verifies its signatures.
    """

    ignore_selector_keys: frozenset[str] = frozenset({CLUSTER_ID_LABEL})
    add_virtual_node_selector: bool = True
    add_unreachable_tolerations: bool = True
    unreachable_toleration_seconds: int | None = None
    signing_key: bytes = dataclasses.field(default=_PROCESS_KEY, repr=False)
    #: The virtual nodes a new pod must avoid (the descheduler's records for its owner), looked up
    #: by the server in its cache; None: no records are read.
    avoided: Callable[[JSONObject, str], Sequence[str]] | None = dataclasses.field(
        default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Mutation:
    """The webhook's answer for one pod.

    ``patch`` is the RFC 6902 JSON patch (``[]``: no change), ``warnings`` the admission warnings
    kubectl shows, and ``reason`` a short note for the log line (``""`` for a plain first mutation).
    """

    patch: JSONPatch = dataclasses.field(default_factory=list)
    warnings: tuple[str, ...] = ()
    reason: str = ""


# --- small helpers --------------------------------------------------------------------------------


def pointer_escape(token: str) -> str:
    """Escape one JSON-Pointer reference token (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


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


def _set(path: str, value: Any) -> JSONObject:
    # "add" creates the member or replaces it (RFC 6902 4.1), so it is valid whether or not the
    # apiserver's serialisation has the field (it omits empty maps and lists).
    return {"op": "add", "path": path, "value": value}


# --- the relaxation ---------------------------------------------------------------------------------


def upper_constraints(saved: SavedConstraints, options: MutateOptions) -> JSONObject:
    """The upper pod's scheduling fields for the original constraints ``saved``.

    A partial pod spec holding only the fields that are set (an empty field is left out).
    """
    fields = {
        "nodeSelector": _relaxed_node_selector(saved.node_selector, options),
        "affinity": _relaxed_affinity(saved.affinity, options.ignore_selector_keys),
        "tolerations": _upper_tolerations(saved.tolerations or [], options),
        SPREAD_FIELD: [c for c in saved.topology_spread_constraints or [] if not _is_required_spread(c)],
    }
    return {field: value for field, value in fields.items() if value}


def _relaxed_node_selector(selector: JSONObject | None, options: MutateOptions) -> JSONObject:
    kept = {k: v for k, v in (selector or {}).items() if k in options.ignore_selector_keys}
    if options.add_virtual_node_selector:
        kept[VIRTUAL_NODE_TYPE_LABEL] = VIRTUAL_NODE_TYPE_VALUE
    return kept


def _relaxed_affinity(affinity: JSONObject | None, keep_keys: frozenset[str]) -> JSONObject | None:
    """``affinity`` without required node affinity on lower-node labels and hostname anti-affinity.

    Returns ``affinity`` itself when nothing changed, so an unchanged field is never patched.
    """
    if affinity is None:
        return None
    where = "spec.affinity"
    relaxed = affinity
    required = required_of(affinity, where)
    if required is not None:
        new_required = filter_required(required, lambda key: key not in keep_keys, f"{where}.nodeAffinity.{REQUIRED}",
                                       keep=avoidance.is_avoidance)
        if new_required is not required:
            relaxed = with_required(relaxed, new_required, keep_empty=False)
    return _without_host_anti_affinity(relaxed, where)


def _without_host_anti_affinity(affinity: JSONObject, where: str) -> JSONObject:
    """``affinity`` without the required pod anti-affinity terms whose topology is the host.

    Such a term means one replica per host. A virtual node is a whole cluster with one hostname, so
    upstairs it would mean one replica per cluster: a typical production Deployment would never fit.
    The lower copy gets the terms back and the lower scheduler spreads over real hosts. Terms on
    other topologies (zones) stay: virtual nodes can carry those labels.
    """
    anti_where = f"{where}.podAntiAffinity"
    anti = as_object(affinity.get("podAntiAffinity"), anti_where)
    terms = (as_objects(anti.get(REQUIRED), f"{anti_where}.{REQUIRED}") if anti else None) or []
    kept = [term for term in terms if term.get("topologyKey") != HOSTNAME_LABEL]
    if len(kept) == len(terms):
        return affinity
    return with_items(affinity, "podAntiAffinity", REQUIRED, kept)


def _is_required_spread(constraint: JSONObject) -> bool:
    """A ``DoNotSchedule`` spread constraint (the default): it filters nodes, so upstairs it filters
    out virtual nodes, which hold a whole cluster. ``ScheduleAnyway`` only scores, so it stays."""
    return constraint.get("whenUnsatisfiable") != _SCHEDULE_ANYWAY


def _upper_tolerations(original: list[JSONObject], options: MutateOptions) -> list[JSONObject]:
    """The user's tolerations plus the ones a pod needs to run on a virtual node.

    The user's tolerations stay: they are harmless on virtual nodes. The exception is a *bounded*
    NoExecute toleration of the not-ready/unreachable taints that is shorter than ours (normally the
    300 s ones the DefaultTolerationSeconds admission plugin adds before webhooks run): the taint
    manager evicts after the shortest matching toleration, so keeping it would defeat ours. The
    originals are still restored on the lower copy from the annotation: ours covers each one removed
    (``cluster_selector.covers``), which the virtual node checks before restoring it.
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
    if not any(tolerates(t, PROVIDER_TAINT_KEY, PROVIDER_TAINT_VALUE, PROVIDER_TAINT_EFFECT) for t in result):
        result.append({"key": PROVIDER_TAINT_KEY, "operator": _EXISTS, "effect": PROVIDER_TAINT_EFFECT})
    for taint in node_taints:
        ours: JSONObject = {"key": taint, "operator": _EXISTS, "effect": _NO_EXECUTE}
        if seconds is not None:
            ours["tolerationSeconds"] = seconds
        if not any(covers(t, ours) for t in result):
            result.append(ours)
    return result


# --- the mutation ---------------------------------------------------------------------------------


def mutate_pod(pod: JSONObject, options: MutateOptions | None = None, *, namespace: str | None = None) -> JSONPatch:
    """The JSON patch of :func:`mutate`, for callers that do not need the warnings."""
    return mutate(pod, options, namespace=namespace).patch


def mutate(pod: JSONObject, options: MutateOptions | None = None, *, namespace: str | None = None) -> Mutation:
    """The RFC 6902 JSON patch, and admission warnings, that let an opted-in pod schedule onto a virtual node.

    No change when the pod is not labelled ``virtual-pod=true`` or lives in ``kube-system``.
    Otherwise the originals are the pod's own constraints, or, when the pod carries a
    ``clusterSelector`` annotation whose signature verifies (an earlier call for the same admission,
    or a pod copied from one in the same namespace), the saved ones plus whatever was added to the
    pod since. A hand-written annotation is ignored and replaced, with :data:`REPLACED_WARNING`. A
    verified annotation with nothing added since means no change, so the webhook is idempotent and
    safe with ``reinvocationPolicy: IfNeeded``.

    ``namespace`` is the request's namespace, used when the object itself has none.

    Raises :class:`MalformedPodError` (a ``ValueError``) when a field has the wrong JSON type.
    """
    options = options or MutateOptions()
    target = _target(pod, namespace)
    if target is None:
        return Mutation()
    annotations, spec, pod_namespace = target
    chain = origin.chain_of(pod)
    if chain:
        return _loop_guard(spec, chain)
    avoid = list(options.avoided(pod, pod_namespace)) if options.avoided is not None else []
    base = _base(annotations or {}, spec, pod_namespace, options, avoid)
    if base is None:
        if not avoid:
            return Mutation()
        upper, patch = dict(spec), []
        fields: tuple[str, ...] = ("affinity",)
        reason = "avoidance"
    else:
        upper, fields = upper_constraints(base.saved, options), base.fields
        patch = _annotation_ops(annotations, _signed(base.saved, pod_namespace, options))
        reason = base.reason
    if avoid:
        # The descheduler moved a pod of this owner away from these virtual nodes: not there again.
        upper = _avoiding(upper, avoid)
        fields = tuple(f for f in _UPPER_FIELDS if f in fields or f == "affinity")
    patch += _spec_ops(spec, upper, fields)
    return Mutation(patch, base.warnings if base is not None else (), reason)


def _loop_guard(spec: JSONObject, chain: list[str]) -> Mutation:
    """A lower copy (it carries an origin chain): kept off every virtual node leading into its chain.

    Its constraints are for this cluster's nodes already (the virtual node that made it restored
    them), so they are not relaxed again, and it is not sent on to virtual nodes: it runs here
    unless a virtual node without the provider taint takes it. Whichever node that is, the required
    ``tensile.io/lower-cluster NotIn [chain]`` term keeps it from going back where it came from.
    """
    where = "spec.affinity"
    terms_where = f"{where}.nodeAffinity.{REQUIRED}.nodeSelectorTerms"
    required = required_of(as_object(spec.get("affinity"), where), where)
    for term in as_objects((required or {}).get("nodeSelectorTerms"), terms_where) or []:
        as_objects(term.get("matchExpressions"), f"{terms_where}[].matchExpressions")
    desired = selectors.pinned(spec, [origin.affinity_requirement(chain)])
    patch = _spec_ops(spec, desired, ("affinity",))
    return Mutation(patch, (), "origin chain" if patch else "")


def _avoiding(upper: JSONObject, avoid: Sequence[str]) -> JSONObject:
    """``upper`` whose affinity also excludes the ``avoid`` nodes by name."""
    if not avoid:
        return upper
    return {**upper, "affinity": avoidance.avoiding({"affinity": upper.get("affinity")}, avoid)["affinity"]}


@dataclasses.dataclass(frozen=True)
class _Base:
    """The originals a mutation relaxes, which spec fields it rewrites, and how they were found."""

    saved: SavedConstraints
    fields: tuple[str, ...] = _UPPER_FIELDS
    warnings: tuple[str, ...] = ()
    reason: str = ""


def _target(pod: JSONObject, request_namespace: str | None) -> tuple[JSONObject | None, JSONObject, str] | None:
    """``(annotations, spec, namespace)`` of a pod the webhook mutates; ``None`` for one it leaves alone."""
    if not isinstance(pod, dict):
        raise MalformedPodError("pod must be an object")
    if not is_opted_in(pod):
        return None
    metadata: JSONObject = pod["metadata"]
    annotations = as_object(metadata.get("annotations"), "metadata.annotations")
    namespace = _namespace_of(metadata, request_namespace)
    if namespace == KUBE_SYSTEM:
        return None
    spec = as_object(pod.get("spec"), "spec")
    if spec is None:
        raise MalformedPodError("pod has no spec")
    return annotations, spec, namespace


def _base(annotations: JSONObject, spec: JSONObject, namespace: str, options: MutateOptions,
          avoid: Sequence[str] = ()) -> _Base | None:
    """The originals: from our own annotation when its signature verifies, else from the spec.

    ``None`` when our annotation is there and nothing was added since: nothing to do.
    """
    existing = annotations.get(CLUSTER_SELECTOR_ANNOTATION)
    signature = annotations.get(CLUSTER_SELECTOR_SIGNATURE_ANNOTATION)
    if signing.verify(options.signing_key, namespace, existing, signature):
        return _folded(cluster_selector.parse(existing), spec, options, avoid)
    saved = SavedConstraints.from_spec(spec, options.ignore_selector_keys)
    if existing is None:
        return _Base(saved)
    return _Base(saved, warnings=(REPLACED_WARNING,), reason="replaced a hand-written clusterSelector")


def _namespace_of(metadata: JSONObject, request_namespace: str | None) -> str:
    namespace = metadata.get("namespace")
    return namespace if isinstance(namespace, str) and namespace else request_namespace or ""


def _folded(previous: SavedConstraints, spec: JSONObject, options: MutateOptions,
            avoid: Sequence[str] = ()) -> _Base | None:
    """A re-invocation: ``previous`` plus what was added since; ``None`` if nothing was.

    Only the fields something was added to are relaxed again; the others stay as they are, so a
    later webhook's removal is not undone. Other ignore keys than ``previous``'s (another webhook
    replica's flags) change every field's relaxation, so then all are rewritten.
    """
    # The avoidance this webhook adds is expected, not something a later webhook added.
    added = reinvocation.additions(spec, _avoiding(upper_constraints(previous, options), avoid))
    same_keys = previous.ignore_selector_keys == options.ignore_selector_keys
    if not added and same_keys:
        return None
    folded = dataclasses.replace(reinvocation.fold(previous, added), ignore_selector_keys=options.ignore_selector_keys)
    fields = tuple(field for field in _UPPER_FIELDS if field in added or not same_keys)
    return _Base(folded, fields, reason="folded constraints added since")


def _signed(saved: SavedConstraints, namespace: str, options: MutateOptions) -> dict[str, str]:
    value = saved.encode()
    return {
        CLUSTER_SELECTOR_ANNOTATION: value,
        CLUSTER_SELECTOR_SIGNATURE_ANNOTATION: signing.sign(options.signing_key, namespace, value),
    }


def _annotation_ops(annotations: JSONObject | None, values: dict[str, str]) -> JSONPatch:
    if not annotations:  # absent, or an empty map the apiserver may omit: set the whole map
        return [_set("/metadata/annotations", values)]
    return [
        _set("/metadata/annotations/" + pointer_escape(key), value)
        for key, value in values.items()
        if annotations.get(key) != value
    ]


def _spec_ops(spec: JSONObject, upper: JSONObject, fields: tuple[str, ...]) -> JSONPatch:
    """Set each of ``fields`` that differs from ``upper``'s; an empty field counts as absent."""
    patch: JSONPatch = []
    for field in fields:
        current, desired = spec.get(field) or None, upper.get(field)
        if current == desired:
            continue
        if desired is None:  # current is non-empty, so the path exists
            patch.append({"op": "remove", "path": f"/spec/{field}"})
        else:
            patch.append(_set(f"/spec/{field}", desired))
    return patch
