"""A keyed, deduplicating, rate-limited work queue (client-go's workqueue in asyncio).

Guarantees the controllers rely on:

- a key waiting in the queue is there once, however often it is added;
- a key is never processed by two workers at once; an add during
  processing is remembered and the key comes back once the worker is done;
- a failed key comes back after an exponential per-key backoff
  (``base * 2**failures`` capped at ``max_delay``) until it succeeds;
- ``retry_failed_now`` brings every key waiting out a failure's backoff back at once: after an
  apiserver outage the backoff has grown to most of a minute, and the work that failed only because
  the apiserver was away should not wait for it once it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tensile.kube.errors import ApiError
from tensile.logs import V

log = logging.getLogger("tensile.kube.workqueue")
#: When a key a step-down interrupted is looked at again, should this replica still lead.
NOT_LEADER_RECHECK = 1.0


class WorkQueue:
    def __init__(self, name: str, base_delay: float = 0.05, max_delay: float = 60.0) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._shutdown = False
        self.processed = 0
        self.retries = 0
        self.adds = 0

    def __len__(self) -> int:
        return len(self._dirty)

    def add(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        self.adds += 1
        log.log(V(5), "%s: queued %s", self.name, key)
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        if self._shutdown:
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        when = loop.time() + delay
        if existing is not None:
            if float(existing.when()) <= when:
                return
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def backoff(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        return min(self.max_delay, self.base_delay * (2.0**failures))

    def add_rate_limited(self, key: str) -> float:
        delay = self.backoff(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.retries += 1
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def retry_failed_now(self) -> int:
        """Queue now every key waiting out a failure's backoff, its backoff reset; how many there were.

        Keys waiting for a delay their handler asked for (no failure) keep waiting.
        """
        failed = [key for key in self._timers if self._failures.get(key)]
        for key in failed:
            self._timers.pop(key).cancel()
            self._failures.pop(key, None)
            self.add(key)
        if failed:
            log.info("%s: %d keys that failed retried now, not after their backoff", self.name, len(failed))
        return len(failed)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        self.processed += 1
        if key in self._dirty:
            self._queue.put_nowait(key)

    def reopen(self) -> None:
        """Accept keys again after ``shutdown``; keys still waiting stay (delayed ones were dropped)."""
        self._shutdown = False

    def shutdown(self) -> None:
        self._shutdown = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class Workers:
    """Worker loops over a queue, with a graceful stop.

    ``handler(key)`` may return a delay to look at the key again later. A
    handler that raises has its key retried with backoff, and ``on_error`` is
    told so it can log or record an Event. ``stop()`` lets in-flight keys
    finish (bounded by a timeout) so no object is left half-written.
    """

    def __init__(
        self,
        queue: WorkQueue,
        handler: Callable[[str], Awaitable[float | None]],
        count: int,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.count = count
        self.on_error = on_error
        self._busy: dict[int, bool] = {}
        #: worker -> (key, monotonic start) of the item it is handling
        self._current: dict[int, tuple[str, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def _worker(self, n: int) -> None:
        while not self._stopping:
            self._busy[n] = False
            key = await self.queue.get()
            self._busy[n] = True
            self._current[n] = (key, time.monotonic())
            try:
                again = await self.handler(key)
            except ApiError as exc:
                if exc.not_leader:
                    # The fence closed mid-item: this replica is stepping down (its queue then takes
                    # no keys, and leading again enqueues every key). Not a failure to report.
                    log.log(V(2), "%s: %s not handled: not the leader", self.queue.name, key)
                    self.queue.add_after(key, NOT_LEADER_RECHECK)
                else:
                    self._failed(key, exc)
            except Exception as exc:  # noqa: BLE001 - every failure is reported and retried with backoff
                self._failed(key, exc)
            else:
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self._current.pop(n, None)
                self.queue.done(key)
        self._busy[n] = False

    def _failed(self, key: str, exc: BaseException) -> None:
        self.queue.add_rate_limited(key)
        try:
            self.on_error(key, exc)
        except Exception:  # a broken error hook must not stop the worker
            log.exception("%s: error handler failed for %s", self.queue.name, key)

    def busy(self) -> int:
        """Workers handling a key now."""
        return len(self._current)

    def oldest_start(self) -> float:
        """When the longest-running item in hand started; now when the workers are idle."""
        return min((started for _, started in self._current.values()), default=time.monotonic())

    def longest_running(self) -> tuple[str, float] | None:
        """The key handled for the longest time and for how many seconds, if any."""
        if not self._current:
            return None
        key, started = min(self._current.values(), key=lambda item: item[1])
        return key, time.monotonic() - started

    def start(self) -> None:
        """Start the workers; again after ``stop`` too (a leader that stepped down and leads again)."""
        self._stopping = False
        self.queue.reopen()
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"{self.queue.name}-worker-{i}") for i in range(self.count)
        ]

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self.queue.shutdown()
        for n, task in enumerate(self._tasks):
            if not self._busy.get(n):
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                log.warning("%s: a worker did not finish within %.0fs; cancelling it", self.queue.name, timeout)
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
