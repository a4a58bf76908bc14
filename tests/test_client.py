"""The raw-dict client against a real HTTP server standing in for an apiserver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration
from prometheus_client import CollectorRegistry

from tensile.kube.client import MAX_RETRIES, RETRY_AFTER_CAP, RETRY_JITTER, Kube, TokenBucket
from tensile.kube.errors import ApiError
from tensile.kube.metrics import ApiMetrics
from tests.fakes import http_server

TOKENS = web.AppKey("tokens", list)
#: Answers the throttling server gives, in order, before it answers 200: (status, headers).
SCRIPT = web.AppKey("script", list)
#: Methods the throttling server was asked with, in order.
SEEN = web.AppKey("seen", list)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, web.Application]]:
    app = web.Application()
    app[TOKENS] = []

    async def pods(request: web.Request) -> web.Response:
        app[TOKENS].append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer fresh":
            return web.json_response({"reason": "Unauthorized", "message": "token expired"}, status=401)
        return web.json_response({"items": []})

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", content_type="text/html")

    async def array(_: web.Request) -> web.Response:
        return web.json_response([1, 2])

    app.router.add_get("/api/v1/pods", pods)
    app.router.add_get("/html", html)
    app.router.add_get("/array", array)
    async with http_server(app) as url:
        yield url, app


def config(host: str, token: str) -> Configuration:
    cfg = Configuration()
    cfg.host = host
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return cfg


async def test_a_body_that_is_not_json_is_an_api_error_not_a_crash(server: tuple[str, web.Application]) -> None:
    kube = Kube(config(server[0], "fresh"))
    try:
        for path in ("/html", "/array"):
            with pytest.raises(ApiError) as err:
                await kube.get(path)
            assert err.value.status == 502 and err.value.reason == "InvalidResponse"
    finally:
        await kube.close()


async def test_a_401_reloads_credentials_once_and_retries(server: tuple[str, web.Application]) -> None:
    url, app = server
    reloads = 0

    async def reload() -> Configuration:
        nonlocal reloads
        reloads += 1
        return config(url, "fresh")

    kube = Kube(config(url, "stale"), reload=reload)
    try:
        assert await kube.get("/api/v1/pods") == {"items": []}
        assert reloads == 1 and kube.reauths == 1
        assert app[TOKENS] == ["Bearer stale", "Bearer fresh"]
    finally:
        await kube.close()


async def test_a_reload_that_does_not_help_surfaces_the_401(server: tuple[str, web.Application]) -> None:
    url, _ = server

    async def reload() -> Configuration:
        return config(url, "still-stale")

    kube = Kube(config(url, "stale"), reload=reload)
    try:
        with pytest.raises(ApiError) as err:
            await kube.get("/api/v1/pods")
        assert err.value.status == 401
    finally:
        await kube.close()


async def test_the_heartbeat_fork_never_waits_behind_pod_traffic(server: tuple[str, web.Application]) -> None:
    url, _ = server
    pods = Kube(config(url, "fresh"), qps=20, burst=1)
    heartbeat = pods.fork("heartbeat", 5, 10)
    try:
        # 40 pod requests need ~2 s of the shared budget; the heartbeat must not queue behind them.
        flood = [asyncio.create_task(pods.get("/api/v1/pods")) for _ in range(40)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await heartbeat.get("/api/v1/pods")
        heartbeat_wait = time.monotonic() - started
        flood_started = time.monotonic()
        await asyncio.gather(*flood)
        flood_rest = time.monotonic() - flood_started
        assert heartbeat_wait * 5 < flood_rest  # a ratio within one run, not a wall-clock bound
    finally:
        await pods.close()
        await heartbeat.close()


async def test_token_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(5):
        await bucket.acquire()
    burst = time.monotonic() - started
    for _ in range(10):
        await bucket.acquire()
    paced = time.monotonic() - started - burst
    assert burst * 5 < paced


async def test_waiters_are_served_in_the_order_they_came() -> None:
    bucket = TokenBucket(qps=200, burst=1)
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(10)))
    assert order == list(range(10))


def test_kubeconfig_proxy_url_and_tls_server_name_are_honoured() -> None:
    cfg = config("https://10.1.2.3:6443", "t")
    cfg.proxy = "http://proxy.internal:3128"
    cfg.tls_server_name = "kubernetes.default.svc"
    assert Kube(cfg)._route() == {"proxy": "http://proxy.internal:3128", "server_hostname": "kubernetes.default.svc"}
    assert Kube(config("https://10.1.2.3:6443", "t"))._route() == {}


# --- 429 and Retry-After ------------------------------------------------------------------------


@pytest.fixture
async def throttling() -> AsyncIterator[tuple[str, web.Application]]:
    """A stand-in apiserver that answers what ``app[SCRIPT]`` says, then 200."""
    app = web.Application()
    app[SCRIPT], app[SEEN] = [], []

    async def handle(request: web.Request) -> web.Response:
        app[SEEN].append(request.method)
        if app[SCRIPT]:
            status, headers = app[SCRIPT].pop(0)
            return web.json_response({"kind": "Status", "code": status, "reason": f"Code{status}",
                                      "message": "scripted"}, status=status, headers=headers)
        return web.json_response({"metadata": {"name": "p"}})

    app.router.add_route("*", "/api/v1/namespaces/ns/pods", handle)
    app.router.add_route("*", "/api/v1/namespaces/ns/pods/p", handle)
    async with http_server(app) as url:
        yield url, app


def recording_kube(url: str) -> tuple[Kube, list[float]]:
    """A client whose retry waits are recorded instead of slept."""
    kube = Kube(config(url, "fresh"))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    kube.sleep, kube.jitter = sleep, lambda: 0.0
    return kube, waits


async def test_a_429_is_sent_again_after_its_retry_after_and_counted(
    throttling: tuple[str, web.Application],
) -> None:
    url, app = throttling
    app[SCRIPT].extend([(429, {"Retry-After": "1"}), (429, {"Retry-After": "3"})])
    kube, waits = recording_kube(url)
    kube.metrics = ApiMetrics(CollectorRegistry())
    try:
        assert await kube.patch("/api/v1/namespaces/ns/pods/p", {"metadata": {"labels": {"a": "b"}}}) == {
            "metadata": {"name": "p"}}
        assert waits == [1.0, 3.0]  # the server's word, not a guess
        assert app[SEEN] == ["PATCH"] * 3
        assert kube.retries == 2
        assert kube.metrics.retries.labels("", "PATCH", "429")._value.get() == 2
    finally:
        await kube.close()


async def test_a_refused_create_is_sent_again_since_a_429_did_nothing(
    throttling: tuple[str, web.Application],
) -> None:
    url, app = throttling
    app[SCRIPT].append((429, {"Retry-After": "1"}))
    kube, waits = recording_kube(url)
    try:
        assert (await kube.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "p"}}))["metadata"]
        assert app[SEEN] == ["POST", "POST"] and waits == [1.0]
    finally:
        await kube.close()


async def test_retry_waits_are_capped_jittered_and_back_off_without_a_retry_after(
    throttling: tuple[str, web.Application],
) -> None:
    url, app = throttling
    app[SCRIPT].extend([(429, {"Retry-After": "3600"}), (429, {}), (429, {"Retry-After": "0"}), (429, {})])
    kube, waits = recording_kube(url)
    kube.jitter = lambda: 0.5
    try:
        await kube.get("/api/v1/namespaces/ns/pods/p")
        assert waits[0] == pytest.approx(RETRY_AFTER_CAP * (1 + RETRY_JITTER * 0.5))  # an hour is not waited for
        assert 0 < waits[1] < waits[2] < waits[3] < RETRY_AFTER_CAP  # no Retry-After: a short, growing backoff
    finally:
        await kube.close()


async def test_a_5xx_is_retried_only_with_a_retry_after(throttling: tuple[str, web.Application]) -> None:
    url, app = throttling
    app[SCRIPT].extend([(503, {"Retry-After": "2"}), (500, {})])
    kube, waits = recording_kube(url)
    try:
        with pytest.raises(ApiError) as err:
            await kube.get("/api/v1/namespaces/ns/pods/p")
        assert err.value.status == 500
        assert waits == [2.0] and app[SEEN] == ["GET", "GET"]
    finally:
        await kube.close()


async def test_gives_up_after_the_retry_bound_and_raises_the_429(throttling: tuple[str, web.Application]) -> None:
    url, app = throttling
    app[SCRIPT].extend([(429, {"Retry-After": "1"})] * (MAX_RETRIES + 5))
    kube, waits = recording_kube(url)
    try:
        with pytest.raises(ApiError) as err:
            await kube.replace("/api/v1/namespaces/ns/pods/p", {"metadata": {"name": "p"}})
        assert err.value.status == 429 and err.value.retry_after == 1.0
        assert len(app[SEEN]) == MAX_RETRIES + 1 and len(waits) == MAX_RETRIES
        assert kube.retries == MAX_RETRIES
    finally:
        await kube.close()


async def test_no_retry_starts_past_the_calls_timeout(throttling: tuple[str, web.Application]) -> None:
    url, app = throttling
    app[SCRIPT].extend([(429, {"Retry-After": "1"}), (429, {"Retry-After": "5"})])
    kube, waits = recording_kube(url)
    try:
        with pytest.raises(ApiError) as err:
            await kube.get("/api/v1/namespaces/ns/pods/p", timeout=3.0)
        assert err.value.status == 429 and waits == [1.0]  # a 5 s wait would end past the 3 s budget
    finally:
        await kube.close()


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_other_client_errors_are_not_retried(throttling: tuple[str, web.Application], status: int) -> None:
    url, app = throttling
    app[SCRIPT].append((status, {"Retry-After": "1"}))
    kube, waits = recording_kube(url)
    try:
        with pytest.raises(ApiError) as err:
            await kube.patch("/api/v1/namespaces/ns/pods/p", {"metadata": {}})
        assert err.value.status == status
        assert app[SEEN] == ["PATCH"] and waits == [] and kube.retries == 0
    finally:
        await kube.close()


async def test_a_write_refused_by_the_leader_fence_is_not_retried(throttling: tuple[str, web.Application]) -> None:
    url, app = throttling
    kube, waits = recording_kube(url)
    kube.may_write = lambda: False
    try:
        with pytest.raises(ApiError) as err:
            await kube.patch("/api/v1/namespaces/ns/pods/p", {"metadata": {}})
        assert err.value.not_leader
        assert app[SEEN] == [] and waits == []
    finally:
        await kube.close()


async def test_a_watch_yields_every_event_whatever_the_chunking() -> None:
    """Events split across chunks, several in one chunk, a 1 MiB one in many pieces, blank lines."""
    events = [{"type": "ADDED", "object": {"metadata": {"name": f"p{i}"}, "data": "x" * (i * 37)}} for i in range(50)]
    events.append({"type": "MODIFIED", "object": {"metadata": {"name": "big"}, "data": "y" * 2**20}})
    stream = b"".join(orjson.dumps(e) + b"\n" + (b"\n" if i % 7 == 0 else b"") for i, e in enumerate(events))
    sizes = [1, 3, 4096, 17, 65536, 250_000, 2]
    app = web.Application()

    async def watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        at, i = 0, 0
        while at < len(stream):
            await resp.write(stream[at:at + sizes[i % len(sizes)]])
            at += sizes[i % len(sizes)]
            i += 1
        await resp.write_eof()
        return resp

    app.router.add_get("/api/v1/pods", watch)
    async with http_server(app) as url:
        kube = Kube(config(url, "fresh"))
        try:
            got = [e async for e in kube.watch("/api/v1/pods", {}, timeout=30)]
        finally:
            await kube.close()
    assert got == events
