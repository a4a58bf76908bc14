"""Fakes of the API for unit tests of the machinery: a scripted ``Kube``.

``FakeKube`` records every call and answers from handlers the test installs
per (method, path prefix); an unmatched call answers ``{}``. Watches replay
scripted streams: each ``watch()`` call takes the next script, a list of
events or exceptions (an exception is raised where it stands).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from tensile.kube.errors import ApiError
from tensile.kube.reachability import Reachability

JSON = dict[str, Any]
Answer = Callable[[str, Any], JSON]


class FakeKube:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.calls: list[tuple[str, str, Any]] = []
        self.answers: list[tuple[str, str, Answer]] = []
        self.watch_scripts: list[list[JSON | BaseException]] = []
        self.watch_params: list[dict[str, Any]] = []
        self.requests = 0
        self.reauths = 0
        self.reachability = Reachability(name)

    def answer(self, method: str, prefix: str, fn: Answer | JSON | BaseException) -> None:
        """Answer ``method`` calls whose path starts with ``prefix`` (newest rule first)."""
        def call(path: str, body: Any) -> JSON:
            if isinstance(fn, BaseException):
                raise fn
            return fn(path, body) if callable(fn) else fn
        self.answers.insert(0, (method, prefix, call))

    def of(self, method: str) -> list[tuple[str, Any]]:
        return [(p, b) for m, p, b in self.calls if m == method]

    async def request(self, method: str, url_path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str | None = None, timeout: float = 30.0) -> JSON:
        self.requests += 1
        self.calls.append((method, url_path, body if body is not None else dict(params or {})))
        await asyncio.sleep(0)
        for m, prefix, fn in self.answers:
            if m == method and url_path.startswith(prefix):
                return fn(url_path, body if body is not None else params)
        return {}

    async def get(self, url_path: str, **kw: Any) -> JSON:
        return await self.request("GET", url_path, **kw)

    async def create(self, url_path: str, body: JSON) -> JSON:
        return await self.request("POST", url_path, body=body)

    async def patch(self, url_path: str, body: Any, content_type: str = "") -> JSON:
        return await self.request("PATCH", url_path, body=body, content_type=content_type)

    async def replace(self, url_path: str, body: JSON) -> JSON:
        return await self.request("PUT", url_path, body=body)

    async def delete(self, url_path: str, body: JSON | None = None) -> JSON:
        return await self.request("DELETE", url_path, body=body)

    async def watch(self, url_path: str, params: Mapping[str, Any], timeout: float,
                    silence: float | None = None) -> AsyncIterator[JSON]:
        self.requests += 1
        self.watch_params.append(dict(params))
        script = self.watch_scripts.pop(0) if self.watch_scripts else None
        if script is None:
            await asyncio.sleep(3600)  # an idle watch: the test cancels it
            return
        for item in script:
            await asyncio.sleep(0)
            if isinstance(item, BaseException):
                raise item
            yield item

    def fork(self, name: str, qps: float, burst: int) -> FakeKube:
        return FakeKube(name)

    async def close(self) -> None:
        return None


def seed(informer: Any, *objs: JSON) -> None:
    """Put objects into an informer's store (and its indexes) as a list would, without handlers."""
    from tensile.kube.informer import key_of

    for obj in objs:
        key = key_of(obj)
        old = informer.store.get(key)
        informer.store[key] = obj
        informer._reindex(key, old, obj)


def not_found(what: str = "x") -> ApiError:
    return ApiError(404, "NotFound", f"{what} not found")


def pod(name: str, ns: str = "ns", rv: str = "1", **fields: Any) -> JSON:
    meta = {"name": name, "namespace": ns, "resourceVersion": rv, "uid": f"uid-{name}"}
    meta.update(fields.pop("metadata", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, **fields}


@contextlib.asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 (a stand-in apiserver); yields its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
