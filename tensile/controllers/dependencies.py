"""Copies of the objects pods need, kept in the lower cluster and collected.

Tensile Kube copies a ConfigMap once and never again, and collects copies
only at start-up. Here every dependency is a key in a work queue:

- an index maps each dependency to the pods (upper, or lower still running)
  of this virtual node that reference it;
- an upper change to a referenced ConfigMap/Secret re-syncs the lower copy
  within seconds;
- when no pod references a copy any more, it is deleted right away.

Services are handled here too: an upper Service whose selector matches a
pod of this virtual node is copied down with its selector, so in-cluster
DNS and ClusterIP route to the lower pods without a flat pod network.

A lower object tensile did not create is never overwritten or deleted; the
conflict is remembered so the pod controller can hold the pod and say why.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Literal

from tensile import dependencies as deps
from tensile import translate
from tensile.controllers.context import Context
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.kube.client import JSON, path
from tensile.kube.errors import ApiError
from tensile.kube.informer import Handler, key_of
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import fields

log = logging.getLogger("tensile.dependencies")

SyncResult = Literal["ok", "missing", "conflict"]
SERVICES = "services"


def split_key(key: str) -> tuple[str, str, str]:
    resource, ns, name = key.split("/", 2)
    return resource, ns, name


class DependencyController:
    def __init__(self, ctx: Context, namespaces: NamespaceEnsurer) -> None:
        self.ctx = ctx
        self.namespaces = namespaces
        self.queue = WorkQueue("dependencies")
        self.workers = Workers(self.queue, self.reconcile, ctx.config.dependency_workers, self._on_error)
        #: dependency key -> pod sources ("upper:ns/name" / "lower:ns/name") referencing it
        self.referrers: dict[str, set[str]] = defaultdict(set)
        self._refs_of: dict[str, set[str]] = {}
        #: dependency key -> message, for lower objects tensile does not own
        self.conflicts: dict[str, str] = {}
        ctx.upper_pods.add_handler(lambda o, n: self._on_pod("upper", o, n))
        ctx.lower_pods.add_handler(lambda o, n: self._on_pod("lower", o, n))
        for resource, inf in [*ctx.upper_deps.items(), *ctx.lower_deps.items()]:
            inf.add_handler(self._object_handler(resource))

    # --- index ----------------------------------------------------------------------

    def _on_pod(self, side: str, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        source = f"{side}:{key_of(obj)}"
        refs = {r.key for r in deps.pod_dependencies(new)} if new is not None else set()
        before = self._refs_of.get(source, set())
        if refs == before:
            if new is not None and side == "upper":
                self._enqueue_services((new.get("metadata") or {}).get("namespace", ""))
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
        self._enqueue_services((obj.get("metadata") or {}).get("namespace", ""))

    def _object_handler(self, resource: str) -> Handler:
        return lambda old, new: self._on_object(resource, old, new)

    def _on_object(self, resource: str, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = f"{resource}/{key_of(obj)}"
        if resource == SERVICES or key in self.referrers or self.ctx.owner.owns(obj):
            self.queue.add(key)

    def _enqueue_services(self, namespace: str) -> None:
        for svc in self.ctx.upper_deps[SERVICES].items():
            if (svc.get("metadata") or {}).get("namespace") == namespace:
                self.queue.add(f"{SERVICES}/{key_of(svc)}")
        for svc in self.ctx.lower_deps[SERVICES].items():
            if (svc.get("metadata") or {}).get("namespace") == namespace:
                self.queue.add(f"{SERVICES}/{key_of(svc)}")

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("dependency sync failed: %s", exc,
                    extra=fields(key, kind="object", cluster=self.ctx.config.cluster_id))

    # --- reconcile --------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        resource, ns, name = split_key(key)
        if resource == SERVICES:
            await self._reconcile_service(ns, name)
            return None
        if key in self.referrers:
            await self.sync(deps.Ref(resource, ns, name))
        else:
            await self._collect(resource, ns, name)
        return None

    async def _collect(self, resource: str, ns: str, name: str) -> None:
        lower = self.ctx.lower_deps[resource].get(f"{ns}/{name}")
        if lower is None or not self.ctx.owner.owns(lower):
            return
        try:
            await self.ctx.lower.delete(path(resource, ns, name), {
                "preconditions": {"uid": (lower.get("metadata") or {}).get("uid")}
            })
            log.info("deleted unreferenced lower copy", extra=fields(f"{ns}/{name}", kind="object", resource=resource,
                                                                        cluster=self.ctx.config.cluster_id))
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    def _upper_object(self, ref: deps.Ref) -> JSON | None:
        if ref.resource == deps.SERVICEACCOUNT:
            return {"metadata": {"name": ref.name, "namespace": ref.namespace}}
        return self.ctx.upper_deps[ref.resource].get(f"{ref.namespace}/{ref.name}")

    async def sync(self, ref: deps.Ref) -> SyncResult:
        """Make the lower copy of ``ref`` match the upper object. Idempotent."""
        upper = self._upper_object(ref)
        if upper is None:
            return "missing"
        desired = translate.lower_object(ref.resource, upper, self.ctx.owner)
        return await self._apply(ref.resource, ref.namespace, ref.name, desired, ref.key)

    async def _apply(self, resource: str, ns: str, name: str, desired: JSON, key: str) -> SyncResult:
        lower = self.ctx.lower_deps[resource].get(f"{ns}/{name}")
        if lower is None:
            await self.namespaces.ensure(ns)
            try:
                await self.ctx.lower.create(path(resource, ns), desired)
                self.conflicts.pop(key, None)
                log.info("created lower copy", extra=fields(f"{ns}/{name}", kind="object", resource=resource,
                                                              cluster=self.ctx.config.cluster_id))
                return "ok"
            except ApiError as exc:
                if not exc.already_exists:
                    raise
            lower = await self.ctx.lower.get(path(resource, ns, name))
        if not self.ctx.owner.owns(lower):
            self.conflicts[key] = (
                f"{resource} {ns}/{name} already exists in the lower cluster and is not managed by this virtual node;"
                " tensile will not overwrite it"
            )
            return "conflict"
        self.conflicts.pop(key, None)
        if translate.needs_update(resource, desired, lower):
            body = dict(desired)
            body["metadata"] = {**desired["metadata"], "resourceVersion": (lower.get("metadata") or {}).get(
                "resourceVersion")}
            if resource == SERVICES:
                lspec = lower.get("spec") or {}
                body["spec"] = {**desired["spec"], **{k: lspec[k] for k in ("clusterIP", "clusterIPs") if k in lspec}}
            try:
                await self.ctx.lower.replace(path(resource, ns, name), body)
            except ApiError as exc:
                if exc.status == 422 and (lower.get("immutable") or desired.get("immutable")):
                    # An immutable ConfigMap/Secret changed upstairs: replace the copy.
                    await self.ctx.lower.delete(path(resource, ns, name))
                    await self.ctx.lower.create(path(resource, ns), desired)
                else:
                    raise
            log.info("updated lower copy", extra=fields(f"{ns}/{name}", kind="object", resource=resource,
                                                          cluster=self.ctx.config.cluster_id))
        return "ok"

    # --- services -------------------------------------------------------------------------

    def _service_wanted(self, svc: JSON | None) -> bool:
        if svc is None:
            return False
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector or spec.get("type") == "ExternalName":
            return False
        ns = (svc.get("metadata") or {}).get("namespace")
        for pod in self.ctx.upper_pods.items():
            meta = pod.get("metadata") or {}
            if meta.get("namespace") == ns and not meta.get("deletionTimestamp") and deps.selector_matches(
                selector, meta.get("labels")
            ):
                return True
        return False

    async def _reconcile_service(self, ns: str, name: str) -> None:
        key = f"{SERVICES}/{ns}/{name}"
        upper = self.ctx.upper_deps[SERVICES].get(f"{ns}/{name}")
        if self._service_wanted(upper):
            assert upper is not None
            await self._apply(SERVICES, ns, name, translate.lower_object(SERVICES, upper, self.ctx.owner), key)
        else:
            await self._collect(SERVICES, ns, name)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Start-up GC: every lower copy we own gets looked at once.
        for resource, inf in self.ctx.lower_deps.items():
            for obj in inf.items():
                self.queue.add(f"{resource}/{key_of(obj)}")
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
