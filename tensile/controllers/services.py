"""Services in the lower cluster for the pods of this virtual node.

An upper Service whose selector matches a pod of this virtual node is copied
down; when no pod matches any more, the copy is deleted. Two modes:

- default: the copy keeps its selector, so the lower cluster's own
  EndpointSlice controller, DNS and ClusterIP route to the lower pods. No flat
  pod network is needed (Tensile Kube needs one).
- ``--flat-network``: the copy has no selector and the upper EndpointSlices
  are copied beside it (Tensile Kube's behaviour), so lower clients reach
  every endpoint of the Service, upstairs ones included.
"""

from __future__ import annotations

import logging

from tensile import conventions as c
from tensile import dependencies as deps
from tensile import translate
from tensile.controllers.context import ENDPOINTSLICES, SERVICE_INDEX, Context
from tensile.controllers.copies import LowerCopies
from tensile.kube.client import JSON
from tensile.kube.informer import NAMESPACE, key_of, meta_of
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import fields

log = logging.getLogger("tensile.services")

SERVICES = "services"



class ServiceController:
    def __init__(self, ctx: Context, copies: LowerCopies) -> None:
        self.ctx = ctx
        self.copies = copies
        self.flat = ctx.config.flat_network
        self.queue = WorkQueue("services")
        ctx.retry_failed_on_reconnect(self.queue)
        self.workers = Workers(self.queue, self.reconcile, ctx.config.service_workers, self._on_error)
        ctx.upper_pods.add_handler(self._on_pod)
        ctx.upper_deps[SERVICES].add_handler(lambda old, new: self._on_service(False, old, new))
        ctx.lower_deps[SERVICES].add_handler(lambda old, new: self._on_service(True, old, new))
        ctx.lower_namespaces.add_handler(self._on_namespace)
        if self.flat:
            ctx.upper_deps[ENDPOINTSLICES].add_handler(lambda old, new: self._on_slice(False, old, new))
            ctx.lower_deps[ENDPOINTSLICES].add_handler(lambda old, new: self._on_slice(True, old, new))

    # --- triggers -----------------------------------------------------------------------

    def _on_pod(self, old: JSON | None, new: JSON | None) -> None:
        if old is not None and new is not None and meta_of(old).get("labels") == meta_of(new).get("labels") and bool(
            meta_of(old).get("deletionTimestamp")
        ) == bool(meta_of(new).get("deletionTimestamp")):
            return  # only label changes, arrivals, departures and terminations change what is selected
        ns = str(meta_of(new or old).get("namespace"))
        for svc in self.ctx.upper_deps[SERVICES].by_index(NAMESPACE, ns):
            self.queue.add(key_of(svc))
        for svc in self.ctx.lower_deps[SERVICES].by_index(NAMESPACE, self.ctx.lower_ns(ns)):
            self.queue.add(self.ctx.upper_key(svc))

    def _on_namespace(self, old: JSON | None, new: JSON | None) -> None:
        if new is None and old is not None:
            upper_ns = self.ctx.owner.namespaces.upper_of_namespace(old)
            for svc in self.ctx.upper_deps[SERVICES].by_index(NAMESPACE, upper_ns):
                self.queue.add(key_of(svc))

    def _on_service(self, lower: bool, old: JSON | None, new: JSON | None) -> None:
        """Queued under the upper Service's key; a lower copy says which (``lower``)."""
        obj = new or old
        if obj is not None:
            self.queue.add(self.ctx.upper_key(obj) if lower else key_of(obj))

    def _on_slice(self, lower: bool, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        meta = meta_of(obj)
        service = (meta.get("labels") or {}).get(c.SERVICE_NAME_LABEL)
        if service and obj is not None:
            ns = self.ctx.upper_ns(obj) if lower else meta.get("namespace")
            self.queue.add(f"{ns}/{service}")

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("service sync failed: %s", exc,
                    extra=fields(key, kind="service", cluster=self.ctx.config.cluster_id))

    # --- reconcile -------------------------------------------------------------------------

    def wanted(self, svc: JSON | None) -> bool:
        if svc is None:
            return False
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector or spec.get("type") == "ExternalName":
            return False
        return any(
            not meta_of(pod).get("deletionTimestamp") and deps.selector_matches(selector, meta_of(pod).get("labels"))
            for pod in self.ctx.upper_pods.by_index(NAMESPACE, str(meta_of(svc).get("namespace")))
        )

    def _slices(self, side: str, ns: str, service: str) -> list[JSON]:
        """EndpointSlices of upper Service ``ns/service``: upstairs, or our copies downstairs."""
        if side == "upper":
            return self.ctx.upper_deps[ENDPOINTSLICES].by_index(SERVICE_INDEX, f"{ns}/{service}")
        return self.ctx.lower_deps[ENDPOINTSLICES].by_index(SERVICE_INDEX, f"{self.ctx.lower_ns(ns)}/{service}")

    async def reconcile(self, key: str) -> float | None:
        ns, name = key.split("/", 1)
        upper = self.ctx.upper_deps[SERVICES].get(key)
        if not self.wanted(upper):
            if self.flat:
                for s in self._slices("lower", ns, name):
                    await self.copies.collect(ENDPOINTSLICES, ns, meta_of(s)["name"])
            await self.copies.collect(SERVICES, ns, name)
            return None
        assert upper is not None
        result = await self.copies.apply(SERVICES, translate.lower_service(upper, self.ctx.owner, self.flat))
        if result == "conflict":
            log.warning(self.copies.conflicts.get(f"{SERVICES}/{key}", "conflict"),
                        extra=fields(key, kind="service", cluster=self.ctx.config.cluster_id))
            return None
        if self.flat:
            desired = {meta_of(s)["name"]: s for s in self._slices("upper", ns, name)}
            for s in desired.values():
                await self.copies.apply(ENDPOINTSLICES, translate.lower_endpointslice(s, self.ctx.owner))
            for s in self._slices("lower", ns, name):
                if meta_of(s)["name"] not in desired:
                    await self.copies.collect(ENDPOINTSLICES, ns, meta_of(s)["name"])
        return None

    def start(self) -> None:
        for svc in self.ctx.lower_deps[SERVICES].items():
            self.queue.add(self.ctx.upper_key(svc))
        for svc in self.ctx.upper_deps[SERVICES].items():
            self.queue.add(key_of(svc))
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
