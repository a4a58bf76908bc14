"""A list+watch cache of one resource, the asyncio twin of client-go's informer.

The reflector lists, then watches from the list's resourceVersion with
bookmarks. A watch that ends or breaks (server timeout, connection reset, an
apiserver restart) is resumed from the last resourceVersion it saw, so a
rolling restart of the apiservers does not re-list 10k pods; only 410 Gone
(the version is too old) or an event it cannot decode lists again. A watch
that ends at once, and every failure, backs off (jittered, up to 30 s) before
the next try, and any unexpected error is logged and retried: the cache never
dies silently. ``last_progress`` tells a supervisor when the reflector last
heard from the apiserver (bookmarks arrive about once a minute on an idle
watch), so a wedged connection shows in ``/healthz``.

It keeps a store of plain dicts keyed ``namespace/name``, without
``metadata.managedFields`` (nothing here reads them, and they are a third or more of a pod, as
client-go's ``TransformStripManagedFields`` knows), with its short strings interned (every pod
repeats its timestamps, ``"True"``, image names, paths and policies, and 10,000 pods repeat each
other: a third of a cached pod), optionally shrunk further by a ``transform`` to save memory,
indexes like client-go's Indexers
(``add_index``/``by_index``), and tells handlers about adds, updates and
deletes. Handlers only enqueue keys; controllers read the store.

A relist diffs against the store, so objects deleted while the watch was
down still produce a delete notification. A periodic resync replays every
object as an update so level-based controllers heal missed work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from tensile.kube.client import JSON, Kube
from tensile.kube.errors import ApiError
from tensile.kube.supervisor import Supervisor
from tensile.logs import V

log = logging.getLogger("tensile.kube.informer")

Handler = Callable[[JSON | None, JSON | None], None]
"""``handler(old, new)``: add is (None, obj), delete is (obj, None)."""
IndexFunc = Callable[[JSON], list[str]]
"""The index values of an object, like client-go's ``IndexFunc``."""

