"""``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP, the same for every component.

- ``/healthz`` (and ``/livez``): 500 with the reasons when a loop died or is
  wedged, for a liveness probe; a restart is the right answer to those.
- ``/readyz``: 503 with the reasons while caches sync or the component cannot
  do its job; 200 otherwise, with a line saying whether this replica leads.
- ``/metrics``: the process registry, in Prometheus text or OpenMetrics as
  the scraper asks (prometheus-client's own encoders).

Nothing here is secret (no object names in metrics, no Secret data
anywhere), but the endpoint is not authenticated either: bind it to the pod
IP or localhost (``--metrics-addr``) and let NetworkPolicy decide who scrapes.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

#: (reasons it is not ready, a line about leadership or state)
Readiness = tuple[list[str], str]


class OpsServer:
    def __init__(self, registry: CollectorRegistry, live: Callable[[], list[str]],
                 ready: Callable[[], Readiness]) -> None:
        self.registry = registry
        self._live = live
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _healthz(self, _: web.Request) -> web.Response:
        problems = self._live()
        if problems:
            return web.Response(text="\n".join(problems) + "\n", status=500)
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        reasons, state = self._ready()
        if reasons:
            return web.Response(text="\n".join([*reasons, state]) + "\n", status=503)
        return web.Response(text=f"ok\n{state}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def add_routes(self, app: web.Application) -> None:
        """Serve the endpoints from another component's own application (one port for both)."""
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # the bound port, for port 0
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
