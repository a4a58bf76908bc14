"""The leader-election state machine against a fake Lease API and a fake clock."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from tensile.kube.errors import ApiError
from tensile.kube.leader import LeaderElectionConfig, LeaderElector
from tests.fakes import FakeKube

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime.datetime:
        return datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class LeaseApi:
    """One Lease with optimistic concurrency, behind a ``FakeKube`` per candidate."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.writes: list[tuple[str, str]] = []  # (candidate, holderIdentity written)

    def client(self, who: str) -> FakeKube:
        kube = FakeKube(who)

        def get(_: str, __: Any) -> dict[str, Any]:
            if self.down:
                raise ApiError(0, "ConnectionError", "down")
            if self.lease is None:
                raise ApiError(404, "NotFound", "no lease")
            return self.lease

        def write(body: dict[str, Any], create: bool) -> dict[str, Any]:
            if self.down:
                raise ApiError(0, "ConnectionError", "down")
            if create and self.lease is not None:
                raise ApiError(409, "AlreadyExists", "exists")
            if not create and (self.lease is None or body["metadata"].get("resourceVersion") != str(self.rv)):
                raise ApiError(409, "Conflict", "stale resourceVersion")
            self.rv += 1
            self.lease = {"metadata": {**body["metadata"], "resourceVersion": str(self.rv)},
                          "spec": dict(body["spec"])}
            self.writes.append((who, body["spec"].get("holderIdentity", "")))
            return self.lease

        kube.answer("GET", f"{LEASES}/lock", get)
        kube.answer("POST", LEASES, lambda _, body: write(body, create=True))
        kube.answer("PUT", f"{LEASES}/lock", lambda _, body: write(body, create=False))
        return kube

    def steal(self, holder: str) -> None:
        assert self.lease is not None
        self.rv += 1
        self.lease = {"metadata": {**self.lease["metadata"], "resourceVersion": str(self.rv)},
                      "spec": {**self.lease["spec"], "holderIdentity": holder, "renewTime": f"stolen-{self.rv}"}}


CONFIG = {"namespace": "kube-system", "name": "lock", "lease_duration": 15.0, "renew_deadline": 10.0,
          "retry_period": 2.0}


def elector(api: LeaseApi, who: str, clock: Clock, **kw: Any) -> LeaderElector:
    return LeaderElector(api.client(who), LeaderElectionConfig(identity=who, **CONFIG),  # type: ignore[arg-type]
                         clock=clock, wall=clock.wall, sleep=clock.sleep, jitter=lambda: 0.0, **kw)


async def test_acquires_a_missing_lease_by_creating_it_and_may_write_until_the_renew_deadline() -> None:
    api, clock = LeaseApi(), Clock()
    a = elector(api, "a", clock)
    assert not a.may_write()
    await a.acquire()
    assert a.leading and a.may_write() and api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "a" and api.lease["spec"]["leaseTransitions"] == 1
    assert api.lease["spec"]["renewTime"].endswith("Z") and "." in api.lease["spec"]["renewTime"]
    clock.now += 9.9
    assert a.may_write()
    clock.now += 0.2  # past sent + renew_deadline, with no renewal: the fence closes by itself
    assert not a.may_write()


async def test_a_follower_waits_out_the_lease_duration_on_its_own_clock_then_takes_over() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    await a.acquire()
    assert not await b.try_acquire_or_renew()  # held and fresh
    assert b.leader == "a" and not b.may_write()
    clock.now += 14.0
    assert not await b.try_acquire_or_renew()  # 14 s since b first saw this record: still a's
    clock.now += 1.5
    assert await b.try_acquire_or_renew()  # 15.5 s without a change: expired
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 2
    assert not await a.try_acquire_or_renew()  # a cannot renew over b: b's record is new to a


async def test_a_renewal_seen_by_the_follower_restarts_its_wait() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    for _ in range(10):  # 30 s of renewals every 3 s
        clock.now += 3.0
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "a"


async def test_two_candidates_racing_for_a_free_lease_only_one_wins() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]
    assert [w for w in api.writes] == [("a", "a")] or [w for w in api.writes] == [("b", "b")]


async def test_renew_loses_at_the_renew_deadline_when_the_apiserver_is_unreachable() -> None:
    api, clock = LeaseApi(), Clock()
    stopped: list[float] = []
    a = elector(api, "a", clock, on_stopped_leading=lambda: stopped.append(clock.now))
    await a.acquire()
    acquired_at = clock.now
    api.down = True
    await asyncio.wait_for(a.renew(), 5)
    assert stopped and stopped[0] - acquired_at <= 10.0 + 2.0  # gave up at the first look past the deadline
    assert not a.leading and not a.may_write() and a.lost


async def test_a_paused_leader_never_renews_after_its_deadline_and_writes_nothing() -> None:
    """SIGSTOP: the clock jumps past the deadline; on waking, no renewal is even attempted."""
    api, clock = LeaseApi(), Clock()
    a = elector(api, "a", clock, on_stopped_leading=lambda: None)
    await a.acquire()
    writes = len(api.writes)
    clock.now += 30.0  # paused for 30 s
    assert not a.may_write()  # before any loop runs
    await asyncio.wait_for(a.renew(), 5)
    assert len(api.writes) == writes  # it did not renew a lease it no longer holds
    assert a.lost


async def test_a_leader_that_sees_another_holder_steps_down_without_waiting() -> None:
    api, clock = LeaseApi(), Clock()
    a = elector(api, "a", clock)
    await a.acquire()
    api.steal("intruder")
    await asyncio.wait_for(a.renew(), 5)
    assert a.lost and clock.now - 1000.0 < 10.0


async def test_release_empties_the_lease_so_a_follower_takes_over_at_once() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.may_write()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == ""
    assert api.lease["spec"]["leaseDurationSeconds"] == 1
    assert await b.try_acquire_or_renew()  # no wait for the 15 s lease duration


async def test_release_after_losing_writes_nothing() -> None:
    api, clock = LeaseApi(), Clock()
    a = elector(api, "a", clock)
    await a.acquire()
    clock.now += 60
    writes = len(api.writes)
    await a.release()
    assert len(api.writes) == writes


async def test_run_acquires_renews_and_is_cancelled_cleanly() -> None:
    api, clock = LeaseApi(), Clock()
    started: list[bool] = []
    a = elector(api, "a", clock, on_started_leading=lambda: started.append(True))
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.acquired.wait(), 5)
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == [True]
    assert sum(1 for who, _ in api.writes if who == "a") >= 2  # created, then renewed


def test_configuration_problems_are_client_gos() -> None:
    ok = LeaderElectionConfig("ns", "n", "me", 15, 10, 2)
    assert ok.problems() == []
    assert LeaderElectionConfig("ns", "n", "me", 10, 10, 2).problems()  # duration must exceed deadline
    assert LeaderElectionConfig("ns", "n", "me", 15, 2, 2).problems()  # deadline > 1.2 x retry
    assert LeaderElectionConfig("ns", "n", "", 15, 10, 2).problems()
