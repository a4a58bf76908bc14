"""``tensile scheduler``: the extender's HTTP(S) server and the two watches that feed it.

It holds upper-cluster credentials only, and reads two things: the virtual Nodes
(``type=virtual-kubelet``, names only) and the ClusterProfiles the virtual nodes publish. Each
call is answered from memory, so its cost grows with the number of virtual nodes, not with the
number of lower nodes behind them.

Routes, on one port: ``POST /filter`` and ``POST /prioritize`` for every pod; ``POST
/profile/NAME/filter`` and ``.../prioritize`` act only on pods with ``schedulerName: NAME`` and
pass the others untouched (kube-scheduler shares its extenders among all its profiles, so this is
how the extender belongs to one profile only); ``/healthz``, ``/readyz``, ``/metrics``.

The port opens before the two watches have listed (so the probes answer), but a verb is never
answered from half-filled caches: until both have synced, before any virtual node is known as
virtual or any profile is held, every virtual node would pass as "not virtual" or "no profile",
which is placement without the extender dressed as an answer. kube-scheduler calls as soon as the
port opens (after a restart, too), so such a call waits for the sync up to :data:`SYNC_WAIT`, less
than kube-scheduler's ``httpTimeout``; past it, it is answered with an error, which kube-scheduler
handles as it was configured to (``ignorable``: schedule without the extender; else retry later).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cachetools import TTLCache
from prometheus_client import CollectorRegistry

from scheduler import wire
from scheduler.extender import Extender, Knowledge, Policy
from scheduler.metrics import ProfileCollector, SchedulerMetrics
from tensile import clusterprofile, origin, timestamps
from tensile import conventions as c
from tensile.kube import crds
from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.informer import Informer
from tensile.kube.metrics import ApiMetrics, MachineryCollector, new_registry
from tensile.kube.serving import OpsServer
from tensile.kube.supervisor import Supervisor
from tensile.logs import V

log = logging.getLogger("tensile.scheduler")

#: kube-scheduler sends every candidate Node when not nodeCacheCapable: 5,000 Nodes are ~50 MB.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
#: A virtual node passed without a usable profile is warned about at most this often.
WARN_EVERY = 300.0
INSTALL_HINT = "run `tensile scheduler crd | kubectl apply -f -` as a cluster admin"
#: How long a call waits for the watches' first sync (kube-scheduler's default ``httpTimeout`` here is 5 s).
SYNC_WAIT = 3.0
NOT_SYNCED = "tensile scheduler: its caches of virtual nodes and capacity profiles have not synced yet"


@dataclasses.dataclass
class ServerOptions:
    port: int = 8888
    bind_address: str = "0.0.0.0"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    policy: Policy = dataclasses.field(default_factory=Policy)
    install_crd: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def _name_only(node: JSON) -> JSON:
    """A virtual node as the extender needs it: its name, and the cluster it leads to (for the loop rule)."""
    meta = node.get("metadata") or {}
    out: JSON = {"metadata": {k: meta.get(k) for k in ("name", "resourceVersion")}}
    lower = origin.lower_cluster_of(node)
    if lower:
        out["metadata"]["labels"] = {c.LOWER_CLUSTER_LABEL: lower}
    return out


class SchedulerServer:
    def __init__(self, upper: Kube, options: ServerOptions, registry: CollectorRegistry | None = None) -> None:
        self.upper = upper
        self.options = options
        self.registry = registry if registry is not None else new_registry()
        upper.metrics = ApiMetrics(self.registry)
        self.knowledge = Knowledge()
        self.extender = Extender(self.knowledge, options.policy)
        self.metrics = SchedulerMetrics(self.registry)
        self.supervisor = Supervisor(c.SCHEDULER_COMPONENT)
        self.nodes = Informer(upper, path("nodes"), transform=_name_only, name="upper-virtual-nodes",
                              label_selector=f"{c.VIRTUAL_NODE_TYPE_LABEL}={c.VIRTUAL_NODE_TYPE_VALUE}")
        self.profiles = Informer(upper, clusterprofile.collection_path(), name="clusterprofiles")
        self.nodes.add_handler(self._on_node)
        self.profiles.add_handler(self._on_profile)
        self.ops = OpsServer(self.registry, self.supervisor.problems, self._readiness)
        self.registry.register(MachineryCollector(informers=lambda: [self.nodes, self.profiles], workers=list,
                                                  recorder=lambda: None, supervisor=self.supervisor))
        self.registry.register(ProfileCollector(lambda: self.knowledge, options.policy.max_age))
        self._warned: TTLCache[str, bool] = TTLCache(10_000, WARN_EVERY)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.sync_wait = SYNC_WAIT
        #: Set once a call waited the whole ``sync_wait`` in vain: later calls do not wait again.
        self._sync_overdue = False

    # --- watches --------------------------------------------------------------------------

    def _on_node(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old or {}
        self.knowledge.node_seen(str((obj.get("metadata") or {}).get("name") or ""), new is not None,
                                 origin.lower_cluster_of(obj))

    def _on_profile(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old or {}
        name = str((obj.get("metadata") or {}).get("name") or "")
        if new is None:
            self.knowledge.profile_gone(name)
            return
        status = new.get("status")
        age = 0.0
        if old is None and isinstance(status, dict):
            # First sight (a list at start-up): a profile whose writer stopped long ago is stale at once.
            beat = timestamps.parse(status.get(clusterprofile.HEARTBEAT_FIELD))
            if beat is not None:
                age = max(0.0, (timestamps.utc_now() - beat).total_seconds())
        self.knowledge.profile_seen(name, status, age)
        known = self.knowledge.profiles[name]
        if known.profile is None:
            log.warning("capacity profile cannot be read: %s", known.error, extra={"node": name})

    def _readiness(self) -> tuple[list[str], str]:
        reasons = [f"cache {inf.name} not synced" for inf in (self.nodes, self.profiles) if not inf.is_synced]
        held = len(self.knowledge.profiles)
        return reasons, f"{held} capacity profiles, {len(self.knowledge.virtual)} virtual nodes"

    # --- the verbs -------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self.nodes.is_synced and self.profiles.is_synced

    async def wait_synced(self) -> bool:
        """True once both watches have synced; waits up to ``sync_wait`` (only until one such wait failed)."""
        if self.synced:
            return True
        if self._sync_overdue:
            return False
        try:
            await asyncio.wait_for(asyncio.gather(self.nodes.wait_synced(), self.profiles.wait_synced()),
                                   self.sync_wait)
        except TimeoutError:
            if not self._sync_overdue:
                self._sync_overdue = True
                log.warning("%s after %.0fs: answering with an error until they have (readiness says why)",
                            NOT_SYNCED.removeprefix("tensile scheduler: "), self.sync_wait)
            return False
        return True

    def not_synced(self, verb: str, body: bytes) -> tuple[int, bytes]:
        """The answer while the caches are not synced: an error kube-scheduler recognises as one."""
        self.metrics.requests.labels(verb, "not_synced").inc()
        if verb != "filter":
            return 503, f"{NOT_SYNCED}\n".encode()
        try:
            args = wire.parse_args(body)
        except wire.BadRequest as exc:
            return 400, f"{exc}\n".encode()
        return 200, wire.filter_result(args, [], {}, {}, error=NOT_SYNCED)

    async def _verb(self, request: web.Request, verb: str) -> web.Response:
        body = await request.read()
        if await self.wait_synced():
            status, payload = self.answer(verb, body, request.match_info.get("profile"))
        else:
            status, payload = self.not_synced(verb, body)
        content_type = "application/json" if status == 200 else "text/plain"
        return web.Response(status=status, body=payload, content_type=content_type)

    def answer(self, verb: str, body: bytes, profile_name: str | None = None) -> tuple[int, bytes]:
        """(HTTP status, body) for one call: 200 with an answer, or 400 with why the body is not ExtenderArgs."""
        started = time.perf_counter()
        try:
            args = wire.parse_args(body)
        except wire.BadRequest as exc:
            self.metrics.requests.labels(verb, "bad_request").inc()
            log.warning("bad %s request: %s", verb, exc)
            return 400, f"{exc}\n".encode()
        pod_meta = args.pod.get("metadata") or {}
        pod_key = f"{pod_meta.get('namespace')}/{pod_meta.get('name')}"
        spec = args.pod.get("spec") or {}
        scheduler_name = spec.get("schedulerName") or "default-scheduler"
        try:
            if profile_name is not None and scheduler_name != profile_name:
                # Another profile's pod: every candidate passes, and scores are all equal.
                payload = (wire.filter_result(args, args.names, {}, {}) if verb == "filter"
                           else wire.priority_list(dict.fromkeys(args.names, 0)))
            else:
                payload = self._decide(verb, args, pod_key)
        except Exception as exc:  # a bug must answer this call with an error, not kill the server
            self.metrics.requests.labels(verb, "error").inc()
            log.exception("%s failed", verb, extra={"pod": pod_key})
            if verb == "filter":
                return 200, wire.filter_result(args, [], {}, {}, error=f"tensile scheduler: {exc}")
            return 500, f"tensile scheduler: {exc}\n".encode()
        self.metrics.requests.labels(verb, "success").inc()
        self.metrics.duration.labels(verb).observe(time.perf_counter() - started)
        return 200, payload

    def _decide(self, verb: str, args: wire.Args, pod_key: str) -> bytes:
        decision = self.extender.decide(args.pod, args.names, args.nodes, score=verb == "prioritize")
        for outcome, count in decision.counts.items():
            self.metrics.verdicts.labels(verb, outcome).inc(count)
        for node, why in decision.unprofiled:
            if node not in self._warned:
                self._warned[node] = True
                log.warning("passing a virtual node without a usable profile: %s", why,
                            extra={"node": node, "pod": pod_key})
        if verb == "filter":
            log.log(V(4), "filter", extra={"pod": pod_key, "passed": len(decision.passed),
                                           "failed": len(decision.failed), "unresolvable": len(decision.unresolvable)})
            for node, reason in {**decision.failed, **decision.unresolvable}.items():
                log.log(V(5), "node filtered out: %s", reason, extra={"pod": pod_key, "node": node})
            return wire.filter_result(args, decision.passed, decision.failed, decision.unresolvable)
        scores = {n: decision.scores.get(n, 0) for n in args.names}
        log.log(V(5), "prioritize", extra={"pod": pod_key, "scores": scores})
        return wire.priority_list(scores)

    async def _filter(self, request: web.Request) -> web.Response:
        return await self._verb(request, "filter")

    async def _prioritize(self, request: web.Request) -> web.Response:
        return await self._verb(request, "prioritize")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes)
        for prefix in ("", "/profile/{profile}"):
            app.router.add_post(f"{prefix}/filter", self._filter)
            app.router.add_post(f"{prefix}/prioritize", self._prioritize)
        self.ops.add_routes(app)
        return app

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> int:
        if self.options.install_crd:
            try:
                await crds.ensure(self.upper, clusterprofile.crd(), INSTALL_HINT)
            except ApiError as exc:
                # Not fatal: the profile watch retries, and readiness says why until it is installed.
                log.warning("ClusterProfile CRD: %s", exc)
        self.nodes.start(self.supervisor)
        self.profiles.start(self.supervisor)
        context = None
        if self.options.tls_cert_file is not None and self.options.tls_key_file is not None:
            context = ssl_context(self.options.tls_cert_file, self.options.tls_key_file)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.bind_address, self.options.port, ssl_context=context)
        await site.start()
        sockets: Any = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.options.port
        log.info("scheduler extender serving", extra={"port": self.port, "tls": context is not None,
                                                       "strategy": str(self.options.policy.strategy)})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.supervisor.stop()
        await self.upper.close()


async def serve(kubeconfig: str | None, options: ServerOptions, qps: float, burst: int) -> int:
    import signal

    upper = await Kube.from_kubeconfig(kubeconfig, qps, burst, name="upper")
    server = SchedulerServer(upper, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        await server.stop()
    return 0
