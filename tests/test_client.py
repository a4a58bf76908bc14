"""The raw-dict client against a real HTTP server standing in for an apiserver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration

from tensile.kube.client import Kube, TokenBucket
from tensile.kube.errors import ApiError
from tests.fakes import http_server

TOKENS = web.AppKey("tokens", list)


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
