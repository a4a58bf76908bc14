"""Per-object caches for credentials that may read only named objects (a kubelet's)."""

from __future__ import annotations

import asyncio
from typing import Any

from tensile.kube.errors import ApiError
from tensile.kube.objects import ObjectWatches
from tests.fakes import FakeKube

JSON = dict[str, Any]


def secret(name: str, rv: str) -> JSON:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "data": {}}


async def test_an_ensured_object_is_listed_by_name_and_then_followed() -> None:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/secrets", {"items": [secret("pw", "1")],
                                                          "metadata": {"resourceVersion": "1"}})
    kube.watch_scripts = [[{"type": "MODIFIED", "object": secret("pw", "2")}]]
    cache = ObjectWatches(kube, "secrets", name="upper-secrets")  # type: ignore[arg-type]
    seen: list[tuple[str | None, str | None]] = []
    cache.add_handler(lambda old, new: seen.append(
        (old and old["metadata"]["resourceVersion"], new and new["metadata"]["resourceVersion"])))
    await cache.ensure("ns", "pw")
    assert cache.get("ns/pw") is not None and cache.followed == 1
    assert kube.of("GET")[0][1]["fieldSelector"] == "metadata.name=pw"  # one object, never the whole list
    async with asyncio.timeout(2):
        while cache.get("ns/pw")["metadata"]["resourceVersion"] != "2":  # type: ignore[index]
            await asyncio.sleep(0.001)
    assert seen == [(None, "1"), ("1", "2")]
    await cache.forget("ns", "pw")
    assert cache.get("ns/pw") is None and cache.followed == 0
    await cache.stop()


async def test_a_missing_object_is_known_missing_after_ensure() -> None:
    kube = FakeKube()
    kube.answer("GET", "/api/v1/namespaces/ns/secrets", {"items": [], "metadata": {"resourceVersion": "5"}})
    cache = ObjectWatches(kube, "secrets", name="upper-secrets")  # type: ignore[arg-type]
    await cache.ensure("ns", "late")
    assert cache.get("ns/late") is None
    await cache.stop()


async def test_get_only_resources_are_fetched_on_ensure() -> None:
    kube = FakeKube()
    claim = {"metadata": {"name": "data", "namespace": "ns", "resourceVersion": "3"}}
    kube.answer("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/data", claim)
    cache = ObjectWatches(kube, "persistentvolumeclaims", name="upper-pvcs", watch=False)  # type: ignore[arg-type]
    await cache.ensure("ns", "data")
    assert cache.get("ns/data") == claim and kube.watch_params == []
    kube.answer("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/data", ApiError(404, "NotFound", "gone"))
    await cache.ensure("ns", "data")
    assert cache.get("ns/data") is None
