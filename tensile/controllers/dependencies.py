"""Copies of the objects pods need, kept in the lower cluster and collected.

Tensile Kube copies a ConfigMap once and never again, and collects copies
only at start-up. Here every dependency is a key in a work queue:

- an index maps each dependency to the pods (upper, or lower still running)
  of this virtual node that reference it;
- an upper change to a referenced ConfigMap/Secret re-syncs the lower copy
  within seconds;
- a PVC copy lives as long as the upper claim (deleting it could delete the
  volume's data); once the copy is Bound the upper claim is bound to a mirror
  PV (``_mirror_binding``);
- when no pod references any other copy any more, it is deleted once it has stayed
  unreferenced for ``dependency_gc_delay`` seconds. A Recreate rollout has a
  moment with no pod at all (old pods gone, new ones not yet bound to this
  node); without the delay the copy would be deleted and made again under the
  new pods' feet. Sync and collection of one key are serialised by a per-key
  lock and collection re-checks the index under it, so a pod being created
  never loses a copy it was just promised.

Writes go through ``LowerCopies``, which never overwrites or deletes a lower
object tensile did not create and remembers the conflict, so the pod
controller can hold the pod and say why. Services live in services.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from tensile import conventions as c
from tensile import dependencies as deps
from tensile import translate
from tensile.controllers.context import Context
from tensile.controllers.copies import LowerCopies, SyncResult
from tensile.controllers.namespaces import is_terminating_error
from tensile.kube.client import JSON, path
from tensile.kube.errors import ApiError
from tensile.kube.informer import Handler, key_of
from tensile.kube.objects import ObjectWatches
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import fields

log = logging.getLogger("tensile.dependencies")

#: What a pod can depend on; Services are handled by the service controller.
RESOURCES = ("configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts")
#: Answers that mean "the lower cluster will not do this", as opposed to "try again".
REFUSED = (400, 403, 422)


def split_key(key: str) -> tuple[str, str, str]:
    resource, ns, name = key.split("/", 2)
    return resource, ns, name


def refused(exc: ApiError) -> bool:
    """The lower cluster will not take this copy as it is (invalid there, or a policy says no), as
    opposed to "try again": a namespace being deleted is only a wait."""
    return exc.status in REFUSED and not is_terminating_error(exc)


def holds_references(side: str, pod: JSON) -> bool:
    """Whether what ``pod`` references must be copied (and kept) downstairs.

    A lower copy's references always: it runs on them, or its end is still to be read. An upper
    pod's only while it may still be copied: a terminating or finished one never is (again), and
    what its copy uses, if it has one, the copy holds; a DaemonSet pod never is (see ``pods.py``).
    Without this a pod deleted before it was copied had its ConfigMaps copied, and the lower
    namespace made (which tensile never deletes), for a pod that would never run there.
    """
    if side == "lower":
        return True
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed") and not (
        translate.is_daemonset_pod(pod))


class DependencyController:
    def __init__(self, ctx: Context, copies: LowerCopies) -> None:
        self.ctx = ctx
        self.copies = copies
        self.queue = WorkQueue("dependencies")
        ctx.retry_failed_on_reconnect(self.queue)
        self.workers = Workers(self.queue, self.reconcile, ctx.config.dependency_workers, self._on_error)
        #: dependency key -> pod sources ("upper:ns/name" / "lower:ns/name") referencing it
        self.referrers: dict[str, set[str]] = defaultdict(set)
        self._refs_of: dict[str, set[str]] = {}
        #: dependency key -> monotonic time it lost its last referrer
        self._unreferenced_since: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        ctx.upper_pods.add_handler(lambda o, n: self._on_pod("upper", o, n))
        ctx.lower_pods.add_handler(lambda o, n: self._on_pod("lower", o, n))
        for resource in RESOURCES:
            for lower, side in ((False, ctx.upper_deps), (True, ctx.lower_deps)):
                if resource in side:
                    side[resource].add_handler(self._object_handler(resource, lower))
        ctx.lower_namespaces.add_handler(self._on_namespace)

    # --- index ----------------------------------------------------------------------

    def _on_pod(self, side: str, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = key_of(obj) if side == "upper" else self.ctx.upper_key(obj)
        source = f"{side}:{key}"
        # Keys are the upper objects': a lower copy's references are read in its upper namespace.
        upper_ns = key.split("/", 1)[0]
        refs = {r.key for r in deps.pod_dependencies(new, namespace=upper_ns)} if (
            new is not None and holds_references(side, new)) else set()
        before = self._refs_of.get(source, set())
        if refs == before:
            return
        now = time.monotonic()
        for k in before - refs:
            self.referrers[k].discard(source)
            if not self.referrers[k]:
                del self.referrers[k]
                self._unreferenced_since[k] = now
        for k in refs - before:
            self.referrers[k].add(source)
            self._unreferenced_since.pop(k, None)
        if refs:
            self._refs_of[source] = refs
        else:
            self._refs_of.pop(source, None)
        for k in refs ^ before:
            self.queue.add(k)

    def _on_namespace(self, old: JSON | None, new: JSON | None) -> None:
        """A lower namespace deleted out of band: make its copies again as soon as it is gone."""
        if new is None and old is not None:
            ns = self.ctx.owner.namespaces.upper_of_namespace(old)
            for key in list(self.referrers):
                if split_key(key)[1] == ns:
                    self.queue.add(key)

    def _object_handler(self, resource: str, lower: bool) -> Handler:
        return lambda old, new: self._on_object(resource, lower, old, new)

    def _on_object(self, resource: str, lower: bool, old: JSON | None, new: JSON | None) -> None:
        """Queued under the upper object's key; ``lower``: ``obj`` is a lower copy (ours: the cache is filtered)."""
        obj = new or old
        if obj is None:
            return
        upper_key = self.ctx.upper_key(obj) if lower else key_of(obj)
        key = f"{resource}/{upper_key}"
        if key in self.referrers or (lower and self.ctx.owner.owns(obj)) or (
                resource == deps.PVC and self.ctx.lower_deps[deps.PVC].get(self.ctx.lower_key(upper_key)) is not None):
            self.queue.add(key)

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("dependency sync failed: %s", exc,
                    extra=fields(key, kind="object", cluster=self.ctx.config.cluster_id))

    # --- reconcile --------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _claim_kept(self, resource: str, ns: str, name: str) -> bool:
        """A claim copy lives as long as the upper claim: deleting it could delete the volume's data."""
        if resource != deps.PVC or self.ctx.lower_deps[deps.PVC].get(f"{self.ctx.lower_ns(ns)}/{name}") is None:
            return False
        if not self.ctx.config.node_credentials:
            return self.ctx.upper_deps[deps.PVC].get(f"{ns}/{name}") is not None
        # With a node's credentials an unreferenced claim cannot be read: only a 404 proves it gone.
        try:
            await self.ctx.upper.get(path(deps.PVC, ns, name))
        except ApiError as exc:
            if exc.not_found:
                return False
            if exc.status != 403:
                raise
        return True

    async def reconcile(self, key: str) -> float | None:
        resource, ns, name = split_key(key)
        if key in self.referrers:
            try:
                await self.sync(deps.Ref(resource, ns, name))
            except ApiError as exc:
                if not refused(exc):
                    raise
                # The same copy is refused until the upper object changes, which queues it again; the
                # pods that need it are held with the lower cluster's answer (pods.py).
                log.warning("lower cluster refused the copy: %s", exc.message,
                            extra=fields(key, kind="object", cluster=self.ctx.config.cluster_id))
            return None
        if await self._claim_kept(resource, ns, name):
            if not self.ctx.config.node_credentials:
                await self.sync(deps.Ref(resource, ns, name))
            return None
        since = self._unreferenced_since.setdefault(key, time.monotonic())
        wait = since + self.ctx.config.dependency_gc_delay - time.monotonic()
        if wait > 0:
            return wait
        async with self._lock(key):
            if key in self.referrers:  # a pod took it up again while we waited
                return None
            if resource == deps.PVC:
                await self._collect_mirror(ns, name)
            await self.copies.collect(resource, ns, name)
            self.copies.conflicts.pop(key, None)  # nothing references it: forget its conflict
            cache = self.ctx.upper_deps.get(resource)
            if isinstance(cache, ObjectWatches):
                await cache.forget(ns, name)
        self._unreferenced_since.pop(key, None)
        if not self._lock(key).locked():
            self._locks.pop(key, None)
        return None

    def _upper_object(self, ref: deps.Ref) -> JSON | None:
        if ref.resource == deps.SERVICEACCOUNT:
            return {"metadata": {"name": ref.name, "namespace": ref.namespace}}
        return self.ctx.upper_deps[ref.resource].get(f"{ref.namespace}/{ref.name}")

    async def sync(self, ref: deps.Ref) -> SyncResult:
        """Make the lower copy of ``ref`` match the upper object. Idempotent."""
        cache = self.ctx.upper_deps.get(ref.resource)
        if isinstance(cache, ObjectWatches):
            await cache.ensure(ref.namespace, ref.name)
        upper = self._upper_object(ref)
        if upper is None:
            return "missing"
        async with self._lock(ref.key):
            result = await self.copies.apply(ref.resource, translate.lower_object(ref.resource, upper, self.ctx.owner))
        if result == "ok" and ref.resource == deps.PVC:
            await self._mirror_binding(ref, upper)
        return result

    async def _mirror_binding(self, ref: deps.Ref, upper: JSON) -> None:
        """Once the lower copy is Bound, bind the upper claim too, to a PV that mirrors the lower one.

        Tools wait for Bound claims (Helm ``--wait``, StatefulSet operators); the upper claim would
        otherwise stay Pending for ever, since no upper provisioner serves it. The mirror is
        pre-bound to the upper claim (``claimRef`` with its UID), so the upper PV controller binds
        them; its node affinity keeps the claim's pods on this virtual node.
        """
        lower = self.ctx.lower_deps[deps.PVC].get(f"{self.ctx.lower_ns(ref.namespace)}/{ref.name}")
        if lower is None or (lower.get("status") or {}).get("phase") != "Bound":
            return
        if (upper.get("spec") or {}).get("volumeName") or (upper.get("status") or {}).get("phase") == "Bound":
            return
        if self.ctx.config.node_credentials:
            return  # a node may not create PersistentVolumes; the upper claim stays as it is
        pv = translate.mirror_volume(upper, lower, self.ctx.owner)
        try:
            await self.ctx.upper.create(path("persistentvolumes"), pv)
        except ApiError as exc:
            if not exc.already_exists:
                raise
            return
        log.info("bound the upper claim to a mirror of the lower volume",
                 extra=fields(ref.key.split("/", 1)[1], kind="pvc", cluster=self.ctx.config.cluster_id,
                              volume=pv["metadata"]["name"]))

    async def _collect_mirror(self, ns: str, name: str) -> None:
        """The upper claim is gone: its mirror volume goes too (it holds no data; the lower volume does)."""
        lower = self.ctx.lower_deps[deps.PVC].get(f"{self.ctx.lower_ns(ns)}/{name}")
        uid = ((lower or {}).get("metadata") or {}).get("annotations", {}).get(c.UPPER_UID_ANNOTATION)
        if not uid:
            return
        pv_path = path("persistentvolumes", name=translate.mirror_volume_name(uid))
        try:
            pv = await self.ctx.upper.get(pv_path)
            if self.ctx.owner.owns(pv):
                await self.ctx.upper.delete(pv_path, {"preconditions": {"uid": pv["metadata"]["uid"]}})
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Start-up GC: every lower copy we own gets looked at once.
        for resource in RESOURCES:
            for obj in self.ctx.lower_deps[resource].items():
                self.queue.add(f"{resource}/{self.ctx.upper_key(obj)}")
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
