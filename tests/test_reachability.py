"""The reachability tracker: sleepers wake when the apiserver answers again, hooks run once per outage."""

from __future__ import annotations

import asyncio

from tensile.kube import reachability
from tensile.kube.reachability import Reachability


async def test_a_sleep_after_a_failure_to_connect_ends_soon_after_an_answer() -> None:
    r = Reachability("upper")
    r.failed()
    loop = asyncio.get_running_loop()
    started = loop.time()
    sleeper = asyncio.create_task(r.sleep(30))
    await asyncio.sleep(0.05)
    assert not sleeper.done()
    r.answered()
    await asyncio.wait_for(sleeper, reachability.SPREAD + 1)
    assert loop.time() - started < 30
    assert r.reachable and r.reconnections == 1


async def test_a_sleep_while_reachable_is_not_cut_short_by_answers() -> None:
    r = Reachability("upper")
    sleeper = asyncio.create_task(r.sleep(0.3))
    await asyncio.sleep(0.05)
    r.answered()
    await asyncio.sleep(0.05)
    assert not sleeper.done(), "an answer without an outage before it wakes nobody"
    await asyncio.wait_for(sleeper, 1)
    assert r.reconnections == 0


async def test_hooks_run_once_per_outage_and_a_broken_hook_does_not_stop_the_others() -> None:
    r = Reachability("lower")
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    r.on_reconnect(broken)
    r.on_reconnect(lambda: calls.append("queue"))
    r.answered()
    assert calls == []
    r.failed()
    r.failed()
    r.answered()
    r.answered()
    assert calls == ["queue"]
    r.failed()
    r.answered()
    assert calls == ["queue", "queue"] and r.reconnections == 2
