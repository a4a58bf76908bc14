"""Whether an apiserver answers, so that waits for it end when it is back, not a backoff later.

Every informer backs off on its own after a failure (exponentially, up to 30 s, like client-go's
reflector), and so does every failed key in a work queue (up to a minute). After an outage of
twenty seconds that meant the caches came back up to 18 s after the apiserver did, and queued work
up to a minute after. One tracker per apiserver, shared by its client and the client's forks, sees
both ends of an outage: a request that could not connect marks the apiserver unreachable, and the
first answer of any kind (any HTTP status) afterwards marks it reachable again. That wakes the
sleepers (``sleep``) and runs the hooks (the work queues' ``retry_failed_now``).

A short random delay spreads the wake-ups, so a restarted apiserver is not hit by every informer of
every virtual node in the same millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

log = logging.getLogger("tensile.kube")

#: Wake-ups after a reconnection are spread over this many seconds.
SPREAD = 1.0


class Reachability:
    def __init__(self, name: str) -> None:
        self.name = name
        self.reachable = True
        #: Outages seen: answered after failing to connect.
        self.reconnections = 0
        self._back = asyncio.Event()
        self._hooks: list[Callable[[], object]] = []

    def on_reconnect(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` each time the apiserver answers after a failure to connect."""
        self._hooks.append(hook)

    def failed(self) -> None:
        """A request could not reach the apiserver (no connection, or one cut before an answer)."""
        self.reachable = False

    def answered(self) -> None:
        """The apiserver answered a request (whatever the status)."""
        if self.reachable:
            return
        self.reachable = True
        self.reconnections += 1
        log.info("apiserver %s answers again", self.name, extra={"cluster": self.name})
        back, self._back = self._back, asyncio.Event()
        back.set()
        for hook in list(self._hooks):
            try:
                hook()
            except Exception:  # one broken hook must not keep the others from running
                log.exception("apiserver %s: a reconnection hook failed", self.name)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until shortly after the apiserver answers again, whichever is first.

        Only an apiserver marked unreachable can end the sleep early: a failure that was an answer
        (403, 500) backs off the whole time.
        """
        if self.reachable:
            await asyncio.sleep(seconds)
            return
        back = self._back
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(back.wait(), seconds)
        if back.is_set():
            await asyncio.sleep(random.uniform(0, min(SPREAD, seconds)))
