"""Metric names and labels against the conventions, and the client's request metrics and write fence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tensile.controllers.context import Config
from tensile.controllers.runner import VirtualNode
from tensile.kube.client import Kube
from tensile.kube.errors import ApiError
from tensile.kube.leader import LeaderElectionConfig
from tensile.kube.metrics import ApiMetrics, convention_problems, new_registry
from tests.fakes import FakeKube, http_server, pod, seed


def _virtual_node(leader: bool = True) -> VirtualNode:
    election = LeaderElectionConfig("kube-system", "vk-a", "me") if leader else None
    cfg = Config(node_name="vk-a", cluster_id="low", node_ip="10.0.0.1", leader_election=election)
    vn = VirtualNode(cfg, FakeKube("upper"), FakeKube("lower"))  # type: ignore[arg-type]
    vn._elect()
    vn.build("up")
    return vn


def _families(registry: CollectorRegistry) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_every_virtual_node_series_follows_the_conventions_and_parses() -> None:
    vn = _virtual_node()
    assert vn.ctx is not None and vn.pods is not None and vn.node is not None
    seed(vn.ctx.upper_pods, pod("web-0"))
    vn.ctx.metrics.pod_writes.labels("create", "success").inc()
    vn.ctx.metrics.create_latency.observe(0.3)
    vn.node.published = ({"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "2"}, {"cpu": "7500m", "memory": "15Gi"})
    assert convention_problems(vn.registry) == []
    families = _families(vn.registry)
    for name in ("tensile_pod_syncs", "tensile_pod_create_latency_seconds", "tensile_pod_running_latency_seconds",
                 "tensile_workqueue_depth", "tensile_workqueue_adds", "tensile_workqueue_retries",
                 "tensile_workqueue_longest_running_processor_seconds", "tensile_informer_lists",
                 "tensile_informer_watches", "tensile_cache_objects", "tensile_dependency_copies",
                 "tensile_node_capacity", "tensile_node_allocatable", "tensile_leader_is_leader",
                 "tensile_events", "process_resident_memory_bytes"):
        assert name in families, name
    capacity = {s.labels["resource"]: s.value for s in families["tensile_node_allocatable"].samples}
    assert capacity == {"cpu": 7.5, "memory": 15 * 2**30}
    objects = {s.labels["informer"]: s.value for s in families["tensile_cache_objects"].samples}
    assert objects["upper-pods"] == 1
    assert [s.value for s in families["tensile_leader_is_leader"].samples] == [0]  # not elected yet


def test_leader_gauge_is_one_without_election() -> None:
    families = _families(_virtual_node(leader=False).registry)
    assert [s.value for s in families["tensile_leader_is_leader"].samples] == [1]



async def test_asyncio_tasks_are_counted_at_scrape_time_and_follow_the_conventions() -> None:
    registry = new_registry()
    gate = asyncio.Event()
    extra = [asyncio.create_task(gate.wait()) for _ in range(3)]
    try:
        assert convention_problems(registry) == []
        during = _families(registry)["tensile_asyncio_tasks"].samples[0].value
        assert during >= 4  # this test's own task and the three waiting ones
    finally:
        gate.set()
        await asyncio.gather(*extra)
    after = _families(registry)["tensile_asyncio_tasks"].samples[0].value
    assert after == during - 3


def test_asyncio_tasks_are_absent_outside_an_event_loop() -> None:
    assert "tensile_asyncio_tasks" not in _families(new_registry())

class _Bad(Collector):
    def collect(self) -> Iterator[Metric]:
        counter = Metric("tensile_things", "things", "counter")
        counter.add_sample("tensile_things", {}, 1)  # a counter sample without _total
        yield counter


def test_the_convention_check_catches_every_kind_of_mistake() -> None:
    registry = CollectorRegistry()
    Gauge("requests_in_flight", "no prefix", registry=registry)
    Histogram("tensile_sync_latency_ms", "wrong unit", registry=registry)
    Counter("tensile_pod_restarts_total", "per pod", ["pod"], registry=registry).labels("web-0").inc()
    Gauge("tensile_undocumented", "", registry=registry)
    Gauge("tensile_queue_total", "a gauge named like a counter", registry=registry)
    registry.register(_Bad())
    problems = "\n".join(convention_problems(registry))
    assert "requests_in_flight: no tensile_ prefix" in problems
    assert "tensile_sync_latency_ms: a histogram must measure _seconds" in problems
    assert "tensile_pod_restarts: label 'pod'" in problems
    assert "tensile_undocumented: no HELP text" in problems
    assert "tensile_queue_total: a gauge named like a counter" in problems
    assert "tensile_things: a counter whose samples do not end in _total" in problems


RECEIVED = web.AppKey("received", list)


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in apiserver: ``/api/v1/ok`` answers every verb, ``/api/v1/missing`` 404; requests are recorded."""
    async def ok(request: web.Request) -> web.Response:
        request.app[RECEIVED].append(request.method)
        return web.json_response({"kind": "Pod"})

    async def missing(_: web.Request) -> web.Response:
        return web.json_response({"reason": "NotFound", "message": "no"}, status=404)

    app = web.Application()
    app[RECEIVED] = []
    app.router.add_route("*", "/api/v1/ok", ok)
    app.router.add_get("/api/v1/missing", missing)
    async with http_server(app) as url:
        yield url, app[RECEIVED]


