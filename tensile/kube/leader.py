"""Leader election on a coordination Lease, with client-go's semantics.

Two replicas of one component must not both write. Each replica runs a
``LeaderElector`` on the same Lease:

- **acquire**: every ``retry_period`` (with jitter) read the Lease. It is
  free when nobody holds it, or when its record has not changed for the
  record's ``leaseDurationSeconds`` *as observed by this replica's own
  clock* (client-go does not trust the other replica's ``renewTime``: clocks
  differ between machines). Then write our identity, pinned to the
  resourceVersion read, so of two candidates only one wins.
- **renew**: the leader writes the Lease every ``retry_period``. When it has
  not renewed for ``renew_deadline`` it has lost: it never tries to renew a
  lapsed lease, it tells ``on_stopped_leading``, and it stops.
- **fence**: ``may_write()`` is true only until ``renew_deadline`` after the
  last renewal was *sent*, by the monotonic clock, whatever the loops are
  doing. ``Kube`` checks it when a write starts and again when its body is
  written to the connection, so a leader that was stopped (SIGSTOP, a long
  GC pause, a frozen VM) and wakes up after its deadline writes nothing, even
  before its renew loop notices. Another candidate takes over at the
  earliest ``lease_duration`` after it saw the last renewal, so
  ``lease_duration - renew_deadline`` is the margin for clock rates and the
  microseconds between the last check and the kernel taking the bytes.
- **throttling**: the Lease has a client of its own (its own rate limiter and
  connections), so renewals never queue behind the component's work. An
  apiserver that answers 429 is asked again after its ``Retry-After`` inside
  ``Kube``, but each call here (read, write) stops retrying at
  ``renew_deadline``, as client-go's renew context does: the renew loop
  always gets to see its deadline pass.
- **release**: a leader that stops cleanly empties the Lease (client-go's
  ``ReleaseOnCancel``), so a follower takes over at once instead of after
  the lease duration.

This Lease is the component's own, not the Node heartbeat Lease in
``kube-node-lease``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tensile import timestamps
from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kube.leader")

GROUP_VERSION = "coordination.k8s.io/v1"
#: client-go's JitterFactor: waits are retry_period * [1, 1.2).
JITTER = 1.2


@dataclasses.dataclass(frozen=True)
class LeaderElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """client-go's own checks: a configuration that would let two leaders overlap."""
        out = []
        if self.lease_duration <= self.renew_deadline:
            out.append("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline")
        if self.renew_deadline <= JITTER * self.retry_period:
            out.append(f"--leader-elect-renew-deadline must be greater than {JITTER} x --leader-elect-retry-period")
        if self.retry_period <= 0:
            out.append("--leader-elect-retry-period must be positive")
        if not self.identity:
            out.append("the leader-election identity must not be empty")
        return out

    @property
    def lease_key(self) -> str:
        return f"{self.namespace}/{self.name}"


def micro_time(now: datetime.datetime) -> str:
    """metav1.MicroTime as the apiserver writes it."""
    return timestamps.micro(now)


