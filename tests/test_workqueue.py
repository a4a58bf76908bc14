import asyncio
import itertools

from tensile.kube.errors import ApiError
from tensile.kube.workqueue import Workers, WorkQueue


async def test_a_key_added_many_times_is_processed_once() -> None:
    q = WorkQueue("t")
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert await q.get() == "a"
    assert await q.get() == "b"


async def test_a_key_is_never_processed_by_two_workers_at_once() -> None:
    q = WorkQueue("t")
    running: set[str] = set()
    overlaps = 0
    calls = 0

    async def handler(key: str) -> None:
        nonlocal overlaps, calls
        calls += 1
        if key in running:
            overlaps += 1
        running.add(key)
        await asyncio.sleep(0.01)
        if calls < 5:
            q.add(key)  # re-added while processing: must wait for done()
        running.discard(key)

    w = Workers(q, handler, 4, lambda k, e: None)
    w.start()
    q.add("k")
    await asyncio.sleep(0.3)
    await w.stop()
    assert calls == 5
    assert overlaps == 0


async def test_failures_are_retried_with_growing_backoff_then_forgotten() -> None:
    q = WorkQueue("t", base_delay=0.01, max_delay=1)
    attempts: list[float] = []
    errors: list[str] = []
    loop = asyncio.get_running_loop()

    async def handler(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise RuntimeError("boom")

    w = Workers(q, handler, 1, lambda k, e: errors.append(str(e)))
    w.start()
    q.add("k")
    for _ in range(100):
        if len(attempts) >= 4:
            break
        await asyncio.sleep(0.02)
    await w.stop()
    assert len(attempts) == 4 and errors == ["boom"] * 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[2] > gaps[0]
    assert q.failures("k") == 0


async def test_returned_delay_requeues_the_key_later() -> None:
    q = WorkQueue("t")
    seen: list[str] = []

    async def handler(key: str) -> float | None:
        seen.append(key)
        return 0.05 if len(seen) == 1 else None

    w = Workers(q, handler, 1, lambda k, e: None)
    w.start()
    q.add("k")
    await asyncio.sleep(0.3)
    await w.stop()
    assert seen == ["k", "k"]


async def test_stop_lets_an_in_flight_key_finish() -> None:
    q = WorkQueue("t")
    finished = asyncio.Event()

    async def handler(key: str) -> None:
        await asyncio.sleep(0.1)
        finished.set()

    w = Workers(q, handler, 2, lambda k, e: None)
    w.start()
    q.add("k")
    await asyncio.sleep(0.02)
    await w.stop(timeout=5)
    assert finished.is_set()


async def test_a_failing_error_hook_does_not_stop_the_worker() -> None:
    q = WorkQueue("t", base_delay=0.01)
    calls = 0

    async def handler(key: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first")

    def bad_hook(key: str, exc: BaseException) -> None:
        raise KeyError("hook bug")

    w = Workers(q, handler, 1, bad_hook)
    w.start()
    q.add("k")
    await asyncio.sleep(0.3)
    q.add("other")
    await asyncio.sleep(0.1)
    await w.stop()
    assert calls == 3  # the retry of "k", then "other": the worker lived on


async def test_workers_start_again_after_a_stop_and_keys_added_meanwhile_wait_for_the_restart() -> None:
    """A leader that steps down stops its workers; when it leads again the same workers run again."""
    q = WorkQueue("restart")
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)

    w = Workers(q, handler, 2, lambda k, e: None)
    w.start()
    q.add("a")
    for _ in range(20):
        await asyncio.sleep(0)
    await w.stop()
    q.add("dropped")  # stepped down: adds are refused; the restart enqueues every key again
    w.start()
    q.add("b")
    for _ in range(20):
        await asyncio.sleep(0)
    await w.stop()
    assert seen == ["a", "b"]



async def test_a_key_refused_by_the_leader_fence_is_not_a_failure() -> None:
    q = WorkQueue("fence")
    errors: list[str] = []
    calls: list[str] = []

    async def handler(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ApiError(503, "NotLeader", "not sent")

    w = Workers(q, handler, 1, lambda k, e: errors.append(str(e)))
    w.start()
    q.add("k")
    for _ in range(20):
        await asyncio.sleep(0)
    assert errors == [] and q.failures("k") == 0 and q.retries == 0  # no Event, no backoff
    await asyncio.sleep(1.2)  # looked at again in case this replica still leads
    await w.stop()
    assert calls == ["k", "k"]


async def test_retry_failed_now_brings_back_keys_waiting_out_a_failure_but_not_requested_delays() -> None:
    q = WorkQueue("t", base_delay=30, max_delay=60)
    q.add_rate_limited("failed-twice")
    q.add_rate_limited("failed-twice")
    q.add_after("asked-for-later", 30)
    assert len(q) == 0 and q.failures("failed-twice") == 2

    assert q.retry_failed_now() == 1

    assert await asyncio.wait_for(q.get(), 1) == "failed-twice"
    assert q.failures("failed-twice") == 0, "the backoff starts over"
    q.done("failed-twice")
    assert len(q) == 0, "a delay the handler asked for is not a failure"
    assert q.retry_failed_now() == 0
    q.shutdown()