def _kube(host: str) -> Kube:
    cfg = Configuration()
    cfg.host = host
    return Kube(cfg, name="upper")


async def test_requests_are_counted_by_cluster_verb_and_code_and_timed(apiserver: tuple[str, list[str]]) -> None:
    registry = CollectorRegistry()
    kube = _kube(apiserver[0])
    kube.metrics = ApiMetrics(registry)
    try:
        await kube.get("/api/v1/ok")
        await kube.create("/api/v1/ok", {})
        with pytest.raises(ApiError):
            await kube.get("/api/v1/missing")
    finally:
        await kube.close()
    value = registry.get_sample_value
    assert value("tensile_api_requests_total", {"cluster": "upper", "verb": "GET", "code": "200"}) == 1
    assert value("tensile_api_requests_total", {"cluster": "upper", "verb": "POST", "code": "200"}) == 1
    assert value("tensile_api_requests_total", {"cluster": "upper", "verb": "GET", "code": "404"}) == 1
    assert value("tensile_api_request_duration_seconds_count", {"cluster": "upper", "verb": "GET"}) == 2
    assert convention_problems(registry) == []


async def test_the_fence_stops_writes_but_not_reads_and_counts_what_it_refused(
        apiserver: tuple[str, list[str]]) -> None:
    registry = CollectorRegistry()
    kube = _kube(apiserver[0])
    kube.metrics = ApiMetrics(registry)
    leading = [True]
    kube.may_write = lambda: leading[0]
    fork = kube.fork("upper-heartbeat", 5, 10)
    try:
        await kube.create("/api/v1/ok", {})
        leading[0] = False
        with pytest.raises(ApiError) as err:
            await kube.create("/api/v1/ok", {})
        assert err.value.status == 503 and err.value.reason == "NotLeader"
        with pytest.raises(ApiError):
            await fork.create("/api/v1/ok", {})  # a fork shares the fence
        await kube.get("/api/v1/ok")  # reads go on: a follower keeps its caches
    finally:
        await kube.close()
        await fork.close()
    value = registry.get_sample_value
    assert value("tensile_api_requests_total", {"cluster": "upper", "verb": "POST", "code": "200"}) == 1
    assert value("tensile_api_writes_refused_total", {"cluster": "upper"}) == 1
    assert value("tensile_api_writes_refused_total", {"cluster": "upper-heartbeat"}) == 1
    assert value("tensile_api_requests_total", {"cluster": "upper-heartbeat", "verb": "POST", "code": "200"}) is None


async def test_a_fence_that_closes_while_a_write_is_on_its_way_stops_the_body_and_nothing_arrives(
        apiserver: tuple[str, list[str]]) -> None:
    """The SIGSTOP window: the check before sending passed, the fence closed before the bytes went out."""
    url, received = apiserver
    kube = _kube(url)
    answers = iter([True, False])  # open for the first look, closed by the time the body is written
    kube.may_write = lambda: next(answers, False)
    try:
        with pytest.raises(ApiError) as err:
            await kube.create("/api/v1/ok", {"kind": "Pod"})
        assert err.value.reason == "NotLeader"
        kube.may_write = lambda: True
        await kube.delete("/api/v1/ok")  # a delete without options carries a body too, so it is fenced the same way
    finally:
        await kube.close()
    assert received == ["DELETE"]


def test_kubelet_api_series_follow_the_conventions() -> None:
    from tensile.kubelet.metrics import KubeletMetrics, route_label

    registry = CollectorRegistry()
    m = KubeletMetrics(registry)
    m.requests.labels(route_label("exec"), "101").inc()
    m.requests.labels(route_label("some/pod/path"), "404").inc()
    m.duration.labels("exec").observe(0.1)
    m.streams.labels("exec").inc()
    m.bytes.labels("exec", "up").inc(10)
    m.reviews.labels("TokenReview").inc()
    assert convention_problems(registry) == []
    families = _families(registry)
    routes = {s.labels["route"] for s in families["tensile_kubelet_requests"].samples}
    assert routes == {"exec", "other"}  # never a path or a pod


def test_descheduler_series_follow_the_conventions() -> None:
    from descheduler.cli import Loop
    from descheduler.controller import Descheduler
    from descheduler.policy import Options

    registry = CollectorRegistry()
    loop = Loop(Descheduler(FakeKube(), Options()), 10.0, None, registry)  # type: ignore[arg-type]
    loop.moves.labels("evicted", "Unschedulable", "vk-a").inc()
    loop.duration.observe(0.01)
    assert convention_problems(registry) == []
    assert "tensile_descheduler_pods_evicted" in _families(registry)
