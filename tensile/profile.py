"""A lower cluster as a compact capacity profile, and the question it answers.

A virtual node's allocatable is a sum: 40 free CPUs on 1-CPU nodes "fit" an 8-CPU pod that then
stays Pending downstairs. The profile keeps what the sum throws away, in a size that does not grow
with the number of lower nodes:

- the Ready, schedulable lower nodes are grouped by **scheduling signature**: their labels (less
  the ones unique to a node, such as ``kubernetes.io/hostname``) and their ``NoSchedule`` and
  ``NoExecute`` taints;
- each group keeps the **Pareto frontier** of its nodes' free-resource vectors (free = allocatable
  minus the requests of every active pod on the node, tensile's copies included), each point with
  the number of nodes that have exactly that vector, and the frontier of its nodes' allocatable.

A pod fits some node of a group exactly when its requests fit some frontier point: every node's
vector is dominated by a point of the frontier. :func:`build` makes the profile, :class:`Profile`
reads it back and :meth:`Profile.assess` answers "does this pod fit at least one lower node, and
which point fits it best" with the rules of :mod:`tensile.fit`.

Vectors are integers in the profile's ``resources`` order, in Kubernetes' own units for fitting:
millicores for ``cpu``, whole units (bytes, pods, devices) for the rest, each quantity rounded up
as ``Quantity.MilliValue``/``Value`` do.

When the frontiers would make the profile larger than its byte budget, points are dropped
(the per-resource maxima are kept first) and the profile says so in ``truncated``. Dropping points
only ever turns a "fits" into a "does not fit", never the reverse: every fit the profile reports is
a real node.

Pure: plain dicts in and out, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import orjson

from tensile import capacity, fit, quantity
from tensile.cluster_selector import MalformedPodError, as_object, as_tolerations
from tensile.conventions import HOSTNAME_LABEL
from tensile.quantity import ResourceList

JSONObject = dict[str, Any]
Vector = tuple[int, ...]

#: The resources every profile carries, first and in this order; extended ones follow, sorted.
BASE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")
#: Labels that name one node, never a group of them.
DEFAULT_IGNORED_LABELS = frozenset({HOSTNAME_LABEL})
#: Target size of one profile, in bytes of JSON (the issue's budget is 100 KiB).
DEFAULT_MAX_BYTES = 96 * 1024
#: Pods an extra (autoscaled) node shape holds when its flag does not say.
DEFAULT_EXTRA_PODS = 110
#: The format of ``status``; bumped on an incompatible change, refused by older readers.
FORMAT_VERSION = 1


class ProfileError(ValueError):
    """A profile that cannot be read (a newer format, or a hand-edited one)."""


units = quantity.units


def vector_of(resources: Sequence[str], amounts: Mapping[str, Fraction]) -> Vector:
    return tuple(units(r, amounts.get(r, Fraction(0))) for r in resources)


@functools.lru_cache(maxsize=1024)
def _allocatable_vector(resources: tuple[str, ...], allocatable: tuple[tuple[str, str], ...]) -> Vector:
    """Thousands of lower nodes share a few allocatable shapes: parse each once."""
    return vector_of(resources, quantity.parse_list(dict(allocatable)))


def dominates(a: Vector, b: Vector) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True))


def pareto(points: Mapping[Vector, int]) -> list[tuple[Vector, int]]:
    """The points no other point dominates, with their counts, largest cpu first (ties: larger sum)."""
    ordered = sorted(points.items(), key=lambda item: (-sum(item[0]), item[0]))
    frontier: list[tuple[Vector, int]] = []
    for point, count in ordered:
        # A point can only be dominated by one with a sum at least as large: those came first.
        if not any(dominates(kept, point) for kept, _ in frontier):
            frontier.append((point, count))
    frontier.sort(key=lambda item: (-item[0][0], -sum(item[0])))
    return frontier


def trim(frontier: list[tuple[Vector, int]], limit: int) -> list[tuple[Vector, int]]:
    """At most ``limit`` points of ``frontier``: each resource's maximum first, then the largest."""
    if len(frontier) <= limit:
        return frontier
    keep: list[int] = []
    for dim in range(len(frontier[0][0])):
        best = max(range(len(frontier)), key=lambda i: (frontier[i][0][dim], sum(frontier[i][0])))
        if best not in keep:
            keep.append(best)
    scale = [max(p[d] for p, _ in frontier) or 1 for d in range(len(frontier[0][0]))]
    rest = sorted((i for i in range(len(frontier)) if i not in keep),
                  key=lambda i: -sum(v / s for v, s in zip(frontier[i][0], scale, strict=True)))
    chosen = sorted((keep + rest)[:limit])
    return [frontier[i] for i in chosen]


