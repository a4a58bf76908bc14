"""Record Kubernetes Events on objects, like client-go's EventRecorder.

Users read what tensile did to their pod with ``kubectl describe pod``.
Events go through one bounded queue and one writer, so however many pods
have something to say they take one request at a time from the client's
budget and can never crowd out pod writes, let alone the heartbeat (which
has a client of its own). Repeats of the same (object, type, reason,
message) within ten minutes are folded into the existing Event with a count,
as client-go's correlator does, so a pod retried every second does not flood
etcd. A full queue drops the Event and counts it: Events are best-effort in
Kubernetes too, and recording never blocks or fails the caller. An Event
that cannot be written is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from cachetools import TTLCache

from tensile import timestamps
from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kube.events")

NORMAL = "Normal"
WARNING = "Warning"
#: Events waiting to be written; more are dropped (and counted) rather than piling up in memory.
QUEUE_SIZE = 1000
_Key = tuple[str, str, str, str]


class EventRecorder:
    def __init__(self, kube: Kube, component: str, host: str, queue_size: int = QUEUE_SIZE) -> None:
        self.kube = kube
        self.component = component
        self.host = host
        self._recent: TTLCache[_Key, tuple[str, int]] = TTLCache(maxsize=10000, ttl=600)
        self._queue: asyncio.Queue[tuple[JSON, str, str, str]] = asyncio.Queue(maxsize=queue_size)
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        self.folded = 0
        self.dropped = 0
        self.failed = 0

    def event(self, obj: JSON, etype: str, reason: str, message: str) -> None:
        """Queue an Event; never blocks. Dropped (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((obj, etype, reason, message))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("event queue full: %d events dropped so far", self.dropped)
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name=f"{self.component}:events")

    async def _write_all(self) -> None:
        while not self._queue.empty():
            obj, etype, reason, message = self._queue.get_nowait()
            try:
                await self._record(obj, etype, reason, message)
            except Exception:
                self.failed += 1
                log.exception("event %s not recorded", reason)
            finally:
                self._queue.task_done()

    async def _record(self, obj: JSON, etype: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        key = (meta.get("uid", ""), etype, reason, message)
        involved: dict[str, Any] = {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj.get("kind", "Pod"),
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        now = timestamps.rfc3339()
        try:
            seen = self._recent.get(key)
            if seen is not None:
                name, count = seen
                await self.kube.patch(
                    path("events", ns, name), {"count": count + 1, "lastTimestamp": now, "message": message}
                )
                self._recent[key] = (name, count + 1)
                self.folded += 1
                return
            name = f"{meta.get('name', 'object')}.{secrets.token_hex(8)}"
            await self.kube.create(path("events", ns), {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": involved,
                "reason": reason,
                "message": message[:1024],
                "type": etype,
                "source": {"component": self.component, "host": self.host},
                "reportingComponent": self.component,
                "reportingInstance": self.host,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            })
            self._recent[key] = (name, 1)
            self.written += 1
        except ApiError as exc:
            self.failed += 1
            if exc.not_found:
                self._recent.pop(key, None)
            log.warning("event %s/%s %s not recorded: %s", ns, meta.get("name"), reason, exc)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def flush(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop the writer."""
        if self._writer is not None and not self._writer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            if not self._writer.done():
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
