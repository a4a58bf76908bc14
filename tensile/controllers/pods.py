"""Pods of the virtual node: copies down, status up, deletion like a kubelet.

One work queue keyed ``namespace/name`` is fed by the upper pods bound to
this node and by the lower copies this node owns. ``reconcile`` reads both
caches and is level-based and idempotent, so a restart, a missed event or a
crash mid-sync converges to exactly one lower copy per upper pod:

- no upper pod: delete our lower copy (orphans after a restart too);
- upper pod terminating: delete the lower copy with the same grace period,
  and once it is gone remove the upper pod (grace 0), as a kubelet does;
- no lower copy: create its dependencies, then the copy; a required
  dependency that is missing or owned by someone else holds the pod with a
  Warning Event and is retried with backoff;
- lower copy vanished out of band after it ran: the upper pod turns Failed
  (and is deleted if a controller owns it), so its controller replaces it;
- otherwise: push allowed spec changes down, pull status up.

Lower pods tensile does not own never enter the lower cache (it is filtered
by owner labels) and so are never touched.
"""

from __future__ import annotations

import logging
from typing import Any

from tensile import conventions as c
from tensile import dependencies as deps
from tensile import translate
from tensile.controllers.context import Context
from tensile.controllers.dependencies import RESOURCES, DependencyController
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.kube.client import JSON, STRATEGIC_PATCH, path
from tensile.kube.errors import ApiError
from tensile.kube.events import NORMAL, WARNING
from tensile.kube.informer import key_of, meta_of
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import fields

log = logging.getLogger("tensile.pods")

TERMINAL = ("Succeeded", "Failed")
#: How soon to look again at a pod held by a missing dependency (backoff comes on top via events).
HELD_RECHECK = 5.0



