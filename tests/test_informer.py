"""The informer against a scripted API: list, watch, re-watch, relist, indexes, survival."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensile.kube import informer as informer_mod
from tensile.kube.errors import ApiError
from tensile.kube.informer import INTERN_MAX, NAMESPACE, Informer, intern_strings, namespace_index
from tests.fakes import FakeKube, pod

JSON = dict[str, Any]
REAL_BACKOFF = informer_mod.backoff


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No real backoff; remember how often it was asked for."""
    asked: list[int] = []

    def no_wait(failures: int) -> float:
        asked.append(failures)
        return 0.0

    monkeypatch.setattr(informer_mod, "backoff", no_wait)
    monkeypatch.setattr(informer_mod, "MIN_WATCH_SECONDS", 0.0)
    return asked


def listing(kube: FakeKube, items: list[JSON], rv: str) -> None:
    kube.answer("GET", "/api/v1/pods", {"items": items, "metadata": {"resourceVersion": rv}})


def event(etype: str, obj: JSON) -> JSON:
    return {"type": etype, "object": obj}


async def run_until(inf: Informer, predicate: Any, timeout: float = 2.0) -> None:
    inf.start()
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.001)
    finally:
        await inf.stop()


def lists(kube: FakeKube) -> int:
    return sum(1 for path, _ in kube.of("GET") if path == "/api/v1/pods")


async def test_list_then_watch_tells_handlers_and_keeps_store_and_index() -> None:
    kube = FakeKube()
    listing(kube, [pod("a", rv="1"), pod("b", ns="other", rv="2")], "10")
    kube.watch_scripts = [[event("ADDED", pod("c", rv="11")), event("MODIFIED", pod("a", rv="12")),
                           event("DELETED", pod("b", ns="other", rv="13"))]]
    inf = Informer(kube, "/api/v1/pods", name="pods")  # type: ignore[arg-type]
    inf.add_index(NAMESPACE, namespace_index)
    seen: list[tuple[str | None, str | None]] = []
    inf.add_handler(lambda old, new: seen.append(
        (old and old["metadata"]["resourceVersion"], new and new["metadata"]["resourceVersion"])))
    await run_until(inf, lambda: len(seen) == 5)
    assert seen == [(None, "1"), (None, "2"), (None, "11"), ("1", "12"), ("2", None)]
    assert sorted(inf.store) == ["ns/a", "ns/c"]
    assert sorted(p["metadata"]["name"] for p in inf.by_index(NAMESPACE, "ns")) == ["a", "c"]
    assert inf.by_index(NAMESPACE, "other") == []
    assert kube.watch_params[0]["resourceVersion"] == "10" and kube.watch_params[0]["allowWatchBookmarks"]
    assert inf.resource_version == "13"


async def test_cached_objects_carry_no_managed_fields_whether_listed_or_watched() -> None:
    fields = [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {"f:containers": {}}}}]

    def managed(name: str, rv: str) -> JSON:
        obj = pod(name, rv=rv)
        obj["metadata"]["managedFields"] = fields
        return obj

    kube = FakeKube()
    listing(kube, [managed("a", "1")], "10")
    kube.watch_scripts = [[event("ADDED", managed("b", "11")), event("MODIFIED", managed("a", "12"))]]
    inf = Informer(kube, "/api/v1/pods", name="pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: inf.resource_version == "12")
    assert sorted(inf.store) == ["ns/a", "ns/b"]
    assert all("managedFields" not in obj["metadata"] for obj in inf.store.values())
    assert inf.store["ns/a"]["metadata"]["resourceVersion"] == "12"


async def test_a_broken_watch_resumes_from_the_last_version_without_relisting(fast: list[int]) -> None:
    kube = FakeKube()
    listing(kube, [pod("a")], "10")
    reset = ApiError.connection(ConnectionResetError("reset by peer"), "WATCH", "/api/v1/pods")
    kube.watch_scripts = [[event("ADDED", pod("b", rv="11")), reset],
                          [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
                          [event("ADDED", pod("c", rv="21"))]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: "ns/c" in inf.store)
    assert lists(kube) == 1 and inf.relists == 1
    assert [p["resourceVersion"] for p in kube.watch_params[:3]] == ["10", "11", "20"]
    assert fast == [1]  # the reset backed off once; the clean ends did not


async def test_gone_relists_and_reports_what_vanished_meanwhile() -> None:
    kube = FakeKube()
    pages = iter([{"items": [pod("a"), pod("b")], "metadata": {"resourceVersion": "10"}},
                  {"items": [pod("a")], "metadata": {"resourceVersion": "30"}}])  # b went while the watch was gone
    kube.answer("GET", "/api/v1/pods", lambda path, params: next(pages))
    kube.watch_scripts = [[{"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old"}}]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    inf.add_index(NAMESPACE, namespace_index)
    deleted: list[str] = []
    inf.add_handler(lambda old, new: deleted.append(old["metadata"]["name"]) if new is None and old else None)
    await run_until(inf, lambda: deleted == ["b"])
    assert inf.relists == 2 and sorted(inf.store) == ["ns/a"]
    assert [p["metadata"]["name"] for p in inf.by_index(NAMESPACE, "ns")] == ["a"]
    assert kube.watch_params[-1]["resourceVersion"] == "30"


async def test_an_unexpected_error_is_survived_and_the_cache_keeps_following(fast: list[int]) -> None:
    kube = FakeKube()
    listing(kube, [], "1")
    # An exec credential plugin that fails once during re-authentication raises whatever it raises.
    kube.watch_scripts = [[RuntimeError("exec plugin: token helper exited 1")], [event("ADDED", pod("late", rv="2"))]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: "ns/late" in inf.store)
    assert inf.failures == 1 and fast == [1] and lists(kube) == 1


async def test_a_failing_list_is_retried_until_it_works(fast: list[int]) -> None:
    kube = FakeKube()
    answers = iter([ApiError(500, "InternalError", "etcd timeout"), ApiError(502, "InvalidResponse", "not JSON")])

    def flaky(path: str, params: Any) -> JSON:
        failure = next(answers, None)
        if failure is not None:
            raise failure
        return {"items": [pod("a")], "metadata": {"resourceVersion": "5"}}

    kube.answer("GET", "/api/v1/pods", flaky)
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: inf.synced.is_set())
    assert "ns/a" in inf.store and fast == [1, 2]


async def test_an_undecodable_event_relists() -> None:
    kube = FakeKube()
    listing(kube, [pod("a")], "10")
    kube.watch_scripts = [[ApiError(500, "InvalidWatchEvent", "WATCH /api/v1/pods: unexpected character")]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: inf.relists == 2)
    assert lists(kube) == 2


async def test_a_watch_that_ends_at_once_backs_off(monkeypatch: pytest.MonkeyPatch, fast: list[int]) -> None:
    monkeypatch.setattr(informer_mod, "MIN_WATCH_SECONDS", 60.0)
    kube = FakeKube()
    listing(kube, [], "1")
    kube.watch_scripts = [[], [], []]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: len(fast) >= 3)
    assert fast[:3] == [1, 2, 3] and lists(kube) == 1


