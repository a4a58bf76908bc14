"""``tensile descheduler``: move pods their lower cluster will not start to another virtual node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from prometheus_client import Counter, Histogram

from descheduler.controller import Descheduler
from descheduler.policy import Options
from tensile import conventions as c
from tensile import flags, logs
from tensile.kube.client import Kube
from tensile.kube.errors import ApiError
from tensile.kube.events import EventRecorder
from tensile.kube.leader import LeaderElectionConfig, LeaderElector
from tensile.kube.metrics import ApiMetrics, MachineryCollector, new_registry
from tensile.kube.serving import OpsServer
from tensile.kube.supervisor import Supervisor

log = logging.getLogger("tensile.descheduler")

COMPONENT = "tensile-descheduler"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("descheduler", help="move pods their lower cluster cannot start to another virtual node",
                              description="Evict (controller-owned) or recreate (bare) pods that stay Pending in "
                                          "their lower cluster, so they land on another virtual node.")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="upper cluster (default: $KUBECONFIG)")
    p.add_argument("--interval", type=flags.parse_duration, default=10.0, metavar="DURATION",
                   help="time between passes (default 10s)")
    p.add_argument("--unschedulable-for", type=flags.parse_duration, default=60.0, metavar="DURATION",
                   help="how long a pod must be reflected PodScheduled=False (Unschedulable, SchedulerError) "
                        "before it moves (default 1m)")
    p.add_argument("--max-pending", type=flags.parse_duration, default=180.0, metavar="DURATION",
                   help="how long a bound pod may wait for an image pull or a sandbox before it moves (default 3m)")
    p.add_argument("--cooldown", type=flags.parse_duration, default=600.0, metavar="DURATION",
                   help="a moved pod's owner avoids the node this long, and no pod moves twice within it (default 10m)")
    p.add_argument("--max-evictions-per-node", type=flags.positive_int, default=None, metavar="N",
                   help="at most N moves away from one virtual node per pass (default: no limit)")
    p.add_argument("--max-evictions-total", type=flags.positive_int, default=None, metavar="N",
                   help="at most N moves per pass in all (default: no limit)")
    p.add_argument("--dry-run", action="store_true", help="change nothing; log what would move")
    flags.add_metrics_flag(p, ":10258", "descheduler")
    flags.deprecated(p, "--metrics-port", "--metrics-addr",
                     convert=lambda v: flags.parse_bind_address(f":{v}") if v.strip() not in ("", "0") else None)
    flags.add_leader_election_flags(p, default_on=True, component="descheduler", default_name=COMPONENT)
    logs.add_flags(p)
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> Options:
    return Options(unschedulable_for=args.unschedulable_for, max_pending=args.max_pending, cooldown=args.cooldown,
                   max_per_node=args.max_evictions_per_node, max_total=args.max_evictions_total)


def election(args: argparse.Namespace) -> LeaderElectionConfig | None:
    if not args.leader_elect:
        return None
    config = LeaderElectionConfig(
        namespace=args.leader_elect_resource_namespace or c.KUBE_SYSTEM,
        name=args.leader_elect_resource_name or COMPONENT,
        identity=flags.leader_identity(),
        lease_duration=args.leader_elect_lease_duration, renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period)
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return config


class Loop:
    """Passes every interval while this replica leads; expired records cleaned up on the way."""

    def __init__(self, desched: Descheduler, interval: float, elector: LeaderElector | None, registry: Any) -> None:
        self.desched = desched
        self.interval = interval
        self.elector = elector
        self.moves = Counter("tensile_descheduler_pods_evicted", "Pods the descheduler moved, refused or left",
                             ["result", "reason", "node"], registry=registry)
        self.duration = Histogram("tensile_descheduler_pass_duration_seconds", "Time one descheduler pass took",
                                  registry=registry)

    async def passes(self) -> None:
        while True:
            if self.elector is None or self.elector.may_write():
                started = time.monotonic()
                for outcome in await self.desched.run_once():
                    self.moves.labels(outcome.action, outcome.reason, outcome.node).inc()
                await self.desched.clean_records()
                self.duration.observe(time.monotonic() - started)
            else:
                self.desched.beat = time.monotonic()
            await asyncio.sleep(self.interval)

    async def lead(self) -> None:
        assert self.elector is not None
        while True:
            await self.elector.acquire()
            await self.elector.renew()


async def serve(args: argparse.Namespace) -> int:
    registry = new_registry()
    kube = await Kube.from_kubeconfig(args.kubeconfig, 50.0, 100, name="upper")
    kube.metrics = ApiMetrics(registry)
    config = election(args)
    elector = None
    if config is not None:
        client = kube.fork("upper-leader-election", 5.0, 10)
        client.may_write = None
        elector = LeaderElector(client, config)
        kube.may_write = elector.may_write  # a follower's pass writes nothing, even if it ran
    recorder = EventRecorder(kube, COMPONENT, socket.gethostname())
    desched = Descheduler(kube, options(args), dry_run=args.dry_run, recorder=recorder)
    supervisor = Supervisor("descheduler")
    registry.register(MachineryCollector(informers=desched.informers, workers=lambda: [],
                                         recorder=lambda: recorder, supervisor=supervisor))
    loop = Loop(desched, args.interval, elector, registry)
    server = None
    if args.metrics_addr is not None:
        def ready() -> tuple[list[str], str]:
            reasons = [f"cache {i.name} not synced" for i in desched.informers() if not i.is_synced]
            state = "leading" if elector is None or elector.may_write() else f"following: {elector.leader} leads"
            return reasons, state

        server = OpsServer(registry, supervisor.problems, ready)
        await server.start(*args.metrics_addr)
    stop = asyncio.Event()
    aloop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        aloop.add_signal_handler(sig, stop.set)
    try:
        for informer in desched.informers():
            informer.start(supervisor)
        await asyncio.wait_for(asyncio.gather(*(i.wait_synced() for i in desched.informers())), 120)
        if elector is not None:
            supervisor.spawn("leader election", loop.lead)
        supervisor.spawn("passes", loop.passes, progress=lambda: desched.beat, stall_after=max(300.0,
                                                                                                5 * args.interval))
        log.info("descheduler running%s", " (dry run: nothing is changed)" if args.dry_run else "")
        await stop.wait()
    finally:
        await supervisor.stop()
        if elector is not None:
            with contextlib.suppress(ApiError):
                await elector.release()
            await elector.kube.close()
        if server is not None:
            await server.stop()
        await kube.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        logs.setup(args.log_level, args.log_format)
        election(args)
    except ValueError as exc:
        print(f"tensile descheduler: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(args))
    except ApiError as exc:
        print(f"tensile descheduler: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("tensile descheduler: caches did not sync in time; is the apiserver reachable?", file=sys.stderr)
        return 1
