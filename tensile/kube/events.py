"""Record Kubernetes Events on objects, like client-go's EventRecorder.

Users read what tensile did to their pod with ``kubectl describe pod``.
Repeats of the same (object, reason, message) within a short window are
folded into one Event with a count, so a pod retried every second does not
flood etcd. Recording never blocks or fails the caller: an Event that
cannot be written is logged and dropped, because Events are best-effort in
Kubernetes too.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from typing import Any

from cachetools import TTLCache

from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kube.events")

NORMAL = "Normal"
WARNING = "Warning"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, kube: Kube, component: str, host: str) -> None:
        self.kube = kube
        self.component = component
        self.host = host
        self._recent: TTLCache[tuple[str, str, str, str], tuple[str, int]] = TTLCache(maxsize=10000, ttl=600)
        self._tasks: set[asyncio.Task[None]] = set()

    def event(self, obj: JSON, etype: str, reason: str, message: str) -> None:
        """Fire and forget."""
        task = asyncio.create_task(self._record(obj, etype, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        now = _now()
        try:
            seen = self._recent.get(key)
            if seen is not None:
                name, count = seen
                await self.kube.patch(
                    path("events", ns, name), {"count": count + 1, "lastTimestamp": now, "message": message}
                )
                self._recent[key] = (name, count + 1)
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
        except ApiError as exc:
            if exc.not_found:
                self._recent.pop(key, None)
            log.warning("event %s/%s %s not recorded: %s", ns, meta.get("name"), reason, exc)

    async def flush(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