async def test_handler_failure_does_not_stop_the_cache() -> None:
    kube = FakeKube()
    listing(kube, [pod("a")], "1")
    kube.watch_scripts = [[event("ADDED", pod("b", rv="2"))]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]

    def broken(old: JSON | None, new: JSON | None) -> None:
        raise KeyError("bug")

    inf.add_handler(broken)
    await run_until(inf, lambda: "ns/b" in inf.store)


def test_backoff_doubles_is_jittered_and_capped() -> None:
    for failures in range(1, 15):
        base = min(informer_mod.BACKOFF_MAX, informer_mod.BACKOFF_INITIAL * 2 ** (failures - 1))
        wait = REAL_BACKOFF(failures)
        assert base / 2 <= wait <= base
    assert REAL_BACKOFF(40) <= informer_mod.BACKOFF_MAX


async def test_a_backoff_ends_when_the_unreachable_apiserver_answers_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer_mod, "backoff", lambda failures: 30.0)  # what a long outage grows it to
    kube = FakeKube()
    listing(kube, [pod("a")], "10")
    refused = ApiError.connection(ConnectionRefusedError("connection refused"), "WATCH", "/api/v1/pods")
    kube.watch_scripts = [[refused], [event("ADDED", pod("b", rv="11"))]]
    inf = Informer(kube, "/api/v1/pods")  # type: ignore[arg-type]
    kube.reachability.failed()  # what the real client records for a refused connection
    inf.start()
    try:
        async with asyncio.timeout(5):
            while len(kube.watch_params) < 1:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert "ns/b" not in inf.store, "still backing off"
            kube.reachability.answered()  # some other request got through: the apiserver is back
            while "ns/b" not in inf.store:
                await asyncio.sleep(0.01)
    finally:
        await inf.stop()
    assert [p["resourceVersion"] for p in kube.watch_params[:2]] == ["10", "10"]


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))
def test_interning_changes_no_value(value: object) -> None:
    before = copy.deepcopy(value)
    intern_strings(value)
    assert value == before


def test_interning_shares_repeated_short_strings_across_objects_and_leaves_long_ones() -> None:
    long = "x" * (INTERN_MAX + 1)
    a = orjson.loads(orjson.dumps({"status": {"phase": "Running", "conditions": [{"status": "True"}]},
                                   "data": long}))
    b = orjson.loads(orjson.dumps({"status": {"phase": "Running", "conditions": [{"status": "True"}]},
                                   "data": long}))
    assert a["status"]["phase"] is not b["status"]["phase"]
    intern_strings(a)
    intern_strings(b)
    assert a["status"]["phase"] is b["status"]["phase"]
    assert a["status"]["conditions"][0]["status"] is b["status"]["conditions"][0]["status"]
    assert a["data"] == b["data"] and a["data"] is not b["data"]


async def test_cached_objects_share_their_repeated_strings() -> None:
    kube = FakeKube()
    listed = orjson.loads(orjson.dumps(pod("a", ns="tenant-a", rv="1")))
    watched = orjson.loads(orjson.dumps(event("ADDED", pod("b", ns="tenant-a", rv="11"))))
    assert listed["metadata"]["namespace"] is not watched["object"]["metadata"]["namespace"]
    listing(kube, [listed], "10")
    kube.watch_scripts = [[watched]]
    inf = Informer(kube, "/api/v1/pods", name="pods")  # type: ignore[arg-type]
    await run_until(inf, lambda: "tenant-a/b" in inf.store)
    assert inf.store["tenant-a/a"]["metadata"]["namespace"] is inf.store["tenant-a/b"]["metadata"]["namespace"]
