"""Filter and prioritize virtual nodes from their capacity profiles alone.

For each candidate node kube-scheduler proposes:

- a node that is not a tensile virtual node passes untouched (and prioritizes at the maximum, so
  the extender never pulls a pod off the upper cluster's own nodes);
- a virtual node passes when the pod, with the constraints its lower copy will have (restored from
  ``clusterSelector`` exactly as the virtual node restores them, :func:`tensile.translate.scheduling_spec`),
  fits at least one lower node of its :class:`~tensile.profile.Profile`. Otherwise it fails with a
  reason, in ``FailedAndUnresolvableNodes`` when the pod can never fit there (no node matches its
  selectors or taints, or none is big enough even empty) and in ``FailedNodes`` when it is only
  full, so upper preemption still considers it;
- a virtual node with no profile, a stale one or one that does not parse: ``--missing-profile``
  decides (``pass``, the default, keeps today's behaviour: the lower scheduler decides), with a
  warning and a metric.

Scores (0..10) rate the best-fitting lower node with the chosen strategy: ``spread`` prefers the
node left with the most free cpu and memory, ``binpack`` the one left fullest.

Pure: :class:`Knowledge` is fed by the server's watch handlers; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.wire import MAX_PRIORITY
from tensile import capacity, origin, translate
from tensile.cluster_selector import MalformedPodError
from tensile.profile import Profile, Query, Vector, Verdict

JSONObject = dict[str, Any]


class Strategy(enum.StrEnum):
    SPREAD = "spread"
    BINPACK = "binpack"


class Missing(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"


#: Outcomes counted per candidate, the ``verdict`` label of ``tensile_scheduler_verdicts_total``.
FITS, FULL, NEVER, NOT_VIRTUAL = "fits", "full", "never", "not_virtual"
#: The virtual node leads back into the pod's origin chain.
LOOP = "loop"
NO_PROFILE, STALE, INVALID = "no_profile", "stale", "invalid"


@dataclasses.dataclass
class Known:
    """What the extender holds of one virtual node's profile."""

    profile: Profile | None
    #: Why ``profile`` is None: the parse error.
    error: str = ""
    #: Monotonic time the profile was last seen renewed (its heartbeat or content changed).
    renewed: float = 0.0
    heartbeat: str = ""


@dataclasses.dataclass
class Policy:
    strategy: Strategy = Strategy.SPREAD
    missing: Missing = Missing.PASS
    #: A profile not renewed for this long is stale (3 heartbeats by default).
    max_age: float = 180.0


def _rating(strategy: Strategy) -> Callable[[Vector, Vector, Vector], float]:
    """0..1 for one lower node: cpu and memory (profile dimensions 0 and 1) after the pod is placed."""
    def left(want: Vector, free: Vector, shape: Vector) -> float:
        cpu, memory = shape[0], shape[1]
        if cpu > 0 and memory > 0:
            return ((free[0] - want[0]) / cpu + (free[1] - want[1]) / memory) / 2
        if cpu > 0:
            return (free[0] - want[0]) / cpu
        return (free[1] - want[1]) / memory if memory > 0 else 0.0

    if strategy is Strategy.SPREAD:
        return left
    return lambda want, free, shape: 1.0 - left(want, free, shape)


