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
import dataclasses
import hashlib
import logging
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from tensile.controllers import startup
from tensile.controllers.context import Config, Context, default_node_ip
from tensile.controllers.copies import LowerCopies
from tensile.controllers.dependencies import DependencyController
from tensile.controllers.kubelet import ContextPods
from tensile.controllers.metrics import VirtualNodeCollector
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.controllers.node import NODE_LOOPS, NodeController
from tensile.controllers.pods import PodController
from tensile.controllers.profile import LOOP_NAME as PROFILE_LOOP
from tensile.controllers.profile import ProfilePublisher
from tensile.controllers.services import ServiceController
from tensile.kube.client import USER_AGENT, Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.leader import LeaderElector
from tensile.kube.metrics import ApiMetrics, MachineryCollector, new_registry
from tensile.kube.serving import OpsServer
from tensile.kube.supervisor import Supervisor
from tensile.kubelet import csr, tls
from tensile.kubelet.server import KubeletServer

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
#: The leader-election client's own budget: a Lease write every retry period.
ELECTION_QPS = 5.0
ELECTION_BURST = 10
#: The kubelet API's own budget on each side (reviews upstairs, logs and metrics downstairs).
KUBELET_API_QPS = 50.0
KUBELET_API_BURST = 100


class VirtualNode:
    def __init__(self, config: Config, upper: Kube, lower: Kube, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.upper = upper
        self.lower = lower
        self.registry = registry if registry is not None else new_registry()
        api = ApiMetrics(self.registry)
        for kube in (upper, lower):
            kube.metrics = api
        self.ctx: Context | None = None
        self.node: NodeController | None = None
        self.pods: PodController | None = None
        self.deps: DependencyController | None = None
        self.services: ServiceController | None = None
        self.profile: ProfilePublisher | None = None
        self.elector: LeaderElector | None = None
        self.supervisor = Supervisor(f"virtual-node {config.node_name}")
        self._server: OpsServer | None = None
        self.kubelet: KubeletServer | None = None
        self.serving_certificates: csr.ServingCertificates | None = None
        self._kubelet_clients: list[Kube] = []
        self._cert_dir: tempfile.TemporaryDirectory[str] | None = None
        #: Caches synced; writers (node heartbeat, workers) running: this replica leads, or runs alone.
        self.synced = False
        self.writing = False
        self.registry.register(MachineryCollector(
            informers=lambda: self.ctx.informers() if self.ctx else [],
            workers=lambda: [part.workers for part in (self.pods, self.deps, self.services) if part is not None],
            recorder=lambda: self.ctx.recorder if self.ctx else None,
            supervisor=self.supervisor,
        ))
        self.registry.register(VirtualNodeCollector(
            node=lambda: self.node,
            copies=lambda: {r: len(inf.store) for r, inf in self.ctx.lower_deps.items()} if self.ctx else {},
            elector=lambda: self.elector,
            leader_elect=config.leader_election is not None,
        ))

    def _elect(self) -> None:
        """The fence goes on every client that writes for this node; the election client has its own."""
        election = self.config.leader_election
        if election is None:
            return
        client = self.upper.fork("upper-leader-election", ELECTION_QPS, ELECTION_BURST)
        client.may_write = None  # the Lease itself is always written
        self.elector = LeaderElector(client, election)
        # The identity in the User-Agent: the apiserver's audit log tells the replicas apart.
        agent = f"{USER_AGENT} (virtual-node {self.config.node_name}; {election.identity})"
        client.user_agent = agent
        for kube in (self.upper, self.lower):
            kube.may_write = self.elector.may_write
            kube.user_agent = agent

    async def _lead(self) -> None:
        """Candidate, leader, candidate again: writers run only while this replica holds the Lease.

        A leader that loses the Lease (an upper outage past the renew deadline, a pause, another
        replica holding it) steps down: the fence has already stopped its writes; its workers and
        heartbeat loops stop, and it goes back to being a candidate with its caches warm. The
        supervisor starts this loop again if it fails unexpectedly, writers stopped first.
        """
        assert self.elector is not None
        await self._stop_writers()  # whatever a failed run of this loop left behind
        while True:
            await self.elector.acquire()
            await self._start_writers()
            await self.elector.renew()  # returns once the Lease is lost
            await self._stop_writers()
            log.warning("stepped down: writers stopped, caches kept; a candidate again",
                        extra={"node": self.config.node_name})

    async def _start_writers(self) -> None:
        assert self.node is not None and self.deps is not None and self.services is not None and self.pods is not None
        await self.node.start(self.supervisor)
        if self.profile is not None:
            profile = self.profile
            self.supervisor.spawn(PROFILE_LOOP, profile.run, progress=lambda: profile.beat,
                                  stall_after=max(WORKER_WEDGED_AFTER, 3 * self.config.profile_heartbeat))
        for name, part in (("dependency workers", self.deps), ("service workers", self.services),
                           ("pod workers", self.pods)):
            part.workers.queue.reopen()  # closed by a step-down: the keys below must get in
            part.start()  # every key of its caches once, then the workers
            self.supervisor.watch(name, part.workers.oldest_start, WORKER_WEDGED_AFTER)
        self.writing = True
        log.info("virtual node running", extra={"node": self.config.node_name, "cluster": self.config.cluster_id})

    async def _stop_writers(self) -> None:
        self.writing = False
        for part in (self.pods, self.services, self.deps):
            if part is not None:
                await part.stop()
        await self.supervisor.cancel(*NODE_LOOPS, PROFILE_LOOP, "dependency workers", "service workers", "pod workers")

    def build(self, upper_cluster_id: str, lower_cluster_id: str = "") -> Context:
        """Caches and controllers, wired together; nothing runs yet."""
        ctx = Context.build(self.config, self.upper, self.lower, upper_cluster_id, self.registry, lower_cluster_id)
        self.ctx = ctx
        namespaces = NamespaceEnsurer(self.lower, ctx.owner, ctx.lower_namespaces)
        copies = LowerCopies(ctx, namespaces)
        self.deps = DependencyController(ctx, copies)
        self.services = ServiceController(ctx, copies)
        self.pods = PodController(ctx, self.deps, namespaces)
        self.node = NodeController(ctx)
        if self.config.capacity_profile:
            self.profile = ProfilePublisher(ctx, self.node)
        return ctx

    async def start(self) -> None:
        cfg = self.config
        if not cfg.node_ip:
            cfg.node_ip = default_node_ip()
        self._elect()
        upper_id = await cluster_uid(self.upper)
        lower_id = await cluster_uid(self.lower)
        if not cfg.cluster_id:
            cfg.cluster_id = lower_id
        ctx = self.build(upper_id, lower_id)
        assert self.node is not None and self.deps is not None and self.services is not None and self.pods is not None
        await self._serve()
        for inf in ctx.informers():
            inf.start(self.supervisor)
        await asyncio.wait_for(asyncio.gather(*(inf.wait_synced() for inf in ctx.informers())),
                               cfg.startup_timeout or None)
        self.synced = True
        await self._serve_kubelet_api(ctx)
        log.info("caches synced", extra={"node": cfg.node_name, "cluster": cfg.cluster_id,
                                         "upper_cluster": upper_id})
        if self.elector is None:
            await self._start_writers()
        else:
            # Until it leads, a replica only reads: its caches stay warm for a fast take-over.
            self.supervisor.spawn("leader election", self._lead)

    async def stop(self) -> None:
        """Stop every part, each on its own: one that fails must not leave the others running."""
        self.synced = False
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            # First, so it cannot start writers while they stop.
            ("leader election loop", lambda: self.supervisor.cancel("leader election")),
            *((f"{part.__class__.__name__}.stop", part.stop)
              for part in (self.pods, self.services, self.deps) if part is not None),
        ]
        if self.ctx is not None and (self.elector is None or self.elector.may_write()):
            steps.append(("event flush", self.ctx.recorder.flush))
        steps.append(("supervised loops", self.supervisor.stop))
        if self.elector is not None:
            # After every writer stopped: give the Lease up so a follower takes over at once.
            steps.append(("leader election", self.elector.release))
        if self.ctx is not None:
            steps.append(("heartbeat client", self.ctx.heartbeat.close))
        if self.kubelet is not None:
            steps.append(("kubelet API", self.kubelet.stop))
        for client in self._kubelet_clients:
            steps.append((f"{client.name} client", client.close))
        if self._cert_dir is not None:
            steps.append(("self-signed certificate", self._remove_cert_dir))
        if self._server is not None:
            steps.append(("health server", self._server.stop))
        steps += [("upper client", self.upper.close), ("lower client", self.lower.close)]
        if self.elector is not None:
            steps.append(("leader-election client", self.elector.kube.close))
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

    def leadership(self) -> str:
        if self.elector is None:
            return "leader election off: this replica writes"
        if self.elector.may_write():
            return f"leading ({self.elector.config.identity})"
        return f"following: {self.elector.leader or 'nobody'} leads"

    def not_ready(self) -> list[str]:
        """Why this process should not be sent work: unsynced caches, a stale Lease."""
        reasons: list[str] = []
        if self.ctx is not None:
            reasons += [f"cache {inf.name} not synced" for inf in self.ctx.informers() if not inf.is_synced]
        if not self.synced and not reasons:
            reasons.append("starting or stopping")
        if self.node is not None and self.writing and not self.node.lease_fresh():
            reasons.append("the node Lease was not renewed within its duration")
        return reasons

    async def _remove_cert_dir(self) -> None:
        if self._cert_dir is not None:
            self._cert_dir.cleanup()
            self._cert_dir = None

    async def _serve_kubelet_api(self, ctx: Context) -> None:
        """Every replica serves it (reads and streams only); the Node points at the leader's address."""
        options = self.config.kubelet
        if options is None:
            return
        if not options.cert_file:
            options = dataclasses.replace(options)
            if self.config.cert_dir:
                directory = Path(self.config.cert_dir)
            else:
                self._cert_dir = tempfile.TemporaryDirectory(prefix="tensile-kubelet-")
                directory = Path(self._cert_dir.name)
            cert, key = tls.self_signed(directory, self.config.node_name, [self.config.node_ip])
            options.cert_file, options.key_file = str(cert), str(key)
        # Clients of their own: log follows and reviews never wait behind pod traffic (nor it behind them),
        # and no leader fence: every replica serves, and reviews, reads and streams are not the node's writes.
        upper = self.upper.fork("upper-kubelet-api", KUBELET_API_QPS, KUBELET_API_BURST)
        lower = self.lower.fork("lower-kubelet-api", KUBELET_API_QPS, KUBELET_API_BURST)
        upper.may_write = lower.may_write = None
        self._kubelet_clients = [upper, lower]
        kubelet = KubeletServer(options, ContextPods(ctx), upper, lower, self.registry)
        await kubelet.start()
        self.kubelet = kubelet
        self.supervisor.spawn("kubelet certificates", kubelet.watch_certificates,
                              progress=lambda: kubelet.certificates_checked, stall_after=300.0)
        if options.rotate_certificates:
            signed = csr.ServingCertificates(upper, self.config.node_name, [self.config.node_ip],
                                             Path(options.cert_file), Path(options.key_file),
                                             on_issued=kubelet.reload_certificates)
            self.serving_certificates = signed
            self.supervisor.spawn("kubelet serving certificate request", signed.run)

    async def _serve(self) -> None:
        if self.config.metrics_addr is None:
            return
        self._server = OpsServer(self.registry, self.problems, lambda: (self.not_ready(), self.leadership()))
        await self._server.start(*self.config.metrics_addr)


async def run(config: Config, upper_kubeconfig: str | None, lower_kubeconfig: str, qps: tuple[float, int, float, int]
              ) -> int:
    # Both kubeconfigs load and both servers answer as Kubernetes, or nothing starts (StartupError).
    upper = await startup.connect("upper", upper_kubeconfig, qps[0], qps[1])
    try:
        lower = await startup.connect("lower", lower_kubeconfig, qps[2], qps[3])
    except startup.StartupError:
        await upper.close()
        raise
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
