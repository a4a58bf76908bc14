"""Caches of named objects, for credentials that may read only the objects they are given.

A kubelet's credentials (``system:node:NAME`` under the Node authorizer) may
read a Secret, ConfigMap or claim only while a pod bound to the node refers
to it, and never list them cluster-wide. So instead of one informer of every
Secret, the kubelet's watch-based manager keeps one list+watch per referenced
object (``fieldSelector=metadata.name=NAME``, which the apiserver authorizes
as a request for that object). ``ObjectWatches`` is that manager: it looks
like one informer to the controllers (``get``, handlers, a merged store), and
the dependency controller tells it which objects to follow (``ensure``) and
which to drop (``forget``).

Resources the authorizer lets a node only ``get`` (claims) are fetched on
``ensure`` instead of watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.informer import Informer
from tensile.kube.supervisor import Supervisor

log = logging.getLogger("tensile.kube.objects")

#: How long ``ensure`` waits for an object's first list (the authorizer learns a new pod's
#: references a moment after the pod is bound, so the first tries may be refused).
ENSURE_TIMEOUT = 30.0


class ObjectWatches(Informer):
    def __init__(self, kube: Kube, resource: str, *, name: str, watch: bool = True) -> None:
        super().__init__(kube, path(resource), name=name)
        self.resource = resource
        self.watch = watch
        self._watches: dict[str, Informer] = {}
        self.synced.set()  # nothing to list up front: objects are followed one by one

    @property
    def followed(self) -> int:
        return len(self._watches)

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Nothing runs until an object is ensured."""

    async def run(self) -> None:
        raise NotImplementedError("ObjectWatches follows objects one by one; see ensure()")

    def _relay(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = f"{(obj.get('metadata') or {}).get('namespace')}/{(obj.get('metadata') or {}).get('name')}"
        before = self.store.get(key)
        if new is None:
            self.store.pop(key, None)
        else:
            self.store[key] = new
        self._notify(before, new)

    async def ensure(self, namespace: str, name: str, timeout: float = ENSURE_TIMEOUT) -> None:
        """Follow ``namespace/name`` from now on; returns once its current state is known."""
        key = f"{namespace}/{name}"
        if not self.watch:
            await self._fetch(namespace, name)
            return
        inf = self._watches.get(key)
        if inf is None:
            inf = Informer(self.kube, path(self.resource, namespace), field_selector=f"metadata.name={name}",
                           name=f"{self.name}:{key}")
            inf.add_handler(self._relay)
            self._watches[key] = inf
            inf.start()
        await inf.wait_synced(timeout)

    async def _fetch(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        try:
            obj = await self.kube.get(path(self.resource, namespace, name))
        except ApiError as exc:
            if not exc.not_found:
                raise
            if key in self.store:
                self._relay(self.store[key], None)
            return
        self._relay(self.store.get(key), obj)

    async def forget(self, namespace: str, name: str) -> None:
        """Stop following ``namespace/name`` (no pod of the node refers to it any more)."""
        key = f"{namespace}/{name}"
        self.store.pop(key, None)
        inf = self._watches.pop(key, None)
        if inf is not None:
            await inf.stop()

    async def stop(self) -> None:
        for inf in list(self._watches.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await inf.stop()
        self._watches.clear()
