"""The Event recorder: one bounded queue, one writer, repeats folded into a count."""

from __future__ import annotations

import asyncio

from tensile.kube.errors import ApiError
from tensile.kube.events import WARNING, EventRecorder
from tests.fakes import FakeKube, pod


async def test_repeats_are_folded_into_one_event_with_a_count() -> None:
    kube = FakeKube()
    rec = EventRecorder(kube, "tensile", "vk")  # type: ignore[arg-type]
    p = pod("web")
    for _ in range(3):
        rec.event(p, WARNING, "MandatoryConfigMapNotFound", 'configmap "x" not found')
    rec.event(p, WARNING, "ProviderCreateFailed", "quota")
    await rec.flush()
    creates, patches = kube.of("POST"), kube.of("PATCH")
    assert [b["reason"] for _, b in creates] == ["MandatoryConfigMapNotFound", "ProviderCreateFailed"]
    assert [b["count"] for _, b in patches] == [2, 3]
    assert creates[0][1]["involvedObject"]["uid"] == "uid-web" and creates[0][1]["type"] == "Warning"
    assert (rec.written, rec.folded, rec.dropped) == (2, 2, 0)


async def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    kube = FakeKube()
    rec = EventRecorder(kube, "tensile", "vk", queue_size=3)  # type: ignore[arg-type]
    for i in range(10):  # no await in between: the writer has not run yet
        rec.event(pod(f"p{i}"), WARNING, "R", "m")
    assert rec.dropped == 7 and len(rec) == 3
    await rec.flush()
    assert len(kube.of("POST")) == 3


async def test_events_are_written_one_at_a_time() -> None:
    kube = FakeKube()
    in_flight = peak = 0

    async def slow_create(url_path: str, body: object) -> dict[str, object]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return {}

    kube.create = slow_create  # type: ignore[method-assign]
    rec = EventRecorder(kube, "tensile", "vk")  # type: ignore[arg-type]
    for i in range(20):
        rec.event(pod(f"p{i}"), WARNING, "R", "m")
    await rec.flush()
    assert peak == 1


async def test_a_failed_write_does_not_stop_the_others() -> None:
    kube = FakeKube()
    kube.answer("POST", "/api/v1/namespaces/gone/", ApiError(404, "NotFound", "namespace gone"))
    rec = EventRecorder(kube, "tensile", "vk")  # type: ignore[arg-type]
    rec.event(pod("a", ns="gone"), WARNING, "R", "m")
    rec.event(pod("b"), WARNING, "R", "m")
    await rec.flush()
    assert rec.failed == 1 and rec.written == 1
