"""The extender's decisions and its HTTP answers, from profiles alone; fuzzed with hypothesis."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.extender import NEVER, NO_PROFILE, STALE, Extender, Knowledge, Missing, Policy, Strategy
from scheduler.server import SchedulerServer, ServerOptions
from tensile import cluster_selector, profile
from tensile import conventions as c
from tests.fakes import FakeKube

JSON = dict[str, Any]


def lower(name: str, cpu: str, free_cpu: str | None = None, **labels: str) -> tuple[JSON, list[JSON]]:
    node = {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "32Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    pods = []
    if free_cpu is not None:
        used = f"{int(cpu) - int(free_cpu)}"
        pods = [{"spec": {"nodeName": name, "containers": [{"name": "c", "resources": {"requests": {"cpu": used}}}]},
                 "status": {"phase": "Running"}}]
    return node, pods


def status_of(*nodes: tuple[JSON, list[JSON]], **options: Any) -> JSON:
    return profile.build([n for n, _ in nodes], [p for _, ps in nodes for p in ps], profile.Options(**options))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def knowledge(clock: Clock | None = None) -> Knowledge:
    k = Knowledge(clock or Clock())
    k.node_seen("vk-small", True)
    k.node_seen("vk-big", True)
    k.profile_seen("vk-small", {**status_of(*[lower(f"a{i}", "1", pool="small") for i in range(40)]),
                                "heartbeatTime": "t1"})
    k.profile_seen("vk-big", {**status_of(lower("b0", "8", "6", pool="big"), lower("b1", "8", pool="big")),
                              "heartbeatTime": "t1"})
    return k


def pod(cpu: str | None = None, **spec: Any) -> JSON:
    container: JSON = {"name": "c", "image": "x"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [container], **spec}}


NAMES = ["vk-small", "vk-big", "upper-0"]


def test_a_four_cpu_pod_fits_only_the_big_cluster_and_the_reason_says_why() -> None:
    d = Extender(knowledge(), Policy()).decide(pod("4"), NAMES, None, score=False)
    assert d.passed == ["vk-big", "upper-0"]
    assert d.unresolvable == {"vk-small": "no lower node is big enough: the pod needs 4 CPU, the largest lower node "
                                          "has 1 CPU"}


def test_a_full_cluster_fails_resolvably_so_preemption_still_sees_it() -> None:
    d = Extender(knowledge(), Policy()).decide(pod("8500m"), NAMES, None, score=False)
    assert "vk-big" in d.unresolvable  # no 8.5-CPU node at all
    d = Extender(knowledge(), Policy()).decide(pod("8"), NAMES, None, score=False)
    assert d.passed == ["vk-big", "upper-0"]
    k = knowledge()
    k.profile_seen("vk-big", status_of(lower("b0", "8", "6", pool="big"), lower("b1", "8", "2", pool="big")))
    d = Extender(k, Policy()).decide(pod("7"), NAMES, None, score=False)
    assert d.failed == {"vk-big": "no lower node with 7 CPU free; the largest free is 6 CPU on 1 node"}


def test_original_constraints_come_from_the_cluster_selector_annotation() -> None:
    upper = pod("500m", nodeSelector={c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE})
    upper["metadata"]["labels"] = {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}
    upper["metadata"]["annotations"] = {c.CLUSTER_SELECTOR_ANNOTATION: cluster_selector.encode(
        {"nodeSelector": {"pool": "small"}})}
    d = Extender(knowledge(), Policy()).decide(upper, NAMES, None, score=False)
    assert d.passed == ["vk-small", "upper-0"] and "vk-big" in d.unresolvable
    # Not opted in: the annotation is not honoured (the virtual node would not honour it either).
    del upper["metadata"]["labels"]
    d = Extender(knowledge(), Policy()).decide(upper, NAMES, None, score=False)
    assert d.passed == NAMES


def test_a_malformed_annotation_fails_the_virtual_nodes_with_the_reason() -> None:
    upper = pod("1")
    upper["metadata"]["labels"] = {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}
    upper["metadata"]["annotations"] = {c.CLUSTER_SELECTOR_ANNOTATION: "{nope"}
    d = Extender(knowledge(), Policy()).decide(upper, NAMES, None, score=False)
    assert d.passed == ["upper-0"] and "not valid JSON" in d.unresolvable["vk-big"]


def test_a_pod_without_requests_fits_and_nodes_sent_whole_are_classified_by_label() -> None:
    nodes = {"vk-big": {"metadata": {"name": "vk-big", "labels": {"type": "virtual-kubelet"}}},
             "other": {"metadata": {"name": "other"}}}
    d = Extender(knowledge(), Policy()).decide(pod(), ["vk-big", "other"], nodes, score=False)
    assert d.passed == ["vk-big", "other"] and d.counts["not_virtual"] == 1


def test_missing_and_stale_profiles_follow_the_policy() -> None:
    clock = Clock()
    k = knowledge(clock)
    k.node_seen("vk-new", True)
    names = ["vk-new", "vk-big"]
    d = Extender(k, Policy()).decide(pod("1"), names, None, score=False)
    assert d.passed == names and d.counts[NO_PROFILE] == 1 and d.unprofiled[0][0] == "vk-new"
    d = Extender(k, Policy(missing=Missing.FAIL)).decide(pod("1"), names, None, score=False)
    assert "no capacity profile" in d.failed["vk-new"]
    clock.now += 181
    d = Extender(k, Policy(missing=Missing.FAIL)).decide(pod("1"), names, None, score=False)
    assert d.counts[STALE] == 1 and "stale" in d.failed["vk-big"]
    k.profile_seen("vk-big", {**status_of(lower("b0", "8")), "heartbeatTime": "t2"})  # renewed
    d = Extender(k, Policy(missing=Missing.FAIL)).decide(pod("1"), names, None, score=False)
    assert d.passed == ["vk-big"]


def test_an_unreadable_profile_counts_as_missing() -> None:
    k = knowledge()
    k.profile_seen("vk-big", {"formatVersion": 99})
    d = Extender(k, Policy(missing=Missing.FAIL)).decide(pod("1"), ["vk-big"], None, score=False)
    assert "cannot be read" in d.failed["vk-big"]


def test_prioritize_spread_prefers_room_binpack_prefers_fullness_and_real_nodes_score_max() -> None:
    k = knowledge()
    k.profile_seen("vk-small", status_of(lower("a0", "16", "15")))
    k.profile_seen("vk-big", status_of(lower("b0", "16", "3")))
    spread = Extender(k, Policy(strategy=Strategy.SPREAD)).decide(pod("2"), NAMES, None, score=True).scores
    binpack = Extender(k, Policy(strategy=Strategy.BINPACK)).decide(pod("2"), NAMES, None, score=True).scores
    assert spread["vk-small"] > spread["vk-big"] and binpack["vk-big"] > binpack["vk-small"]
    assert spread["upper-0"] == binpack["upper-0"] == 10
    assert all(0 <= v <= 10 for v in [*spread.values(), *binpack.values()])


# --- the HTTP answer ---------------------------------------------------------------------------------------

def server(**policy: Any) -> SchedulerServer:
    s = SchedulerServer(FakeKube("upper"), ServerOptions(policy=Policy(**policy)))  # type: ignore[arg-type]
    s.knowledge = knowledge()
    s.extender = Extender(s.knowledge, s.extender.policy)
    return s


def test_filter_answers_in_the_form_it_was_asked() -> None:
    s = server()
    status, body = s.answer("filter", orjson.dumps({"Pod": pod("4"), "NodeNames": NAMES}))
    out = orjson.loads(body)
    assert status == 200 and out["NodeNames"] == ["vk-big", "upper-0"] and "vk-small" in out[
        "FailedAndUnresolvableNodes"]
    assert s.metrics.verdicts.labels("filter", NEVER)._value.get() == 1
    status, body = s.answer("prioritize", orjson.dumps({"Pod": pod("1"), "NodeNames": NAMES}))
    assert status == 200 and [h["Host"] for h in orjson.loads(body)] == NAMES


def test_a_profile_scoped_route_passes_other_profiles_pods_untouched() -> None:
    s = server()
    status, body = s.answer("filter", orjson.dumps({"Pod": pod("4"), "NodeNames": NAMES}), profile_name="tensile")
    assert status == 200 and orjson.loads(body)["NodeNames"] == NAMES
    scoped = pod("4", schedulerName="tensile")
    _, body = s.answer("filter", orjson.dumps({"Pod": scoped, "NodeNames": NAMES}), profile_name="tensile")
    assert orjson.loads(body)["NodeNames"] == ["vk-big", "upper-0"]


QUANTITIES = st.sampled_from(["1", "500m", "1Gi", "1e3", "0.5", "-1", "x", ""])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
pod_like = st.fixed_dictionaries({}, optional={
    "metadata": st.fixed_dictionaries({}, optional={
        "labels": st.dictionaries(st.sampled_from([c.VIRTUAL_POD_LABEL, "x"]), st.sampled_from(["true", "1"]))
        | json_values,
        "annotations": st.dictionaries(st.just(c.CLUSTER_SELECTOR_ANNOTATION), json_values.map(json.dumps) | st.text())
        | json_values}),
    "spec": st.fixed_dictionaries({}, optional={
        "containers": st.lists(st.fixed_dictionaries({"resources": st.fixed_dictionaries({}, optional={
            "requests": st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), QUANTITIES | json_values)
            | json_values}) | json_values})) | json_values,
        "nodeSelector": st.dictionaries(st.sampled_from(["pool", "zone"]), st.text(max_size=5)) | json_values,
        "affinity": json_values, "tolerations": json_values, "initContainers": json_values, "overhead": json_values,
    }),
}) | json_values
bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda p, names: orjson.dumps({"Pod": p, "NodeNames": names}), pod_like,
              st.lists(st.sampled_from([*NAMES, "unknown"]), max_size=4) | json_values),
    st.builds(lambda p, items: orjson.dumps({"Pod": p, "Nodes": {"items": items}}), pod_like, json_values),
    json_values.map(orjson.dumps),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["filter", "prioritize"]), bodies)
def test_no_body_makes_the_extender_fail_with_anything_but_a_400_or_an_answer(verb: str, body: bytes) -> None:
    s = server()
    status, payload = s.answer(verb, body)
    assert status in (200, 400), payload
    if status == 200:
        out = orjson.loads(payload)
        if verb == "filter":
            assert out["Error"] == "" and set(out) >= {"FailedNodes", "FailedAndUnresolvableNodes"}
        else:
            assert all(0 <= h["Score"] <= 10 for h in out)
    assert s.metrics.requests.labels(verb, "error")._value.get() == 0


async def test_over_large_bodies_get_a_413_and_the_routes_answer_over_http() -> None:
    import aiohttp

    from tests.fakes import http_server

    s = SchedulerServer(FakeKube("upper"), ServerOptions(max_request_bytes=4096))  # type: ignore[arg-type]
    s.knowledge.profile_seen("vk-big", status_of(lower("b0", "8")))
    s.nodes.synced.set()
    s.profiles.synced.set()
    async with http_server(s.app()) as url, aiohttp.ClientSession() as session:
        async with session.post(f"{url}/filter", data=b"{" + b" " * 8192 + b"}") as r:
            assert r.status == 413
        body = orjson.dumps({"Pod": pod("4"), "NodeNames": ["vk-big"]})
        async with session.post(f"{url}/filter", data=body) as r:
            assert r.status == 200 and (await r.json())["NodeNames"] == ["vk-big"]
        async with session.post(f"{url}/profile/tensile/prioritize", data=body) as r:
            assert await r.json() == [{"Host": "vk-big", "Score": 0}]  # another profile's pod
        async with session.get(f"{url}/metrics") as r:
            assert "tensile_scheduler_requests_total" in await r.text()
        async with session.get(f"{url}/readyz") as r:
            assert r.status == 200


async def test_a_call_before_the_caches_synced_waits_for_them_and_never_answers_from_half_a_picture() -> None:
    """After a restart kube-scheduler calls as soon as the port opens; an empty cache would pass every
    virtual node (not known as virtual, or no profile), which places pods where they do not fit."""
    import asyncio

    import aiohttp

    from tests.fakes import http_server

    s = SchedulerServer(FakeKube("upper"), ServerOptions())  # type: ignore[arg-type]
    s.sync_wait = 5.0
    body = orjson.dumps({"Pod": pod("4"), "NodeNames": NAMES})
    async with http_server(s.app()) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as r:
            assert r.status == 503  # its watches have not synced
        call = asyncio.ensure_future(session.post(f"{url}/filter", data=body))
        await asyncio.sleep(0.2)
        assert not call.done()  # waiting for the sync, not answering
        s.knowledge = knowledge()
        s.extender = Extender(s.knowledge, s.extender.policy)
        s.nodes.synced.set()
        s.profiles.synced.set()
        async with await call as r:
            out = await r.json()
        assert r.status == 200 and out["Error"] == "" and "vk-small" in out["FailedAndUnresolvableNodes"]
    s = SchedulerServer(FakeKube("upper"), ServerOptions())  # type: ignore[arg-type]
    s.sync_wait = 0.05
    async with http_server(s.app()) as url, aiohttp.ClientSession() as session:
        async with session.post(f"{url}/filter", data=body) as r:
            out = await r.json()
            assert r.status == 200 and out["NodeNames"] == [] and "not synced" in out["Error"]
        async with session.post(f"{url}/prioritize", data=body) as r:
            assert r.status == 503 and "not synced" in await r.text()
        async with session.post(f"{url}/filter", data=b"[]") as r:
            assert r.status == 400
    assert s.metrics.requests.labels("filter", "not_synced")._value.get() == 2
