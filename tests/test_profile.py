"""Lower nodes to a capacity profile and back (tensile.profile).

The central property: a pod fits the profile exactly when it fits one of the original nodes, checked
against a brute-force scan of generated node sets with :mod:`tensile.fit`'s rules.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensile import capacity, fit, profile, quantity
from tensile.profile import Options, Profile, ProfileError

GiB = 2**30


def node(name: str, cpu: str = "4", memory: str = "8Gi", pods: str = "110", labels: dict[str, str] | None = None,
         taints: list[dict[str, str]] | None = None, ready: bool = True, unschedulable: bool = False,
         **extra: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi", **extra},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod_on(node_name: str, cpu: str = "1", memory: str = "1Gi", phase: str = "Running",
           **extra: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": node_name,
                     "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory, **extra}}}]},
            "status": {"phase": phase}}


def wants(cpu: str = "0", memory: str = "0", **extra: str) -> dict[str, int]:
    r = quantity.parse_list({"cpu": cpu, "memory": memory, **extra})
    r["pods"] = Fraction(1)
    return {name: quantity.units(name, amount) for name, amount in r.items()}


def read(nodes: list[dict[str, Any]], pods: list[dict[str, Any]] | None = None, **options: Any) -> Profile:
    built = profile.build(nodes, pods or [], Options(**options))
    # Through JSON, as the extender reads it from the API.
    return Profile.parse(orjson.loads(orjson.dumps(built)))


def test_forty_small_nodes_do_not_fit_a_four_cpu_pod_but_two_big_ones_do() -> None:
    small = read([node(f"a{i}", cpu="1", memory="4Gi") for i in range(40)])
    big = read([node(f"b{i}", cpu="8", memory="32Gi") for i in range(2)])
    verdict = small.check({}, wants("4"))
    assert not verdict.fits and not verdict.resolvable
    assert verdict.reason == "no lower node is big enough: the pod needs 4 CPU, the largest lower node has 1 CPU"
    assert big.check({}, wants("4")).fits
    assert len(small.groups) == 1 and small.groups[0].free == (((1000, 4 * GiB, 100 * GiB, 110), 40),)


def test_a_full_cluster_is_resolvable_and_says_what_is_largest() -> None:
    nodes = [node(f"n{i}", cpu="8") for i in range(3)]
    pods = [pod_on(f"n{i}", cpu="6") for i in range(3)]
    verdict = read(nodes, pods).check({}, wants("4"))
    assert not verdict.fits and verdict.resolvable
    assert verdict.reason == "no lower node with 4 CPU free; the largest free is 2 CPU on 3 nodes"


def test_free_counts_every_active_pod_and_skips_finished_ones() -> None:
    nodes = [node("n0", cpu="4")]
    pods = [pod_on("n0", cpu="1"), pod_on("n0", cpu="1", phase="Succeeded"), pod_on("elsewhere", cpu="3")]
    p = read(nodes, pods)
    (point, count), = p.groups[0].free
    assert point[0] == 3000 and point[3] == 109 and count == 1
    # The same with shrunk pods, as the virtual node's cache keeps them.
    assert read(nodes, [capacity.shrink_pod(x) for x in pods]) == p


def test_quantities_use_kubernetes_units_and_rounding() -> None:
    p = read([node("n0", cpu="1.5", memory="1e3")], [pod_on("n0", cpu="0.5m", memory="1k")])
    (point, _), = p.groups[0].free
    assert point[:2] == (1499, 0)  # 0.5m rounds up to 1m, as Quantity.MilliValue does
    assert p.check({}, wants("1499m")).fits and not p.check({}, wants("1500m")).fits


def test_cordoned_not_ready_and_unschedulable_tainted_nodes_are_left_out() -> None:
    nodes = [node("ok", cpu="2"), node("cordoned", cpu="16", unschedulable=True),
             node("down", cpu="16", ready=False),
             node("tainted", cpu="16", taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])]
    p = read(nodes)
    assert p.nodes == 1 and not p.check({}, wants("4")).fits


def test_groups_follow_labels_and_taints_but_not_hostnames() -> None:
    nodes = [node("a0", labels={"zone": "a"}), node("a1", labels={"zone": "a", "node-id": "a1"}),
             node("b0", labels={"zone": "b"}),
             node("g0", labels={"zone": "a"}, taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                                                      {"key": "spot", "effect": "PreferNoSchedule"}])]
    p = read(nodes, ignored_labels=frozenset({"kubernetes.io/hostname"}))
    signatures = sorted((dict(g.labels).get("zone"), len(g.taints), g.nodes) for g in p.groups)
    assert signatures == [("a", 0, 2), ("a", 1, 1), ("b", 0, 1)]


def test_selector_affinity_and_taint_mismatches_are_unresolvable_with_reasons() -> None:
    p = read([node("a0", labels={"zone": "a"}, taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
              node("b0", labels={"zone": "b"})])
    none = p.check({"nodeSelector": {"zone": "c"}}, wants("1"))
    assert not none.fits and not none.resolvable and "no lower node matches" in none.reason
    tainted = p.check({"nodeSelector": {"zone": "a"}}, wants("1"))
    assert not tainted.resolvable and "dedicated=gpu:NoSchedule" in tainted.reason
    tolerated = p.check({"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
                         wants("1"))
    assert tolerated.fits
    affinity = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}}
    assert p.check(affinity, wants("1")).fits


def test_extended_resources_absent_everywhere_are_unresolvable() -> None:
    p = read([node("n0"), node("g0", **{"nvidia.com/gpu": "2"})])
    assert p.resources[-1] == "nvidia.com/gpu"
    assert p.check({}, wants("1", **{"nvidia.com/gpu": "2"})).fits
    assert not p.check({}, wants("1", **{"nvidia.com/gpu": "3"})).resolvable
    absent = p.check({}, wants("1", **{"example.com/fpga": "1"}))
    assert not absent.resolvable and absent.reason == "no lower node has example.com/fpga"


def test_extra_capacity_is_one_more_node_shape_matching_any_selector() -> None:
    gpu = quantity.parse_list({"nvidia.com/gpu": "4", "cpu": "8", "memory": "32Gi"})
    p = read([node("n0", cpu="2")], extra_shapes=(gpu,))
    assert p.check({"nodeSelector": {"pool": "gpu"}}, wants("4", **{"nvidia.com/gpu": "1"})).fits
    assert not p.check({}, wants("16")).resolvable


def test_choose_picks_the_best_rated_fit() -> None:
    p = read([node("big", cpu="16"), node("small", cpu="4", labels={"size": "s"})])
    loosest = p.check({}, wants("2"), choose=lambda want, free, shape: free[0] - want[0])
    tightest = p.check({}, wants("2"), choose=lambda want, free, shape: want[0] - free[0])
    assert loosest.free is not None and loosest.free[0] == 16000 and loosest.shape == loosest.free
    assert tightest.free is not None and tightest.free[0] == 4000


def test_identical_clusters_build_identical_profiles() -> None:
    nodes = [node(f"n{i}", cpu=str(1 + i % 3)) for i in range(30)]
    shuffled = list(nodes)
    random.Random(4).shuffle(shuffled)
    assert profile.build(nodes, []) == profile.build(shuffled, [])


@pytest.mark.parametrize("status", [
    None, "x", {}, {"formatVersion": 2, "resources": [], "groups": []},
    {"formatVersion": 1, "resources": ["cpu"], "groups": [{"free": [[1, 2, 3]], "allocatable": [[1]]}]},
    {"formatVersion": 1, "resources": ["cpu"], "groups": [{"free": [], "allocatable": []}]},
    {"formatVersion": 1, "resources": ["cpu"], "groups": [{"free": [["a", 1]], "allocatable": [[1]]}]},
    {"formatVersion": 1, "resources": 3, "groups": None},
])
def test_malformed_profiles_raise_profile_error(status: Any) -> None:
    with pytest.raises(ProfileError):
        Profile.parse(status)


def test_five_thousand_nodes_in_fifty_signatures_stay_under_100_kib() -> None:
    rng = random.Random(10)
    nodes, pods = [], []
    for i in range(5000):
        sig = i % 50
        labels = {"topology.kubernetes.io/zone": f"zone-{sig % 5}", "node.kubernetes.io/instance-type": f"m{sig}.xl",
                  "pool": f"pool-{sig}"}
        name = f"node-{i:05d}"
        nodes.append(node(name, cpu=str(4 * (1 + sig % 4)), memory=f"{16 * (1 + sig % 4)}Gi", labels=labels))
        for _ in range(rng.randrange(0, 6)):
            pods.append(pod_on(name, cpu=f"{rng.randrange(100, 900)}m", memory=f"{rng.randrange(128, 2048)}Mi"))
    built = profile.build(nodes, pods)
    assert profile.size(built) < 100 * 1024
    assert len(built["groups"]) == 50 and built["nodes"] == 5000


def test_over_budget_profiles_are_trimmed_keeping_each_resource_maximum() -> None:
    rng = random.Random(3)
    nodes = [node(f"n{i}", cpu="64", memory="256Gi") for i in range(400)]
    # More cpu used means less memory used: every node is on the frontier.
    used = [rng.randrange(1, 63000) for _ in range(400)]
    pods = [pod_on(f"n{i}", cpu=f"{u}m", memory=f"{(63000 - u) * 4}Mi") for i, u in enumerate(used)]
    full = profile.build(nodes, pods, Options(max_bytes=10**9))
    small = profile.build(nodes, pods, Options(max_bytes=4096))
    assert profile.size(small) <= 4096 < profile.size(full)
    assert small["truncated"]["freePoints"] > 0
    for d in range(2):
        assert max(p[d] for p in small["groups"][0]["free"]) == max(p[d] for p in full["groups"][0]["free"])
    p = Profile.parse(small)
    assert p.truncated


# --- the property: profile == brute force ----------------------------------------------------------------

CPUS = ["500m", "1", "2", "4", "8"]
MEMS = ["1Gi", "1536Mi", "4Gi", "16Gi"]
TAINTS = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, {"key": "spot", "effect": "NoExecute"},
          {"key": "soft", "effect": "PreferNoSchedule"}]

labels_st = st.fixed_dictionaries({}, optional={"zone": st.sampled_from(["a", "b"]),
                                                "disk": st.sampled_from(["ssd", "hdd"]),
                                                "gen": st.sampled_from(["1", "3", "5"])})
node_st = st.builds(
    lambda labels, cpu, mem, gpu, taints, ready: dict(labels=labels, cpu=cpu, memory=mem, gpu=gpu, taints=taints,
                                                      ready=ready),
    labels_st, st.sampled_from(CPUS), st.sampled_from(MEMS), st.sampled_from([None, "1", "4"]),
    st.lists(st.sampled_from(TAINTS), max_size=2, unique_by=lambda t: t["key"]), st.sampled_from([True, True, False]),
)
usage_st = st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["100m", "250m", "1", "2"]),
                              st.sampled_from(["128Mi", "1Gi", "2Gi"]), st.sampled_from([None, "1"])), max_size=20)
requirement_st = st.one_of(
    st.builds(lambda k, v: {"key": k, "operator": "In", "values": v}, st.sampled_from(["zone", "disk"]),
              st.lists(st.sampled_from(["a", "b", "ssd", "hdd"]), min_size=1, max_size=2)),
    st.builds(lambda k: {"key": k, "operator": "DoesNotExist"}, st.sampled_from(["zone", "disk", "gen"])),
    st.builds(lambda k: {"key": k, "operator": "Exists"}, st.sampled_from(["zone", "disk", "gen"])),
    st.builds(lambda v: {"key": "zone", "operator": "NotIn", "values": [v]}, st.sampled_from(["a", "b"])),
    st.builds(lambda op, v: {"key": "gen", "operator": op, "values": [v]}, st.sampled_from(["Gt", "Lt"]),
              st.sampled_from(["2", "4"])),
)
spec_st = st.fixed_dictionaries({}, optional={
    "nodeSelector": st.dictionaries(st.sampled_from(["zone", "disk"]), st.sampled_from(["a", "b", "ssd"]), max_size=1),
    "affinity": st.lists(st.lists(requirement_st, min_size=1, max_size=2), min_size=1, max_size=2).map(
        lambda terms: {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}),
    "tolerations": st.lists(st.sampled_from([{"key": "dedicated", "operator": "Exists"},
                                             {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
                                             {"operator": "Exists"}]), max_size=2),
})
request_st = st.builds(
    lambda cpu, mem, gpu: {k: v for k, v in {"cpu": cpu, "memory": mem, "nvidia.com/gpu": gpu}.items() if v},
    st.sampled_from([None, "100m", "500m", "1", "1500m", "3", "7", "9"]),
    st.sampled_from([None, "256Mi", "1Gi", "3Gi", "15Gi", "20Gi"]), st.sampled_from([None, "1", "2", "5"]),
)


def brute_force(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], spec: dict[str, Any],
                requests: dict[str, Fraction]) -> tuple[bool, bool]:
    """(fits some node now, fits some node once emptied), scanning every node."""
    fits = big_enough = False
    names = sorted(set(requests) | {"cpu", "memory", "pods"})
    want = profile.vector_of(names, requests)
    for n in nodes:
        if not capacity.node_is_usable(n):
            continue
        labels = n["metadata"]["labels"]
        if not fit.placement_matches(spec, labels, n["metadata"]["name"]):
            continue
        if fit.untolerated(n["spec"]["taints"], spec.get("tolerations") or []) is not None:
            continue
        alloc = profile.vector_of(names, quantity.parse_list(n["status"]["allocatable"]))
        used = [0] * len(names)
        for p in pods:
            if p["spec"]["nodeName"] == n["metadata"]["name"]:
                used = [u + x for u, x in zip(used, profile.vector_of(names, capacity.pod_requests(p)), strict=True)]
        free = tuple(a - u for a, u in zip(alloc, used, strict=True))
        # Kubernetes checks only what the pod requests: an overcommitted node still takes a 0 request.
        big_enough = big_enough or all(a >= w for a, w in zip(alloc, want, strict=True) if w > 0)
        fits = fits or all(f >= w for f, w in zip(free, want, strict=True) if w > 0)
    return fits, big_enough


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(node_st, max_size=12), usage_st, spec_st, request_st)
def test_a_pod_fits_the_profile_exactly_when_it_fits_an_original_node(
    generated: list[dict[str, Any]], usage: list[tuple[int, str, str, str | None]], spec: dict[str, Any],
    request: dict[str, str],
) -> None:
    nodes = [node(f"n{i}", cpu=g["cpu"], memory=g["memory"], labels=g["labels"], taints=g["taints"],
                  ready=g["ready"], **({"nvidia.com/gpu": g["gpu"]} if g["gpu"] else {}))
             for i, g in enumerate(generated)]
    pods = [pod_on(f"n{i}", cpu=cpu, memory=mem, **({"nvidia.com/gpu": gpu} if gpu else {}))
            for i, cpu, mem, gpu in usage if i < len(nodes)]
    requests = capacity.pod_requests({"spec": {"containers": [{"name": "c", "resources": {"requests": request}}]}})
    asked = {name: quantity.units(name, amount) for name, amount in requests.items()}
    verdict = read(nodes, pods).check(spec, asked)
    fits, big_enough = brute_force(nodes, pods, spec, requests)
    assert verdict.fits == fits
    if not fits:
        assert verdict.resolvable == big_enough, verdict.reason
    # A trimmed profile may say "no" more often, never "yes" wrongly.
    trimmed = read(nodes, pods, max_bytes=300).check(spec, asked)
    assert not trimmed.fits or fits