# --- building ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    #: Label keys left out of signatures, with every label whose value is the node's own name.
    ignored_labels: frozenset[str] = DEFAULT_IGNORED_LABELS
    #: Node shapes the lower cluster can add by autoscaling (``--extra-capacity``).
    extra_shapes: tuple[ResourceList, ...] = ()
    #: Node-label keys only the virtual node carries; the reader restores a pod's constraints
    #: without them, as the virtual node does.
    upper_only_keys: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES


def signature(node: JSONObject, ignored: frozenset[str]) -> tuple[tuple[tuple[str, str], ...],
                                                                 tuple[tuple[str, str, str], ...]]:
    meta = node.get("metadata") or {}
    name = meta.get("name")
    labels = tuple(sorted(
        (k, str(v)) for k, v in (meta.get("labels") or {}).items() if k not in ignored and v != name
    ))
    taints = tuple(sorted(
        (str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
        for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") in fit.FILTER_EFFECTS
    ))
    return labels, taints


def resource_names(nodes: Iterable[JSONObject], extra: Iterable[ResourceList]) -> list[str]:
    names: set[str] = set()
    for node in nodes:
        names.update(((node.get("status") or {}).get("allocatable") or {}).keys())
    for shape in extra:
        names.update(shape)
    return [*BASE_RESOURCES, *sorted(names - set(BASE_RESOURCES))]


def build(nodes: Iterable[JSONObject], pods: Iterable[JSONObject], options: Options = Options()) -> JSONObject:
    """The profile (the ``status`` of a ClusterProfile) of a lower cluster's nodes and active pods.

    ``pods`` may be full pods or :func:`tensile.capacity.shrink_pod` ones; terminal pods are skipped.
    The result holds no timestamp, so two builds of an unchanged cluster are equal.
    """
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and capacity.pod_is_active(pod):
            on_node = used[node_name]
            for resource, amount in capacity.request_units_of(pod).items():
                on_node[resource] += amount
    return build_from(nodes, used, options)


def build_from(nodes: Iterable[JSONObject], used: Mapping[str, Mapping[str, int]],
               options: Options = Options()) -> JSONObject:
    """:func:`build` from the requests of all active pods summed per lower node, in scheduler units
    (:class:`tensile.usage.Usage` keeps them): O(nodes), whatever the number of pods."""
    usable = [n for n in nodes if capacity.node_is_usable(n)]
    resources = resource_names(usable, options.extra_shapes)
    grouped: dict[Any, tuple[Counter[Vector], Counter[Vector]]] = {}
    columns = tuple(resources)
    nothing: Mapping[str, int] = {}
    for node in usable:
        name = (node.get("metadata") or {}).get("name", "")
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        alloc = _allocatable_vector(columns, tuple(sorted((k, str(v)) for k, v in allocatable.items())))
        on_node = used.get(name, nothing)
        taken = tuple(on_node.get(r, 0) for r in columns)
        free = tuple(max(0, a - t) for a, t in zip(alloc, taken, strict=True))
        frees, shapes = grouped.setdefault(signature(node, options.ignored_labels), (Counter(), Counter()))
        frees[free] += 1
        shapes[alloc] += 1
    groups = [
        {"labels": dict(labels), "taints": [{"key": k, "value": v, "effect": e} if v else {"key": k, "effect": e}
                                            for k, v, e in taints],
         "nodes": sum(frees.values()),
         "allocatable": [list(p) for p, _ in pareto(shapes)],
         "free": [[*p, n] for p, n in pareto(frees)]}
        for (labels, taints), (frees, shapes) in sorted(grouped.items(), key=lambda kv: -sum(kv[1][0].values()))
    ]
    for shape in options.extra_shapes:
        full = {**{"pods": Fraction(DEFAULT_EXTRA_PODS)}, **shape}
        vec = list(vector_of(resources, full))
        groups.append({"labels": {}, "taints": [], "nodes": 0, "autoscaled": True,
                       "allocatable": [vec], "free": [[*vec, 0]]})
    profile: JSONObject = {
        "formatVersion": FORMAT_VERSION,
        "resources": resources,
        "upperOnlyKeys": sorted(options.upper_only_keys),
        "nodes": len(usable),
        "groups": groups,
        "summary": summary(resources, groups),
    }
    return fit_budget(profile, options.max_bytes)


def size(profile: JSONObject) -> int:
    return len(orjson.dumps(profile))


def fit_budget(profile: JSONObject, max_bytes: int) -> JSONObject:
    """``profile`` with frontiers trimmed, then the smallest groups dropped, until it fits ``max_bytes``."""
    if size(profile) <= max_bytes:
        return profile
    groups: list[JSONObject] = profile["groups"]
    original_points = sum(len(g["free"]) for g in groups)
    original_groups = len(groups)

    def trimmed(limit: int, keep_groups: int) -> JSONObject:
        new_groups = []
        for g in groups[:keep_groups]:
            frontier = [(tuple(p[:-1]), int(p[-1])) for p in g["free"]]
            new_groups.append({**g, "free": [[*p, n] for p, n in trim(frontier, limit)]})
        kept_points = sum(len(g["free"]) for g in new_groups)
        return {**profile, "groups": new_groups, "truncated": {
            "freePoints": original_points - kept_points, "groups": original_groups - keep_groups}}

    limit = max(len(g["free"]) for g in groups)
    candidate = trimmed(limit, original_groups)
    while size(candidate) > max_bytes and limit > 1:
        limit = max(1, limit * 3 // 4)
        candidate = trimmed(limit, original_groups)
    keep = original_groups
    while size(candidate) > max_bytes and keep > 1:
        keep = max(1, keep * 3 // 4)
        candidate = trimmed(limit, keep)
    return candidate


def summary(resources: Sequence[str], groups: Sequence[JSONObject]) -> JSONObject:
    """For people (``kubectl get clusterprofiles``): the largest free cpu and memory on one node."""
    best: dict[str, int] = {}
    for g in groups:
        if g.get("autoscaled"):
            continue
        for point in g["free"]:
            for r in ("cpu", "memory"):
                best[r] = max(best.get(r, 0), point[resources.index(r)])
    return {"groups": len(groups), "largestFreeCPU": human("cpu", best.get("cpu", 0)),
            "largestFreeMemory": human("memory", best.get("memory", 0))}


def human(resource: str, amount: int) -> str:
    """An amount in profile units as a person writes it: ``500m``/``4`` CPU, ``1Gi``, ``3``."""
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if amount >= factor and amount % factor == 0:
                return f"{amount // factor}{suffix}"
    return str(amount)


def describe(resource: str, amount: int) -> str:
    return f"{human(resource, amount)} CPU" if resource == "cpu" else f"{human(resource, amount)} {resource}"


# --- reading -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...]
    nodes: int
    autoscaled: bool
    #: Frontier of allocatable vectors: the largest nodes, whatever runs on them.
    shapes: tuple[Vector, ...]
    #: Frontier of free vectors, with how many nodes have exactly that vector; largest cpu first.
    free: tuple[tuple[Vector, int], ...]
    #: For each point of ``free``, the allocatable shape it belongs to (the smallest that holds it).
    holders: tuple[Vector, ...]
    #: Component-wise maximum of ``free``: a quick "cannot fit".
    ceiling: Vector
    #: The same for every group (of any profile) with these labels: see :func:`label_id`.
    label_id: int


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One virtual node's answer for one pod.

    ``fits``: some lower node (or extra shape) has the requests free. Otherwise ``resolvable``
    tells a full cluster (pods leaving could make room: upper preemption may help) from one the pod
    can never fit (no node matches its constraints or is big enough).
    """

    fits: bool
    resolvable: bool
    reason: str
    #: The best free vector that fits, and the allocatable shape of its group, for scoring.
    free: Vector | None = None
    shape: Vector | None = None
    #: The pod's requests as this profile's vector.
    want: Vector | None = None


#: How well a (requests, free, shape) triple fits; larger is better.
Chooser = Callable[[Vector, Vector, Vector], float]


#: Explanations a profile keeps; a profile is replaced on every change, and its cache with it.
EXPLAINED_MAX = 1024


@dataclasses.dataclass(frozen=True)
class Query:
    """A pod's side of the question, prepared once and asked of every virtual node's profile."""

    #: Requests in scheduler units (:func:`tensile.capacity.request_units_of`).
    requests: Mapping[str, int]
    selector: Mapping[str, Any] | None
    required: JSONObject | None
    tolerations: list[JSONObject]
    #: The constraints as canonical JSON: equal keys, equal answers.
    key: bytes
    #: A node selector or required affinity to match against group labels.
    constrained: bool
    #: Answers kept for the life of the query (one extender call): request vectors by resource
    #: columns, and placement by label set (virtual nodes share node pools' label sets).
    _vectors: dict[tuple[str, ...], tuple[Vector, list[str], list[tuple[int, int]]]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)
    _placed: dict[int, bool] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, spec: JSONObject, requests: Mapping[str, int]) -> Query:
        """From the lower copy's spec; raises :class:`~tensile.cluster_selector.MalformedPodError`."""
        selector = as_object(spec.get("nodeSelector"), "spec.nodeSelector")
        required = fit.node_affinity_required(spec)
        tolerations = as_tolerations(spec.get("tolerations"), "spec.tolerations") or []
        try:
            key = orjson.dumps([selector, required, tolerations], option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise MalformedPodError(f"pod scheduling fields are not JSON: {exc}") from exc
        return cls(requests, selector, required, tolerations, key, bool(selector) or required is not None)

    def places_on(self, group: Group) -> bool:
        placed = self._placed.get(group.label_id)
        if placed is None:
            placed = self._placed[group.label_id] = (
                fit.selector_matches(self.selector, group.labels) and fit.required_matches(self.required, group.labels))
        return placed

    def vector(self, resources: tuple[str, ...]) -> tuple[Vector, list[str], list[tuple[int, int]]]:
        """(requests as a vector of ``resources``, requested resources not among them, (index, amount) asked)."""
        cached = self._vectors.get(resources)
        if cached is None:
            unknown = [r for r, v in self.requests.items() if v > 0 and r not in resources]
            want = tuple(self.requests.get(r, 0) for r in resources)
            cached = self._vectors[resources] = (want, unknown, [(d, w) for d, w in enumerate(want) if w > 0])
        return cached


@dataclasses.dataclass(frozen=True)
class Profile:
    resources: tuple[str, ...]
    upper_only_keys: frozenset[str]
    nodes: int
    groups: tuple[Group, ...]
    truncated: bool
    #: "Does not fit" verdicts by (query key, request vector): replicas ask the same question.
    _explained: dict[tuple[bytes, Vector], Verdict] = dataclasses.field(default_factory=dict, compare=False,
                                                                        repr=False)

    @classmethod
    def parse(cls, status: Any) -> Profile:
        """Read a ClusterProfile's ``status``; raises :class:`ProfileError` on anything malformed."""
        try:
            return cls._parse(status)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"malformed capacity profile: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _parse(cls, status: Any) -> Profile:
        if not isinstance(status, dict):
            raise ProfileError("capacity profile status is missing")
        version = status.get("formatVersion")
        if version != FORMAT_VERSION:
            raise ProfileError(f"capacity profile format {version!r} is not {FORMAT_VERSION} (upgrade the extender?)")
        resources = tuple(str(r) for r in status["resources"])
        width = len(resources)
        groups = []
        for g in status["groups"]:
            free = tuple((_vector(p[:-1], width), int(p[-1])) for p in g["free"])
            shapes = tuple(_vector(p, width) for p in g["allocatable"])
            if not free or not shapes:
                raise ProfileError("capacity profile group without points")
            ceiling = tuple(max(p[d] for p, _ in free) for d in range(width))
            labels = {str(k): str(v) for k, v in (g.get("labels") or {}).items()}
            taints = tuple(dict(t) for t in g.get("taints") or [])
            holders = tuple(_holder(shapes, p) for p, _ in free)
            groups.append(Group(labels, taints, int(g.get("nodes", 0)), bool(g.get("autoscaled")), shapes,
                                free, holders, ceiling, label_id(labels)))
        return cls(resources, frozenset(str(k) for k in status.get("upperOnlyKeys") or []),
                   int(status.get("nodes", 0)), tuple(groups), bool(status.get("truncated")))

    def check(self, spec: JSONObject, requests: Mapping[str, int], choose: Chooser | None = None) -> Verdict:
        """:meth:`assess` for one spec; raises :class:`~tensile.cluster_selector.MalformedPodError`."""
        return self.assess(Query.of(spec, requests), choose)

    def assess(self, query: Query, choose: Chooser | None = None) -> Verdict:
        """Does the pod of ``query`` fit a lower node of this profile?

        Only the resources the pod requests are compared, as kube-scheduler does: an overcommitted
        node still takes a pod that asks for none of what it lacks. With ``choose`` ``None`` the first
        fit is returned; otherwise the fit ``choose`` rates best. A "does not fit" is explained (which
        groups match, what is largest) and the explanation kept for the next pod of the same shape.
        Raises :class:`~tensile.cluster_selector.MalformedPodError` for malformed constraints.
        """
        want, unknown, asked = query.vector(self.resources)
        if unknown:
            return Verdict(False, False, f"no lower node has {', '.join(sorted(unknown))}")

        def holds(point: Vector) -> bool:
            for d, w in asked:
                if point[d] < w:
                    return False
            return True

        best: tuple[float, Vector, Vector] | None = None
        for group in self.groups:
            if query.constrained and not group.autoscaled and not query.places_on(group):
                continue
            if group.taints and fit.untolerated(group.taints, query.tolerations) is not None:
                continue
            if not holds(group.ceiling):
                continue
            for (point, _count), shape in zip(group.free, group.holders, strict=True):
                if point[0] < want[0]:
                    break  # largest cpu first: no later point has enough
                if not holds(point):
                    continue
                if choose is None:
                    return Verdict(True, True, "", point, shape, want)
                rated = choose(want, point, shape)
                if best is None or rated > best[0]:
                    best = (rated, point, shape)
        if best is not None:
            return Verdict(True, True, "", best[1], best[2], want)
        key = (query.key, want)
        explained = self._explained.get(key)
        if explained is None:
            if len(self._explained) >= EXPLAINED_MAX:
                self._explained.clear()
            explained = self._explained[key] = self._explain(query, want)
        return explained

    def _explain(self, query: Query, want: Vector) -> Verdict:
        """Why nothing fits: no group matches, every match is tainted, too small, or only full."""
        matching: list[Group] = []
        blocked_by: list[Mapping[str, Any]] = []
        for group in self.groups:
            if query.constrained and not group.autoscaled and not query.places_on(group):
                continue
            taint = fit.untolerated(group.taints, query.tolerations) if group.taints else None
            if taint is not None:
                blocked_by.append(taint)
                continue
            matching.append(group)
        if not matching:
            return Verdict(False, False, self._mismatch(blocked_by))
        return self._short(want, matching)

    def _mismatch(self, blocked_by: list[Mapping[str, Any]]) -> str:
        if not self.groups:
            return "no usable lower node: every lower node is NotReady, cordoned or tainted unschedulable"
        if blocked_by:
            taints = sorted({fit.describe_taint(t) for t in blocked_by})
            return ("every lower node that matches the pod's node selector and affinity has a taint it does not "
                    f"tolerate: {', '.join(taints)}")
        return f"no lower node matches the pod's node selector and affinity ({self.nodes} usable lower nodes)"

    def _short(self, want: Vector, matching: list[Group]) -> Verdict:
        """Why no point of the matching groups fits ``want``: too big for every node, or only full."""
        suffix = " (profile truncated)" if self.truncated else ""
        asked = [(d, r) for d, r in enumerate(self.resources) if want[d] > 0]
        if not any(dominates(s, want) for g in matching for s in g.shapes):
            for d, resource in asked:
                biggest = max(s[d] for g in matching for s in g.shapes)
                if biggest < want[d]:
                    return Verdict(False, False, f"no lower node is big enough: the pod needs "
                                                 f"{describe(resource, want[d])}, the largest lower node has "
                                                 f"{describe(resource, biggest)}{suffix}")
            together = ", ".join(describe(r, want[d]) for d, r in asked if r != "pods")
            return Verdict(False, False, f"no lower node is big enough for {together} at once{suffix}")
        for d, resource in asked:
            largest = max(p[d] for g in matching for p, _ in g.free)
            if largest < want[d]:
                on = sum(n for g in matching for p, n in g.free if p[d] == largest)
                where = f"on {on} node{'s' * (on != 1)}" if on else "on an autoscaled node shape"
                return Verdict(False, True, f"no lower node with {describe(resource, want[d])} free; the largest "
                                            f"free is {describe(resource, largest)} {where}{suffix}")
        together = ", ".join(describe(r, want[d]) for d, r in asked if r != "pods")
        nodes = sum(g.nodes for g in matching)
        return Verdict(False, True, f"no lower node has {together} free at once ({nodes} matching nodes){suffix}")


_LABEL_IDS: dict[tuple[tuple[str, str], ...], int] = {}
#: Distinct label sets remembered; past it ids are still unique, only no longer shared.
LABEL_IDS_MAX = 100_000


def label_id(labels: Mapping[str, str]) -> int:
    """A small int per distinct label set, shared by every profile, so placement answers can be shared."""
    key = tuple(sorted(labels.items()))
    found = _LABEL_IDS.get(key)
    if found is not None:
        return found
    if len(_LABEL_IDS) >= LABEL_IDS_MAX:
        return -next(_OVERFLOW)  # unique, not shared
    found = _LABEL_IDS[key] = len(_LABEL_IDS) + 1
    return found


_OVERFLOW = itertools.count(1)


def _vector(raw: Any, width: int) -> Vector:
    vec = tuple(int(x) for x in raw)
    if len(vec) != width:
        raise ProfileError(f"capacity profile vector {list(vec)} does not have {width} resources")
    return vec


def _holder(shapes: tuple[Vector, ...], point: Vector) -> Vector:
    """The allocatable shape a free point belongs to: the smallest that holds it."""
    holding = [s for s in shapes if dominates(s, point)]
    return min(holding, key=sum) if holding else shapes[0]