class PodController:
    def __init__(self, ctx: Context, deps_ctl: DependencyController, namespaces: NamespaceEnsurer) -> None:
        self.ctx = ctx
        self.deps = deps_ctl
        self.namespaces = namespaces
        self.queue = WorkQueue("pods")
        self.workers = Workers(self.queue, self.reconcile, ctx.config.pod_workers, self._on_error)
        self.stats: dict[str, int] = {"created": 0, "deleted_lower": 0, "deleted_upper": 0, "status_updates": 0,
                                      "spec_updates": 0, "failed_out_of_band": 0}
        ctx.upper_pods.add_handler(self._enqueue)
        ctx.lower_pods.add_handler(self._enqueue)
        # A dependency appearing upstairs releases pods held for it.
        for resource in RESOURCES:
            if resource in ctx.upper_deps:
                ctx.upper_deps[resource].add_handler(self._on_dependency)

    @property
    def cluster(self) -> str:
        return self.ctx.config.cluster_id

    def _enqueue(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is not None:
            self.queue.add(key_of(obj))

    def _on_dependency(self, old: JSON | None, new: JSON | None) -> None:
        if old is None and new is not None:
            ns = meta_of(new).get("namespace")
            for pod in self.ctx.upper_pods.items():
                if meta_of(pod).get("namespace") == ns and not self.ctx.lower_pods.get(key_of(pod)):
                    self.queue.add(key_of(pod))

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("pod sync failed: %s", exc, extra=fields(key, cluster=self.cluster))
        upper = self.ctx.upper_pods.get(key)
        if upper is not None and self.queue.failures(key) in (0, 3, 10):
            self.ctx.recorder.event(upper, WARNING, "ProviderSyncFailed", f"tensile: {exc}")

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        upper = self.ctx.upper_pods.get(key)
        lower = self.ctx.lower_pods.get(key)
        if upper is None:
            if lower is not None:
                await self._delete_lower(key, lower, grace=None, reason="upper pod is gone")
            return None
        lower_uid = (meta_of(lower).get("annotations") or {}).get(c.UPPER_UID_ANNOTATION)
        if lower is not None and lower_uid != meta_of(upper).get("uid"):
            # Same name, new upper pod (StatefulSet replaces pods like that): replace the copy.
            if not meta_of(lower).get("deletionTimestamp"):
                await self._delete_lower(key, lower, grace=0, reason="lower copy belongs to an older upper pod")
            return None
        if meta_of(upper).get("deletionTimestamp"):
            return await self._terminate(key, upper, lower)
        if lower is None:
            return await self._ensure_lower(key, upper)
        await self._update_lower(key, upper, lower)
        await self._update_status(key, upper, lower)
        return None

    async def _delete_lower(self, key: str, lower: JSON, grace: int | None, reason: str) -> None:
        ns, name = key.split("/", 1)
        body: dict[str, Any] = {"preconditions": {"uid": meta_of(lower).get("uid")}}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            await self.ctx.lower.delete(path("pods", ns, name), body)
            self.stats["deleted_lower"] += 1
            log.info("deleted lower pod: %s", reason, extra=fields(key, cluster=self.cluster, grace=grace))
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    async def _terminate(self, key: str, upper: JSON, lower: JSON | None) -> float | None:
        ns, name = key.split("/", 1)
        if lower is not None:
            if not meta_of(lower).get("deletionTimestamp"):
                grace = meta_of(upper).get("deletionGracePeriodSeconds")
                await self._delete_lower(key, lower, grace=grace, reason="upper pod is terminating")
                self.ctx.recorder.event(upper, NORMAL, "ProviderDeleteSuccess",
                                        f"deleting the lower pod in cluster {self.cluster}")
            await self._update_status(key, upper, lower)
            return None
        # Make sure the copy is really gone, not merely missing from a lagging cache.
        try:
            await self.ctx.lower.get(path("pods", ns, name))
            return 1.0
        except ApiError as exc:
            if not exc.not_found:
                raise
        try:
            await self.ctx.upper.delete(path("pods", ns, name), {
                "gracePeriodSeconds": 0, "preconditions": {"uid": meta_of(upper).get("uid")},
            })
            self.stats["deleted_upper"] += 1
            log.info("removed upper pod after its lower copy was gone", extra=fields(key, cluster=self.cluster))
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise
        return None

    def _ran_before(self, upper: JSON) -> bool:
        """The upper pod shows status that came from a lower copy."""
        return bool((upper.get("status") or {}).get("hostIP"))

    async def _ensure_lower(self, key: str, upper: JSON) -> float | None:
        ns, name = key.split("/", 1)
        phase = (upper.get("status") or {}).get("phase")
        if phase in TERMINAL:
            return None
        if self._ran_before(upper):
            try:
                lower = await self.ctx.lower.get(path("pods", ns, name))
            except ApiError as exc:
                if not exc.not_found:
                    raise
                await self._fail_upper(key, upper)
                return None
            if self.ctx.owner.owns(lower):
                return 1.0  # the cache has not caught up yet
        try:
            desired = translate.lower_pod(upper, self.ctx.owner)
        except ValueError as exc:
            self.ctx.recorder.event(upper, WARNING, "InvalidClusterSelector", str(exc))
            log.warning("cannot translate pod: %s", exc, extra=fields(key, cluster=self.cluster))
            return None  # retrying cannot help; an update of the pod will requeue it
        held = await self._ensure_dependencies(key, upper, desired)
        if held:
            return HELD_RECHECK
        await self.namespaces.ensure(ns)
        try:
            await self.ctx.lower.create(path("pods", ns), desired)
        except ApiError as exc:
            if not exc.already_exists:
                if exc.status == 404 or "being terminated" in exc.message:
                    self.namespaces.forget(ns)
                self.ctx.recorder.event(upper, WARNING, "ProviderCreateFailed",
                                        f"creating the pod in lower cluster {self.cluster} failed: {exc.message}")
                raise
            existing = await self.ctx.lower.get(path("pods", ns, name))
            if not self.ctx.owner.owns(existing):
                msg = (f"pod {key} already exists in lower cluster {self.cluster} and is not managed by this "
                       "virtual node; tensile will not touch it")
                self.ctx.recorder.event(upper, WARNING, "NameConflict", msg)
                log.warning(msg, extra=fields(key, cluster=self.cluster))
                return 60.0
            return 1.0
        self.stats["created"] += 1
        self.ctx.recorder.event(upper, NORMAL, "ProviderCreateSuccess", f"created pod in lower cluster {self.cluster}")
        log.info("created lower pod", extra=fields(key, cluster=self.cluster))
        return None

    async def _ensure_dependencies(self, key: str, upper: JSON, desired: JSON) -> bool:
        """Create what the pod needs; True when the pod must wait."""
        problems = []
        for ref in deps.pod_dependencies(desired):
            result = await self.deps.sync(ref)
            if result == "ok" or (result == "missing" and ref.optional):
                continue
            if result == "missing":
                problems.append(f"{ref.resource} {ref.namespace}/{ref.name} not found in the upper cluster")
            else:
                problems.append(self.deps.copies.conflicts.get(ref.key, f"{ref.resource} {ref.name} conflicts"))
        if problems:
            msg = "waiting for dependencies: " + "; ".join(problems)
            reason = "DependencyConflict" if any("not managed" in p for p in problems) else "DependencyMissing"
            self.ctx.recorder.event(upper, WARNING, reason, msg)
            log.warning(msg, extra=fields(key, cluster=self.cluster))
        return bool(problems)

    async def _fail_upper(self, key: str, upper: JSON) -> None:
        ns, name = key.split("/", 1)
        reason = "LowerPodDeleted"
        message = f"the pod's copy in lower cluster {self.cluster} was deleted or evicted out of band"
        status = translate.failed_status(upper, reason, message)
        await self.ctx.upper.patch(path("pods", ns, name, "status"), {"status": status})
        self.stats["failed_out_of_band"] += 1
        self.ctx.recorder.event(upper, WARNING, reason, message)
        log.warning(message, extra=fields(key, cluster=self.cluster))
        owners = meta_of(upper).get("ownerReferences") or []
        if any(o.get("controller") for o in owners):
            try:
                await self.ctx.upper.delete(path("pods", ns, name), {
                    "gracePeriodSeconds": 0, "preconditions": {"uid": meta_of(upper).get("uid")},
                })
            except ApiError as exc:
                if not (exc.not_found or exc.conflict):
                    raise

    async def _update_lower(self, key: str, upper: JSON, lower: JSON) -> None:
        if meta_of(lower).get("deletionTimestamp"):
            return
        try:
            desired = translate.lower_pod(upper, self.ctx.owner)
        except ValueError:
            return
        patch = translate.pod_update_patch(desired, lower)
        if patch is None:
            return
        ns, name = key.split("/", 1)
        await self.ctx.lower.patch(path("pods", ns, name), patch, content_type=STRATEGIC_PATCH)
        self.stats["spec_updates"] += 1
        self.ctx.recorder.event(upper, NORMAL, "ProviderUpdateSuccess",
                                f"updated the pod in lower cluster {self.cluster}")
        log.info("updated lower pod", extra=fields(key, cluster=self.cluster, fields=sorted(patch)))

    async def _update_status(self, key: str, upper: JSON, lower: JSON) -> None:
        desired = translate.upper_status(lower, upper, self.ctx.config.node_ip)
        patch = translate.status_patch(upper.get("status") or {}, desired)
        if patch is None:
            return
        ns, name = key.split("/", 1)
        await self.ctx.upper.patch(path("pods", ns, name, "status"), patch)
        self.stats["status_updates"] += 1

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for inf in (self.ctx.upper_pods, self.ctx.lower_pods):
            for obj in inf.items():
                self.queue.add(key_of(obj))
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
