"""Long-running tasks that cannot die silently, and the health they report.

A virtual node is a handful of loops: informers, the Lease, node status, the
lower ping, work-queue workers. An exception nobody expected (an exec
credential plugin that fails once during re-authentication, a body that is
not JSON) used to end such a loop for good while ``/healthz`` still said ok:
the cache went stale or the Lease stopped, and the node-lifecycle controller
then evicted every pod. Here every loop runs under a ``Supervisor``:

- an unexpected error is logged with its traceback and the loop is started
  again after a backoff (doubling up to a minute, reset after a minute of
  good running);
- a loop can say how it is doing through ``progress`` (the monotonic time it
  last made progress) and ``stall_after``: one that has not made progress for
  that long is *wedged*;
- ``problems()`` lists dead and wedged loops, for ``/healthz`` to fail on;
  a failing liveness probe then restarts the process, which is the right
  answer to a wedge no retry fixes.

``stop()`` cancels every loop and waits for all of them, whatever each
raises, so no cleanup is skipped because one part failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("tensile.kube.supervisor")

#: Restart backoff: 1 s doubling up to 60 s; a run of this long resets it.
RESTART_INITIAL = 1.0
RESTART_MAX = 60.0
HEALTHY_RUN = 60.0


@dataclasses.dataclass
class Supervised:
    name: str
    factory: Callable[[], Awaitable[None]]
    progress: Callable[[], float] | None = None
    stall_after: float | None = None
    restarts: int = 0
    last_error: str = ""
    task: asyncio.Task[None] | None = None

    def problem(self, now: float) -> str | None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            return f"{self.name} has stopped"
        if self.progress is not None and self.stall_after is not None:
            silent = now - self.progress()
            if silent > self.stall_after:
                return f"{self.name} made no progress for {silent:.0f}s (limit {self.stall_after:.0f}s)"
        return None


async def _never() -> None:
    """The factory of a watched entry; never run."""


class Supervisor:
    def __init__(self, component: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.entries: dict[str, Supervised] = {}
        self._sleep = sleep
        self._clock = clock

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *,
              progress: Callable[[], float] | None = None, stall_after: float | None = None) -> Supervised:
        """Run ``factory()`` for as long as the supervisor runs, starting it again whenever it fails."""
        if name in self.entries:
            raise ValueError(f"{self.component}: a task named {name!r} is already supervised")
        entry = Supervised(name, factory, progress, stall_after)
        entry.task = asyncio.create_task(self._keep(entry), name=f"{self.component}:{name}")
        self.entries[name] = entry
        return entry

    def watch(self, name: str, progress: Callable[[], float], stall_after: float) -> Supervised:
        """Watch the liveness of something that runs its own tasks (work-queue workers)."""
        entry = Supervised(name, _never, progress, stall_after)
        self.entries[name] = entry
        return entry

    async def _keep(self, entry: Supervised) -> None:
        delay = RESTART_INITIAL
        while True:
            started = self._clock()
            try:
                await entry.factory()
                entry.last_error = "returned"
                log.error("%s: %s returned; starting it again", self.component, entry.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                entry.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: %s failed; starting it again in %.0fs", self.component, entry.name, delay)
            entry.restarts += 1
            if self._clock() - started >= HEALTHY_RUN:
                delay = RESTART_INITIAL
            await self._sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    async def cancel(self, *names: str) -> None:
        """Stop and forget the named loops (those not running are skipped); the others go on."""
        entries = [self.entries.pop(name) for name in names if name in self.entries]
        tasks = [e.task for e in entries if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def problems(self) -> list[str]:
        """Dead or wedged loops; empty when all is well."""
        now = self._clock()
        return [p for e in self.entries.values() if (p := e.problem(now)) is not None]

    async def stop(self) -> None:
        tasks = [e.task for e in self.entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for entry, result in zip(self.entries.values(), results, strict=False):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s: %s ended with %r while stopping", self.component, entry.name, result)
        self.entries.clear()
