"""Which pods the descheduler moves, and which it must leave alone. Pure: plain dicts in and out.

A pod is a candidate when it is bound to a tensile virtual node, still Pending, and the
lower cluster has shown it will not start it:

- the lower scheduler refused the copy (reason ``Unschedulable`` or ``SchedulerError``) for
  longer than ``unschedulable_for``. tensile's virtual node shows this as ``ContainersReady``
  and ``Ready`` False with that reason (``PodScheduled`` stays the upper scheduler's, True);
  other virtual kubelets reflect it as ``PodScheduled=False``; both count; or
- it has been bound for longer than ``max_pending`` while its containers wait for a reason
  another cluster could cure: :data:`MOVABLE_WAITING` (an image pull that fails there, a
  sandbox or volume that never comes up). Reasons that would fail anywhere (a missing
  ConfigMap, an invalid image name) or that tensile holds on purpose do not count.

Never touched: pods with ``descheduler.alpha.kubernetes.io/prefer-no-eviction``, mirror
(static) pods, DaemonSet pods, pods being deleted, pods on real nodes.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from tensile import conventions as c
from tensile import fit, timestamps

JSON = dict[str, Any]

PREFER_NO_EVICTION = "descheduler.alpha.kubernetes.io/prefer-no-eviction"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
UNSCHEDULABLE_REASONS = frozenset({"Unschedulable", "SchedulerError"})
#: Waiting reasons another lower cluster may not have (its registry mirror, its CSI driver, its runtime).
MOVABLE_WAITING = frozenset({"ContainerCreating", "PodInitializing", "ImagePullBackOff", "ErrImagePull",
                             "ErrImageNeverPull", "RegistryUnavailable", "CreateContainerError"})


@dataclasses.dataclass(frozen=True)
class Options:
    unschedulable_for: float = 60.0
    max_pending: float = 180.0
    cooldown: float = 600.0
    #: At most this many moves per virtual node, and in all, per pass (None: no limit).
    max_per_node: int | None = None
    max_total: int | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    pod: JSON
    node: str
    reason: str
    message: str

    @property
    def key(self) -> str:
        meta = self.pod.get("metadata") or {}
        return f"{meta.get('namespace')}/{meta.get('name')}"


def controller_of(pod: JSON) -> JSON | None:
    """The ownerReference with ``controller: true``, or None for a bare pod."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None


def exempt(pod: JSON) -> str | None:
    """Why the descheduler must never touch ``pod``, or None."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if meta.get("deletionTimestamp"):
        return "being deleted"
    if PREFER_NO_EVICTION in annotations:
        return f"annotated {PREFER_NO_EVICTION}"
    if MIRROR_ANNOTATION in annotations:
        return "a mirror (static) pod"
    owner = controller_of(pod)
    if owner is not None and owner.get("kind") == "DaemonSet":
        return "a DaemonSet pod"
    return None


def _condition(pod: JSON, ctype: str) -> JSON | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def _age(value: object, now: datetime.datetime) -> float | None:
    when = timestamps.parse(value)
    return None if when is None else (now - when).total_seconds()


def _waiting_reasons(pod: JSON) -> list[str]:
    status = pod.get("status") or {}
    reasons = []
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = (cs or {}).get("state") or {}
        if "running" in state or "terminated" in state:
            return ["(running)"]
        reasons.append(str((state.get("waiting") or {}).get("reason") or "ContainerCreating"))
    return reasons


def candidate(pod: JSON, virtual_nodes: Mapping[str, JSON], now: datetime.datetime,
              options: Options) -> Candidate | None:
    """The pod as a candidate for a move, or None."""
    node = (pod.get("spec") or {}).get("nodeName")
    if not node or node not in virtual_nodes or (pod.get("status") or {}).get("phase") != "Pending":
        return None
    if exempt(pod) is not None:
        return None
    scheduled = _condition(pod, "PodScheduled")
    for refused in (scheduled, _condition(pod, "ContainersReady")):
        if refused is not None and refused.get("status") == "False" and (
                refused.get("reason") in UNSCHEDULABLE_REASONS):
            age = _age(refused.get("lastTransitionTime"), now)
            if age is not None and age >= options.unschedulable_for:
                message = str(refused.get("message") or "").removeprefix("lower cluster: ")
                return Candidate(pod, node, str(refused["reason"]), message)
            return None
    bound = _age((scheduled or {}).get("lastTransitionTime") or (pod.get("metadata") or {}).get("creationTimestamp"),
                 now)
    if bound is None or bound < options.max_pending:
        return None
    reasons = _waiting_reasons(pod)
    if reasons and all(r in MOVABLE_WAITING for r in reasons):
        return Candidate(pod, node, "PendingTooLong",
                         f"Pending for {bound:.0f}s on {node}, containers waiting: {', '.join(sorted(set(reasons)))}")
    return None


def _ready(node: JSON) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    return any(cond.get("type") == "Ready" and cond.get("status") == "True"
               for cond in (node.get("status") or {}).get("conditions") or [])


def other_targets(pod: JSON, virtual_nodes: Mapping[str, JSON], avoid: Iterable[str]) -> list[str]:
    """Ready virtual nodes, other than the pod's and ``avoid``, whose taints and selectors admit it."""
    spec = pod.get("spec") or {}
    excluded = {spec.get("nodeName"), *avoid}
    tolerations = spec.get("tolerations") or []
    out = []
    for name, node in sorted(virtual_nodes.items()):
        if name in excluded or not _ready(node):
            continue
        labels = (node.get("metadata") or {}).get("labels") or {}
        if fit.untolerated((node.get("spec") or {}).get("taints") or [], tolerations) is not None:
            continue
        # The pod's nodeName is its current node: judge the rest of its placement only.
        if fit.placement_matches({k: v for k, v in spec.items() if k != "nodeName"}, labels, name):
            out.append(name)
    return out


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against labels; a malformed one selects nothing."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    try:
        return all(fit.requirement_matches(expr, labels) for expr in selector.get("matchExpressions") or []
                   if expr.get("operator") in ("In", "NotIn", "Exists", "DoesNotExist"))
    except (ValueError, AttributeError):
        return False


def blocking_budget(pod: JSON, budgets: Iterable[JSON]) -> JSON | None:
    """A PodDisruptionBudget of the pod's namespace that selects it and allows no disruption now.

    The Eviction API lets Pending pods through without looking at budgets (they serve nothing),
    so the descheduler honours a budget itself: ``maxUnavailable: 0`` means "do not move these".
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    for budget in budgets:
        bmeta = budget.get("metadata") or {}
        if bmeta.get("namespace") != meta.get("namespace"):
            continue
        if selects((budget.get("spec") or {}).get("selector"), labels) and int(
                (budget.get("status") or {}).get("disruptionsAllowed") or 0) <= 0:
            return budget
    return None


class Budget:
    """Moves left in one pass: per virtual node and in all."""

    def __init__(self, options: Options) -> None:
        self.per_node = options.max_per_node
        self.total = options.max_total
        self.used: dict[str, int] = {}

    def allows(self, node: str) -> bool:
        if self.total is not None and sum(self.used.values()) >= self.total:
            return False
        return self.per_node is None or self.used.get(node, 0) < self.per_node

    def spend(self, node: str) -> None:
        self.used[node] = self.used.get(node, 0) + 1


def is_virtual_node(node: JSON) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return labels.get(c.VIRTUAL_NODE_TYPE_LABEL) == c.VIRTUAL_NODE_TYPE_VALUE
