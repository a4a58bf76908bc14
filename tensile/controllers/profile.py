"""Publish the lower cluster's capacity profile upstairs, as the ``ClusterProfile`` named after the node.

Driven by the lower node and pod caches the node controller already keeps (no extra watch): any
change marks the profile dirty, and it is rebuilt at most once every ``--profile-interval``
(default 2 s). It is written only when it differs from the last one written, and otherwise once
every ``--profile-heartbeat`` (default 60 s) with a fresh ``heartbeatTime``, so the extender can
tell a quiet lower cluster from a virtual node that stopped publishing.

The ClusterProfile CRD is created on first use when these credentials may; otherwise a warning
says how to install it (``tensile scheduler crd | kubectl apply -f -``), and publishing retries
every minute, so installing it later needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from tensile import clusterprofile, profile, timestamps
from tensile.controllers.context import Context
from tensile.controllers.metrics import result_of
from tensile.kube import crds
from tensile.kube.client import JSON
from tensile.kube.errors import ApiError
from tensile.kube.events import NORMAL, WARNING

if TYPE_CHECKING:
    from tensile.controllers.node import NodeController

log = logging.getLogger("tensile.profile")

#: How often to look again for a missing CRD, or retry a refused write.
RETRY_AFTER = 60.0
INSTALL_HINT = "run `tensile scheduler crd | kubectl apply -f -` (or --capacity-profile=false)"
LOOP_NAME = "capacity profile"


class ProfileMetrics:
    def __init__(self, ctx: Context) -> None:
        registry = ctx.metrics.registry
        self.writes = Counter(
            "tensile_profile_writes_total", "ClusterProfile writes, by reason (changed, heartbeat) and result "
            "(success, not_found, conflict, refused, not_leader, error).", ["reason", "result"], registry=registry)
        self.bytes = Gauge("tensile_profile_bytes", "Size of the last capacity profile built, in bytes of JSON.",
                           registry=registry)
        self.groups = Gauge("tensile_profile_groups", "Node groups (scheduling signatures) in the last profile.",
                            registry=registry)
        self.truncated = Gauge("tensile_profile_truncated", "1 when the last profile had to drop frontier points "
                               "or groups to stay within --profile-max-bytes.", registry=registry)
        self.build_seconds = Gauge("tensile_profile_build_seconds", "Time the last profile build took.",
                                   registry=registry)


class ProfilePublisher:
    def __init__(self, ctx: Context, node: NodeController) -> None:
        self.ctx = ctx
        self.node = node
        self.name = ctx.config.node_name
        self.options = profile.Options(
            ignored_labels=profile.DEFAULT_IGNORED_LABELS | ctx.config.profile_ignored_labels,
            extra_shapes=ctx.config.extra_capacity,
            upper_only_keys=ctx.upper_only_keys,
            max_bytes=ctx.config.profile_max_bytes,
        )
        self.metrics = ProfileMetrics(ctx)
        self._dirty = asyncio.Event()
        #: The profile last written (without heartbeat), and when (monotonic).
        self.published: JSON | None = None
        self.written_at = 0.0
        self.beat = time.monotonic()
        #: The failure last reported (log and Event), so each is reported once, not per retry.
        self._failing = ""
        ctx.lower_nodes.add_handler(self._mark)
        for informer in ctx.lower_pods_active():
            informer.add_handler(self._mark)

    def _mark(self, old: Any, new: Any) -> None:
        self._dirty.set()

    def build(self) -> JSON:
        started = time.perf_counter()
        built = profile.build_from(self.ctx.lower_nodes.items(), self.ctx.lower_usage.units, self.options)
        self.metrics.build_seconds.set(time.perf_counter() - started)
        self.metrics.bytes.set(profile.size(built))
        self.metrics.groups.set(len(built["groups"]))
        self.metrics.truncated.set(1 if built.get("truncated") else 0)
        return built

    async def publish(self, force: bool = False) -> bool:
        """Write the profile if it changed (or ``force``); True when a write was made."""
        built = self.build()
        if not force and built == self.published:
            return False
        reason = "changed" if built != self.published else "heartbeat"
        status = {**built, clusterprofile.HEARTBEAT_FIELD: timestamps.rfc3339()}
        body = clusterprofile.manifest(self.name, self.node.node_uid, self.ctx.config.cluster_id, status)
        # A merge patch keeps fields it does not name: an old ``truncated`` must be removed with null.
        patch = clusterprofile.manifest(self.name, self.node.node_uid, self.ctx.config.cluster_id,
                                        {**status, "truncated": built.get("truncated")})
        try:
            try:
                await self.ctx.upper.patch(clusterprofile.object_path(self.name), patch)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                await crds.ensure(self.ctx.upper, clusterprofile.crd(), INSTALL_HINT)
                await self.ctx.upper.create(clusterprofile.collection_path(), body)
        except ApiError as exc:
            self.metrics.writes.labels(reason, result_of(exc)).inc()
            raise
        self.metrics.writes.labels(reason, "success").inc()
        self.published = built
        self.written_at = time.monotonic()
        log.info("published capacity profile", extra={
            "node": self.name, "cluster": self.ctx.config.cluster_id, "reason": reason,
            "groups": len(built["groups"]), "lower_nodes": built["nodes"], "bytes": profile.size(built)})
        return True

    async def run(self) -> None:
        """The loop: rebuild on change (rate-limited), write on change or heartbeat, retry on error."""
        cfg = self.ctx.config
        retry_at = 0.0
        while True:
            self.beat = time.monotonic()
            heartbeat_due = self.written_at + cfg.profile_heartbeat
            wake = min(heartbeat_due, retry_at) if retry_at else heartbeat_due
            try:
                await asyncio.wait_for(self._dirty.wait(), max(0.0, wake - time.monotonic()))
            except TimeoutError:
                pass
            # Fold a burst of cache events into one build, at most one per interval.
            await asyncio.sleep(max(0.0, self.written_at + cfg.profile_interval - time.monotonic()))
            self._dirty.clear()
            retry_at = 0.0
            try:
                await self.publish(force=time.monotonic() >= self.written_at + cfg.profile_heartbeat)
            except ApiError as exc:
                retry_at = time.monotonic() + (RETRY_AFTER if exc.status in (403, 404, 504) else cfg.profile_interval)
                self.published = None
                self._report(exc)
            else:
                self._report(None)

    def _node_ref(self) -> JSON:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "uid": self.node.node_uid}}

    def _report(self, exc: ApiError | None) -> None:
        """A failure once, with a Warning Event on the Node (``kubectl describe node``); its end once."""
        extra = {"node": self.name, "cluster": self.ctx.config.cluster_id}
        if exc is None:
            if self._failing:
                log.info("capacity profile published again", extra=extra)
                self.ctx.recorder.event(self._node_ref(), NORMAL, "CapacityProfilePublished",
                                        "the capacity profile (ClusterProfile) is published again")
            self._failing = ""
            return
        message = f"capacity profile (ClusterProfile) not published: {exc}"
        if message == self._failing:
            log.debug("%s (retrying)", message, extra=extra)
            return
        self._failing = message
        log.warning("%s", message, extra=extra)
        self.ctx.recorder.event(self._node_ref(), WARNING, "CapacityProfileNotPublished", message)
