"""A list+watch cache of one resource, the asyncio twin of client-go's informer.

The reflector lists, then watches from the list's resourceVersion with
bookmarks, and lists again when the server answers 410 Gone or the stream
breaks. It keeps a store of plain dicts keyed ``namespace/name`` (optionally
shrunk by a ``transform`` to save memory) and tells handlers about adds,
updates and deletes. Handlers only enqueue keys; controllers read the store.

A relist diffs against the store, so objects deleted while the watch was
down still produce a delete notification. A periodic resync replays every
object as an update so level-based controllers heal missed work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from tensile.kube.client import JSON, Kube
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kube.informer")

Handler = Callable[[JSON | None, JSON | None], None]
"""``handler(old, new)``: add is (None, obj), delete is (obj, None)."""

WATCH_TIMEOUT = 300


def meta_of(obj: JSON | None) -> JSON:
    """An object's metadata, ``{}`` for a missing object or field."""
    return (obj or {}).get("metadata") or {}


def key_of(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    def __init__(
        self,
        kube: Kube,
        list_path: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        transform: Callable[[JSON], JSON] | None = None,
        resync: float = 0.0,
        name: str = "",
    ) -> None:
        self.kube = kube
        self.list_path = list_path
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.transform = transform
        self.resync = resync
        self.name = name or list_path
        self.store: dict[str, JSON] = {}
        self.handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def get(self, key: str) -> JSON | None:
        return self.store.get(key)

    def items(self) -> list[JSON]:
        return list(self.store.values())

    def _params(self) -> dict[str, str | int]:
        params: dict[str, str | int] = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    def _notify(self, old: JSON | None, new: JSON | None) -> None:
        for handler in self.handlers:
            try:
                handler(old, new)
            except Exception:  # a handler bug must not kill the cache
                log.exception("informer %s: handler failed", self.name)

    def _shrink(self, obj: JSON) -> JSON:
        return self.transform(obj) if self.transform else obj

    async def _list(self) -> None:
        params = {**self._params(), "limit": 500}
        items: list[JSON] = []
        cont = ""
        while True:
            if cont:
                params["continue"] = cont
            page = await self.kube.get(self.list_path, params=params, timeout=120)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                self.resource_version = (page.get("metadata") or {}).get("resourceVersion", "")
                break
        fresh = {key_of(o): self._shrink(o) for o in items}
        old_store = self.store
        self.store = fresh
        for key, obj in fresh.items():
            self._notify(old_store.get(key), obj)
        for key, obj in old_store.items():
            if key not in fresh:
                self._notify(obj, None)
        self.relists += 1
        self.synced.set()

    async def _watch(self) -> None:
        params: dict[str, str | int] = {
            **self._params(),
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_TIMEOUT,
        }
        async for event in self.kube.watch(self.list_path, params, timeout=WATCH_TIMEOUT):
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                status = obj.get("code", 0)
                raise ApiError(int(status or 500), str(obj.get("reason", "")), str(obj.get("message", "")), obj)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if etype == "BOOKMARK":
                continue
            key = key_of(obj)
            if etype in ("ADDED", "MODIFIED"):
                new = self._shrink(obj)
                old = self.store.get(key)
                self.store[key] = new
                self._notify(old, new)
            elif etype == "DELETED":
                old = self.store.pop(key, None)
                self._notify(old if old is not None else self._shrink(obj), None)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("informer %s: %s; relisting in %.1fs", self.name, exc, wait)

    async def run(self) -> None:
        """List and watch until cancelled. Never raises on API trouble; it backs off and relists.

        A watch that ends cleanly (server timeout) is resumed from the last
        resourceVersion; 410 Gone relists at once; any other error relists
        after an exponential, jittered backoff that resets once a watch works.
        """
        need_list = True
        while True:
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(initial=0.5, max=30.0),
                retry=retry_if_exception_type(ApiError),
                before_sleep=self._before_sleep,
            ):
                with attempt:
                    if need_list:
                        await self._list()
                        need_list = False
                    try:
                        await self._watch()
                    except ApiError as exc:
                        need_list = True
                        if not exc.gone:
                            raise
                        log.info("informer %s: resourceVersion too old, relisting", self.name)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            for obj in list(self.store.values()):
                self._notify(obj, obj)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"informer:{self.name}")
        if self.resync > 0:
            self._resync_task = asyncio.create_task(self._resync_loop(), name=f"resync:{self.name}")

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def stop(self) -> None:
        for task in (self._task, self._resync_task):
            if task is not None:
                task.cancel()
        for task in (self._task, self._resync_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