class Knowledge:
    """Profiles and the set of virtual nodes, as the server's watches last saw them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.virtual: set[str] = set()
        self.profiles: dict[str, Known] = {}
        #: virtual node -> the lower cluster it leads to (``tensile.io/lower-cluster``), when it says.
        self.leads_to: dict[str, str] = {}
        self.clock = clock

    def node_seen(self, name: str, present: bool, lower_cluster: str = "") -> None:
        (self.virtual.add if present else self.virtual.discard)(name)
        if present and lower_cluster:
            self.leads_to[name] = lower_cluster
        else:
            self.leads_to.pop(name, None)

    def loop_reason(self, pod: JSONObject, name: str, node: JSONObject | None) -> str | None:
        """Why ``pod`` must not go to virtual node ``name``: back into its origin chain (see ``tensile.origin``)."""
        if node is not None:
            return origin.loop_reason(pod, node)
        return origin.refusal(pod, name, self.leads_to.get(name, ""))

    def profile_seen(self, name: str, status: Any, age: float = 0.0) -> None:
        """A ClusterProfile was added or changed; ``age``: how old its heartbeat already is (first sight)."""
        heartbeat = str(status.get("heartbeatTime") or "") if isinstance(status, dict) else ""
        previous = self.profiles.get(name)
        now = self.clock()
        renewed = previous.renewed if previous is not None and previous.heartbeat == heartbeat else now - age
        try:
            self.profiles[name] = Known(Profile.parse(status), "", renewed, heartbeat)
        except ValueError as exc:
            self.profiles[name] = Known(None, str(exc), renewed, heartbeat)

    def profile_gone(self, name: str) -> None:
        self.profiles.pop(name, None)

    def is_virtual(self, name: str, node: JSONObject | None) -> bool:
        if node is not None:
            return translate.is_virtual_node(node)
        return name in self.virtual or name in self.profiles

    def stale(self, max_age: float) -> list[str]:
        now = self.clock()
        return sorted(n for n, k in self.profiles.items() if now - k.renewed > max_age)


@dataclasses.dataclass
class Decision:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    scores: dict[str, int]
    counts: Counter[str]
    #: (node, why) for nodes passed without a usable profile, for a warning.
    unprofiled: list[tuple[str, str]]


class Extender:
    def __init__(self, knowledge: Knowledge, policy: Policy) -> None:
        self.knowledge = knowledge
        self.policy = policy
        self._rate = _rating(policy.strategy)

    def decide(self, pod: JSONObject, names: list[str], nodes: Mapping[str, JSONObject] | None,
               score: bool) -> Decision:
        """Filter (``score`` False: stop at the first fitting lower node) or prioritize ``names``."""
        decision = Decision([], {}, {}, {}, Counter(), [])
        queries: dict[frozenset[str], Query | str] = {}
        try:
            requests = capacity.request_units_of(pod)
        except (ValueError, TypeError, AttributeError) as exc:
            requests, bad_requests = {}, f"the pod's resource requests are malformed: {exc}"
        else:
            bad_requests = ""
        now = self.knowledge.clock()
        for name in names:
            node = nodes.get(name) if nodes is not None else None
            if not self.knowledge.is_virtual(name, node):
                decision.passed.append(name)
                decision.scores[name] = MAX_PRIORITY
                decision.counts[NOT_VIRTUAL] += 1
                continue
            loop = self.knowledge.loop_reason(pod, name, node)
            if loop is not None:
                decision.unresolvable[name] = loop
                decision.counts[LOOP] += 1
                continue
            known = self.knowledge.profiles.get(name)
            why = self._unusable(known, now)
            if why is not None:
                outcome, reason = why
                decision.counts[outcome] += 1
                if self.policy.missing is Missing.PASS:
                    decision.passed.append(name)
                    decision.scores[name] = 0
                    decision.unprofiled.append((name, reason))
                else:
                    decision.failed[name] = reason
                continue
            assert known is not None and known.profile is not None
            verdict = self._assess(pod, known.profile, requests, bad_requests, queries, score)
            if verdict.fits:
                decision.passed.append(name)
                decision.counts[FITS] += 1
                if score:
                    decision.scores[name] = self._score(verdict)
            elif verdict.resolvable:
                decision.failed[name] = verdict.reason
                decision.counts[FULL] += 1
            else:
                decision.unresolvable[name] = verdict.reason
                decision.counts[NEVER] += 1
        return decision

    def _unusable(self, known: Known | None, now: float) -> tuple[str, str] | None:
        if known is None:
            return NO_PROFILE, "virtual node has published no capacity profile (ClusterProfile)"
        if known.profile is None:
            return INVALID, f"virtual node's capacity profile cannot be read: {known.error}"
        age = now - known.renewed
        if age > self.policy.max_age:
            return STALE, (f"virtual node's capacity profile is stale: not renewed for {age:.0f}s "
                           f"(--profile-max-age {self.policy.max_age:.0f}s)")
        return None

    def _assess(self, pod: JSONObject, profile: Profile, requests: Any, bad_requests: str,
                queries: dict[frozenset[str], Query | str], score: bool) -> Verdict:
        if bad_requests:
            return Verdict(False, False, bad_requests)
        query = queries.get(profile.upper_only_keys)
        if query is None:
            # Restored once per set of upper-only keys (all tensile virtual nodes share one), not per node.
            try:
                query = Query.of(translate.scheduling_spec(pod, profile.upper_only_keys), requests)
            except (ValueError, TypeError, AttributeError) as exc:
                query = f"the pod's scheduling constraints cannot be restored: {exc}"
            queries[profile.upper_only_keys] = query
        if isinstance(query, str):
            return Verdict(False, False, query)
        try:
            return profile.assess(query, self._rate if score else None)
        except (MalformedPodError, ValueError, TypeError, AttributeError) as exc:
            return Verdict(False, False, f"the pod's node constraints are malformed: {exc}")

    def _score(self, verdict: Verdict) -> int:
        if verdict.free is None or verdict.shape is None or verdict.want is None:
            return 0
        rated = self._rate(verdict.want, verdict.free, verdict.shape)
        return max(0, min(MAX_PRIORITY, round(MAX_PRIORITY * rated)))
