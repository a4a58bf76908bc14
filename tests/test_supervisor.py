"""Supervised loops: restarted after failures with backoff, reported when dead or wedged."""

from __future__ import annotations

import asyncio

from tensile.kube.supervisor import RESTART_MAX, Supervised, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_failing_loop_is_started_again_with_doubling_backoff() -> None:
    waits: list[float] = []
    runs = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 8:
            raise RuntimeError("exec plugin failed")
        await asyncio.sleep(3600)

    sup = Supervisor("test", sleep=sleep, clock=Clock())
    entry = sup.spawn("lease", flaky)
    async with asyncio.timeout(2):
        while runs < 9:
            await asyncio.sleep(0)
    assert waits == [1, 2, 4, 8, 16, 32, RESTART_MAX, RESTART_MAX]
    assert entry.restarts == 8 and "exec plugin failed" in entry.last_error
    assert sup.problems() == []
    await sup.stop()


async def test_a_loop_that_returns_is_started_again() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    sup = Supervisor("test", sleep=sleep, clock=Clock())
    entry = sup.spawn("ping", once)
    async with asyncio.timeout(2):
        while runs < 3:
            await asyncio.sleep(0)
    assert entry.last_error == "returned"
    await sup.stop()


async def test_a_loop_without_progress_is_reported_wedged() -> None:
    clock = Clock()
    beat = clock.now
    sup = Supervisor("test", clock=clock)

    async def forever() -> None:
        await asyncio.sleep(3600)

    sup.spawn("lease renewal", forever, progress=lambda: beat, stall_after=60)
    assert sup.problems() == []
    clock.now += 61
    assert sup.problems() == ["lease renewal made no progress for 61s (limit 60s)"]
    beat = clock.now
    assert sup.problems() == []
    await sup.stop()


async def test_watched_workers_are_wedged_by_a_long_item() -> None:
    clock = Clock()
    started = clock.now
    sup = Supervisor("test", clock=clock)
    sup.watch("pod workers", lambda: started, 300)
    clock.now += 301
    assert sup.problems() == ["pod workers made no progress for 301s (limit 300s)"]
    await sup.stop()


async def test_a_dead_task_is_a_problem_and_stop_waits_for_everything() -> None:
    sup = Supervisor("test")

    async def forever() -> None:
        await asyncio.sleep(3600)

    other = sup.spawn("ping", forever)
    dead = Supervised("status", forever)
    dead.task = asyncio.ensure_future(asyncio.sleep(0))  # a task that ended without being cancelled
    await dead.task
    sup.entries["status"] = dead
    assert sup.problems() == ["status has stopped"]
    await sup.stop()
    assert other.task is not None and other.task.cancelled() and sup.entries == {}


async def test_supervisor_cancel_stops_only_the_named_loops() -> None:
    sup = Supervisor("test")

    async def forever() -> None:
        await asyncio.sleep(3600)

    sup.spawn("a", forever)
    kept = sup.spawn("b", forever)
    await sup.cancel("a", "missing")
    assert set(sup.entries) == {"b"} and kept.task is not None and not kept.task.done()
    sup.spawn("a", forever)  # the name can be used again
    await sup.stop()
