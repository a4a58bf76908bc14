"""Copies of the objects pods need, kept in the lower cluster and collected.

Tensile Kube copies a ConfigMap once and never again, and collects copies
only at start-up. Here every dependency is a key in a work queue:

- an index maps each dependency to the pods (upper, or lower still running)
  of this virtual node that reference it;
- an upper change to a referenced ConfigMap/Secret re-syncs the lower copy
  within seconds;
- when no pod references a copy any more, it is deleted right away.

Writes go through ``LowerCopies``, which never overwrites or deletes a lower
object tensile did not create and remembers the conflict, so the pod
controller can hold the pod and say why. Services live in services.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from tensile import dependencies as deps
from tensile import translate
from tensile.controllers.context import Context
from tensile.controllers.copies import LowerCopies, SyncResult
from tensile.kube.client import JSON
from tensile.kube.informer import Handler, key_of
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import fields

log = logging.getLogger("tensile.dependencies")

#: What a pod can depend on; Services are handled by the service controller.
RESOURCES = ("configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts")


def split_key(key: str) -> tuple[str, str, str]:
    resource, ns, name = key.split("/", 2)
    return resource, ns, name


class DependencyController:
    def __init__(self, ctx: Context, copies: LowerCopies) -> None:
        self.ctx = ctx
        self.copies = copies
        self.queue = WorkQueue("dependencies")
        self.workers = Workers(self.queue, self.reconcile, ctx.config.dependency_workers, self._on_error)
        #: dependency key -> pod sources ("upper:ns/name" / "lower:ns/name") referencing it
        self.referrers: dict[str, set[str]] = defaultdict(set)
        self._refs_of: dict[str, set[str]] = {}
        ctx.upper_pods.add_handler(lambda o, n: self._on_pod("upper", o, n))
        ctx.lower_pods.add_handler(lambda o, n: self._on_pod("lower", o, n))
        for resource in RESOURCES:
            for side in (ctx.upper_deps, ctx.lower_deps):
                if resource in side:
                    side[resource].add_handler(self._object_handler(resource))

    # --- index ----------------------------------------------------------------------

    def _on_pod(self, side: str, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        source = f"{side}:{key_of(obj)}"
        refs = {r.key for r in deps.pod_dependencies(new)} if new is not None else set()
        before = self._refs_of.get(source, set())
        if refs == before:
            return
        for k in before - refs:
            self.referrers[k].discard(source)
            if not self.referrers[k]:
                del self.referrers[k]
        for k in refs - before:
            self.referrers[k].add(source)
        if refs:
            self._refs_of[source] = refs
        else:
            self._refs_of.pop(source, None)
        for k in refs ^ before:
            self.queue.add(k)

    def _object_handler(self, resource: str) -> Handler:
        return lambda old, new: self._on_object(resource, old, new)

    def _on_object(self, resource: str, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = f"{resource}/{key_of(obj)}"
        if key in self.referrers or self.ctx.owner.owns(obj):
            self.queue.add(key)

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("dependency sync failed: %s", exc,
                    extra=fields(key, kind="object", cluster=self.ctx.config.cluster_id))

    # --- reconcile --------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        resource, ns, name = split_key(key)
        if key in self.referrers:
            await self.sync(deps.Ref(resource, ns, name))
        else:
            await self.copies.collect(resource, ns, name)
        return None

    def _upper_object(self, ref: deps.Ref) -> JSON | None:
        if ref.resource == deps.SERVICEACCOUNT:
            return {"metadata": {"name": ref.name, "namespace": ref.namespace}}
        return self.ctx.upper_deps[ref.resource].get(f"{ref.namespace}/{ref.name}")

    async def sync(self, ref: deps.Ref) -> SyncResult:
        """Make the lower copy of ``ref`` match the upper object. Idempotent."""
        upper = self._upper_object(ref)
        if upper is None:
            return "missing"
        return await self.copies.apply(ref.resource, translate.lower_object(ref.resource, upper, self.ctx.owner))

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Start-up GC: every lower copy we own gets looked at once.
        for resource in RESOURCES:
            for obj in self.ctx.lower_deps[resource].items():
                self.queue.add(f"{resource}/{key_of(obj)}")
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
