"""Run one virtual node: build the caches, start the controllers, stop cleanly.

Order matters for correctness after a crash: every cache is synced before
any worker runs, so start-up reconciliation sees the whole picture (adopts
existing lower copies, deletes orphans) instead of racing a half-filled
cache into duplicates. On SIGTERM the workers finish their in-flight keys,
then watches close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tensile.controllers.context import Config, Context, default_node_ip
from tensile.controllers.copies import LowerCopies
from tensile.controllers.dependencies import DependencyController
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.controllers.node import NodeController
from tensile.controllers.pods import PodController
from tensile.controllers.services import ServiceController
from tensile.kube.client import Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.supervisor import Supervisor

log = logging.getLogger("tensile")

SYNC_TIMEOUT = 120.0


async def cluster_uid(kube: Kube) -> str:
    """A stable id of a cluster: the UID of its kube-system namespace.

    Credentials that may not read namespaces (a kubelet's) get the hash of the cluster's CA
    instead: as stable, and the same for every virtual node of that cluster.
    """
    try:
        ns = await kube.get(path("namespaces", name="kube-system"))
    except ApiError as exc:
        ca_file = kube.config.ssl_ca_cert
        if exc.status != 403 or not ca_file:
            raise
        with open(ca_file, "rb") as ca:
            return "ca-" + hashlib.sha256(ca.read()).hexdigest()[:32]
    return str(ns["metadata"]["uid"])


#: A work item handled for longer than this means a wedged worker.
WORKER_WEDGED_AFTER = 300.0


class VirtualNode:
    def __init__(self, config: Config, upper: Kube, lower: Kube) -> None:
        self.config = config
        self.upper = upper
        self.lower = lower
        self.ctx: Context | None = None
        self.node: NodeController | None = None
        self.pods: PodController | None = None
        self.deps: DependencyController | None = None
        self.services: ServiceController | None = None
        self.supervisor = Supervisor(f"virtual-node {config.node_name}")
        self._site: web.TCPSite | None = None
        self._runner: web.AppRunner | None = None
        self.ready = False

    async def start(self) -> None:
        cfg = self.config
        if not cfg.node_ip:
            cfg.node_ip = default_node_ip()
        upper_id = await cluster_uid(self.upper)
        if not cfg.cluster_id:
            cfg.cluster_id = await cluster_uid(self.lower)
        ctx = Context.build(cfg, self.upper, self.lower, upper_id)
        self.ctx = ctx
        namespaces = NamespaceEnsurer(self.lower, ctx.owner, ctx.lower_namespaces)
        copies = LowerCopies(ctx, namespaces)
        self.deps = DependencyController(ctx, copies)
        self.services = ServiceController(ctx, copies)
        self.pods = PodController(ctx, self.deps, namespaces)
        self.node = NodeController(ctx)
        await self._serve_health()
        for inf in ctx.informers():
            inf.start(self.supervisor)
        await asyncio.wait_for(asyncio.gather(*(inf.wait_synced() for inf in ctx.informers())), SYNC_TIMEOUT)
        log.info("caches synced", extra={"node": cfg.node_name, "cluster": cfg.cluster_id,
                                         "upper_cluster": upper_id})
        await self.node.start(self.supervisor)
        for name, workers in (("dependency workers", self.deps.workers), ("service workers", self.services.workers),
                              ("pod workers", self.pods.workers)):
            workers.start()
            self.supervisor.watch(name, workers.oldest_start, WORKER_WEDGED_AFTER)
        self.ready = True
        log.info("virtual node running", extra={"node": cfg.node_name, "cluster": cfg.cluster_id})

    async def stop(self) -> None:
        """Stop every part, each on its own: one that fails must not leave the others running."""
        self.ready = False
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (f"{part.__class__.__name__}.stop", part.stop)
            for part in (self.pods, self.services, self.deps) if part is not None
        ]
        if self.ctx is not None:
            steps.append(("event flush", self.ctx.recorder.flush))
        steps.append(("supervised loops", self.supervisor.stop))
        if self.ctx is not None:
            steps.append(("heartbeat client", self.ctx.heartbeat.close))
        if self._runner is not None:
            steps.append(("health server", self._runner.cleanup))
        steps += [("upper client", self.upper.close), ("lower client", self.lower.close)]
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("stopping: %s failed", what, extra={"node": self.config.node_name})
        log.info("virtual node stopped", extra={"node": self.config.node_name})

    # --- health and metrics ---------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this process is not alive and well: dead or wedged loops."""
        return self.supervisor.problems()

    def not_ready(self) -> list[str]:
        """Why this process should not be sent work: unsynced caches, a stale Lease."""
        reasons: list[str] = []
        if not self.ready:
            reasons.append("starting or stopping")
        if self.ctx is not None:
            reasons += [f"cache {inf.name} not synced" for inf in self.ctx.informers() if not inf.synced.is_set()]
        if self.node is not None and self.ready and not self.node.lease_fresh():
            reasons.append("the node Lease was not renewed within its duration")
        return reasons

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "upper_requests": self.upper.requests,
            "lower_requests": self.lower.requests,
            "upper_reauths": self.upper.reauths,
            "lower_reauths": self.lower.reauths,
        }
        if self.pods is not None:
            out.update({f"pods_{k}": v for k, v in self.pods.stats.items()})
            out["pods_queue_depth"] = len(self.pods.queue)
            out["pods_retries"] = self.pods.queue.retries
        if self.ctx is not None:
            out["heartbeat_requests"] = self.ctx.heartbeat.requests
            recorder = self.ctx.recorder
            out.update(events_written=recorder.written, events_folded=recorder.folded,
                       events_dropped=recorder.dropped, events_failed=recorder.failed, events_queued=len(recorder))
            for inf in self.ctx.informers():
                out[f"cache_objects{{informer=\"{inf.name}\"}}"] = len(inf.store)
                out[f"informer_lists{{informer=\"{inf.name}\"}}"] = inf.relists
                out[f"informer_watches{{informer=\"{inf.name}\"}}"] = inf.watches
                out[f"informer_failures{{informer=\"{inf.name}\"}}"] = inf.failures
        out["supervised_restarts"] = sum(e.restarts for e in self.supervisor.entries.values())
        return out

    async def _serve_health(self) -> None:
        if not self.config.metrics_port:
            return

        async def healthz(_: web.Request) -> web.Response:
            problems = self.problems()
            if problems:
                return web.Response(text="\n".join(problems) + "\n", status=500)
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            reasons = self.not_ready()
            if reasons:
                return web.Response(text="\n".join(reasons) + "\n", status=503)
            return web.Response(text="ok")

        async def metrics(_: web.Request) -> web.Response:
            lines = []
            for k, v in self.metrics().items():
                lines.append(f"tensile_{k} {v}")
            return web.Response(text="\n".join(lines) + "\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "0.0.0.0", self.config.metrics_port)
        await self._site.start()


async def run(config: Config, upper_kubeconfig: str | None, lower_kubeconfig: str, qps: tuple[float, int, float, int]
              ) -> int:
    upper = await Kube.from_kubeconfig(upper_kubeconfig, qps[0], qps[1], name="upper")
    lower = await Kube.from_kubeconfig(lower_kubeconfig, qps[2], qps[3], name="lower")
    vn = VirtualNode(config, upper, lower)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        start = asyncio.create_task(vn.start())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            start.result()  # surface start-up errors
            await stop.wait()
        else:
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        log.info("signal received, shutting down", extra={"node": config.node_name})
    finally:
        await vn.stop()
    return 0