def _wall() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """One candidate: ``acquire()`` until it leads, ``renew()`` until it loses; ``release()`` on a clean stop."""

    def __init__(
        self,
        kube: Kube,
        config: LeaderElectionConfig,
        *,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = _wall,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.kube = kube
        self.config = config
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._jitter = jitter
        self.lease_path = path("leases", config.namespace, config.name, group_version=GROUP_VERSION)
        #: The Lease spec as last read or written, and when (monotonic) it last changed.
        self.observed: JSON = {}
        self.observed_at = 0.0
        self.observed_rv = ""
        #: Monotonic deadline of the current leadership; 0 when not leading.
        self.valid_until = 0.0
        self.leading = False
        self.acquired = asyncio.Event()
        #: Leadership changes seen, for the metrics: acquisitions and losses of this replica.
        self.transitions = 0
        self.losses = 0
        #: The last leadership ended by losing the Lease (not by a release).
        self.lost = False

    # --- the fence -------------------------------------------------------------------

    def may_write(self) -> bool:
        """True while this replica leads and its last renewal is within the renew deadline."""
        return self.leading and self._clock() < self.valid_until

    @property
    def leader(self) -> str:
        """Who holds the Lease, as last observed ('' when nobody)."""
        return str(self.observed.get("holderIdentity") or "")

    # --- one attempt ----------------------------------------------------------------

    def _record_changed(self, spec: JSON) -> bool:
        keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
        return any(spec.get(k) != self.observed.get(k) for k in keys)

    def _desired(self, old: JSON, renewing: bool) -> JSON:
        now = micro_time(self._wall())
        spec: JSON = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "acquireTime": old.get("acquireTime") if renewing and old.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if renewing else 1),
        }
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One round of client-go's ``tryAcquireOrRenew``: True when this replica holds the Lease now."""
        sent = self._clock()
        try:
            lease = await self.kube.get(self.lease_path, timeout=self.config.renew_deadline)
        except ApiError as exc:
            if not exc.not_found:
                log.warning("leader election: reading the lease failed: %s", exc,
                            extra={"lease": self.config.lease_key})
                return False
            return await self._create(sent)
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        if self._record_changed(spec) or not self.observed_at:
            self.observed, self.observed_at = dict(spec), self._clock()
        self.observed_rv = str(meta.get("resourceVersion") or "")
        holder = str(spec.get("holderIdentity") or "")
        is_me = holder == self.config.identity
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
        if holder and not is_me and self._clock() < self.observed_at + duration:
            return False  # held by someone else, and still valid as far as we can tell
        renewing = is_me and self.leading
        body = {"apiVersion": GROUP_VERSION, "kind": "Lease",
                "metadata": {**meta, "resourceVersion": self.observed_rv},
                "spec": {**spec, **self._desired(spec, renewing)}}
        return await self._write("writing", self.kube.request(
            "PUT", self.lease_path, body=body, timeout=self.config.renew_deadline), sent)

    async def _create(self, sent: float) -> bool:
        body = {"apiVersion": GROUP_VERSION, "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": self._desired({}, renewing=False)}
        leases = path("leases", self.config.namespace, group_version=GROUP_VERSION)
        return await self._write("creating", self.kube.request(
            "POST", leases, body=body, timeout=self.config.renew_deadline), sent)

    async def _write(self, what: str, request: Awaitable[JSON], sent: float) -> bool:
        """True when the Lease is ours now; a conflict (another candidate won) is no failure."""
        try:
            written = await request
        except ApiError as exc:
            if not exc.conflict:
                log.warning("leader election: %s the lease failed: %s", what, exc,
                            extra={"lease": self.config.lease_key})
            return False
        self._written(written, sent)
        return True

    def _written(self, lease: JSON, sent: float) -> None:
        self.observed = dict(lease.get("spec") or {})
        self.observed_at = self._clock()
        self.observed_rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        # The lease counts from when the request was sent, not answered: conservative.
        self.valid_until = sent + self.config.renew_deadline

    # --- loops ------------------------------------------------------------------------

    def _wait(self) -> float:
        return self.config.retry_period * (1 + (JITTER - 1) * self._jitter())

    async def acquire(self) -> None:
        """Until this replica leads."""
        last_leader = None
        while True:
            if await self.try_acquire_or_renew():
                break
            if self.leader != last_leader:
                last_leader = self.leader
                log.info("leader election: %s leads", last_leader or "nobody",
                         extra={"lease": self.config.lease_key, "identity": self.config.identity})
            await self._sleep(self._wait())
        self.leading = True
        self.lost = False
        self.transitions += 1
        self.acquired.set()
        log.info("leader election: acquired the lease", extra={"lease": self.config.lease_key,
                                                               "identity": self.config.identity})
        if self.on_started_leading is not None:
            self.on_started_leading()

    async def renew(self) -> None:
        """Until the lease is lost: never renew one whose deadline passed."""
        while True:
            await self._sleep(self.config.retry_period)
            if self._clock() >= self.valid_until:
                break
            if await self.try_acquire_or_renew():
                log.log(15, "leader election: renewed", extra={"lease": self.config.lease_key})
                continue
            if self.leader and self.leader != self.config.identity:
                break  # someone else holds it: do not wait for the deadline
        self._lose()

    def _lose(self) -> None:
        self.leading = False
        self.valid_until = 0.0
        self.acquired.clear()
        self.lost = True
        self.losses += 1
        log.error("leader election: lost the lease; this replica stops writing",
                  extra={"lease": self.config.lease_key, "identity": self.config.identity,
                         "leader": self.leader})
        if self.on_stopped_leading is not None:
            self.on_stopped_leading()

    async def run(self) -> None:
        await self.acquire()
        await self.renew()

    async def release(self) -> None:
        """Give the Lease up if this replica still holds it, so a follower need not wait it out."""
        if not self.may_write():
            return
        self.leading = False
        self.valid_until = 0.0
        now = micro_time(self._wall())
        spec: dict[str, Any] = {**self.observed, "holderIdentity": "", "leaseDurationSeconds": 1,
                                "acquireTime": now, "renewTime": now}
        body = {"apiVersion": GROUP_VERSION, "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace,
                             "resourceVersion": self.observed_rv},
                "spec": spec}
        try:
            await self.kube.replace(self.lease_path, body)
            log.info("leader election: released the lease", extra={"lease": self.config.lease_key})
        except ApiError as exc:
            log.warning("leader election: releasing the lease failed: %s", exc,
                        extra={"lease": self.config.lease_key})