#: A watch that ends sooner than this after it started counts as a failure and backs off.
MIN_WATCH_SECONDS = 1.0
#: Backoff between failed list/watch attempts: 0.5 s doubling up to 30 s, jittered.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: How long a watch connection may stay silent (no event, no bookmark) before it counts as dead.
#: Bookmarks arrive about once a minute, so a silent minute and a half means the connection is gone.
WATCH_SILENCE = 90.0
#: Strings up to this length are interned in cached objects; longer ones (certificates,
#: ConfigMap data, JSON annotations) are rarely shared.
INTERN_MAX = 64


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row (>= 1): exponential, capped, jittered."""
    base = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** max(0, failures - 1))
    return float(base * random.uniform(0.5, 1.0))


#: The name of the by-namespace index every informer of namespaced objects has.
NAMESPACE = "namespace"


def namespace_index(obj: JSON) -> list[str]:
    ns = (obj.get("metadata") or {}).get("namespace")
    return [ns] if ns else []

WATCH_TIMEOUT = 300


def intern_strings(value: object) -> None:
    """Intern, in place, the strings of at most ``INTERN_MAX`` characters in a decoded object.

    orjson already shares dict keys across documents; values are new strings in every event.
    Identical values then share one string, so a cache of many similar objects stores each
    repeated value once. Mutating in place keeps it cheap (no dict is rebuilt).
    """
    stack: list[Any] = [value] if type(value) in (dict, list) else []
    while stack:
        node = stack.pop()
        for slot, item in node.items() if type(node) is dict else enumerate(node):
            kind = type(item)
            if kind is str:
                if len(item) <= INTERN_MAX:
                    node[slot] = sys.intern(item)
            elif kind is dict or kind is list:
                stack.append(item)


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
        #: Watches started and watch failures (a relist is counted in ``relists``).
        self.watches = 0
        self.failures = 0
        self.last_progress = time.monotonic()
        self._indexers: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    @property
    def is_synced(self) -> bool:
        return self.synced.is_set()

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Index the store by ``fn`` (e.g. namespace); add before ``start``."""
        self._indexers[name] = fn
        index: dict[str, set[str]] = defaultdict(set)
        for key, obj in self.store.items():
            for value in fn(obj):
                index[value].add(key)
        self._indices[name] = index

    def by_index(self, name: str, value: str) -> list[JSON]:
        """The objects whose index ``name`` has ``value``: O(matches), not O(store)."""
        keys = self._indices[name].get(value, ())
        return [self.store[k] for k in keys if k in self.store]

    def _reindex(self, key: str, old: JSON | None, new: JSON | None) -> None:
        for name, fn in self._indexers.items():
            index = self._indices[name]
            before = fn(old) if old is not None else []
            after = fn(new) if new is not None else []
            if before == after:
                continue
            for value in before:
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
            for value in after:
                index[value].add(key)

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
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        shrunk = self.transform(obj) if self.transform else obj
        intern_strings(shrunk)
        return shrunk

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
            self._reindex(key, old_store.get(key), obj)
            self._notify(old_store.get(key), obj)
        for key, obj in old_store.items():
            if key not in fresh:
                self._reindex(key, obj, None)
                self._notify(obj, None)
        self.relists += 1
        self.last_progress = time.monotonic()
        self.synced.set()
        log.log(V(4), "informer %s: listed %d objects at resourceVersion %s", self.name, len(fresh),
                self.resource_version, extra={"cluster": self.kube.name})

    async def _watch(self) -> None:
        params: dict[str, str | int] = {
            **self._params(),
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_TIMEOUT,
        }
        self.watches += 1
        self.last_progress = time.monotonic()
        log.log(V(5), "informer %s: watching from resourceVersion %s", self.name, self.resource_version,
                extra={"cluster": self.kube.name})
        async for event in self.kube.watch(self.list_path, params, timeout=WATCH_TIMEOUT, silence=WATCH_SILENCE):
            self.last_progress = time.monotonic()
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                status = obj.get("code", 0)
                raise ApiError(int(status or 500), str(obj.get("reason", "")), str(obj.get("message", "")), obj)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if etype == "BOOKMARK":
                if rv:
                    self.resource_version = rv
                continue
            key = key_of(obj)
            if etype in ("ADDED", "MODIFIED"):
                new = self._shrink(obj)
                old = self.store.get(key)
                self.store[key] = new
                self._reindex(key, old, new)
                self._notify(old, new)
            elif etype == "DELETED":
                old = self.store.pop(key, None)
                self._reindex(key, old, None)
                self._notify(old if old is not None else self._shrink(obj), None)
            if rv:
                self.resource_version = rv

    async def run(self) -> None:
        """List and watch until cancelled; never ends on its own, whatever goes wrong.

        - a watch that ends (the server's timeout) or breaks is resumed from the last
          resourceVersion: no relist;
        - 410 Gone, or an event that cannot be decoded, lists again;
        - every failure, and a watch that ends at once, backs off before the next try
          (a list that fails is tried again, a watch that fails is resumed);
        - a backoff ends early once an apiserver that could not be reached answers again, whoever's
          request it answered (``Reachability``);
        - an error nobody expected (a credential plugin that crashed, a body that is not
          JSON) is logged with its traceback and handled like any other failure.
        """
        need_list = True
        failures = 0
        while True:
            started = time.monotonic()
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                if time.monotonic() - started >= MIN_WATCH_SECONDS:
                    failures = 0
                    continue
                error = "watch ended at once"
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.gone:
                    log.info("informer %s: resourceVersion too old, relisting", self.name)
                    need_list = True
                    continue
                if exc.reason == "InvalidWatchEvent":
                    need_list = True
                error = str(exc)
            except Exception as exc:
                log.exception("informer %s: unexpected error", self.name)
                error = f"{type(exc).__name__}: {exc}"
            failures += 1
            self.failures += 1
            wait = backoff(failures)
            log.warning("informer %s: %s; %s in %.1fs", self.name, error,
                        "listing" if need_list else "watching again", wait)
            await self.kube.reachability.sleep(wait)  # or less: until the apiserver answers again

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            for obj in list(self.store.values()):
                self._notify(obj, obj)

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Run the reflector (and the resync), under ``supervisor`` when given."""
        if supervisor is not None:
            supervisor.spawn(f"informer:{self.name}", self.run)
            if self.resync > 0:
                supervisor.spawn(f"resync:{self.name}", self._resync_loop)
            return
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
