"""Pods of the virtual node: copies down, status up, deletion like a kubelet.

One work queue keyed ``namespace/name`` is fed by the upper pods bound to
this node and by the lower copies this node owns. ``reconcile`` reads both
caches and is level-based and idempotent, so a restart, a missed event or a
crash mid-sync converges to exactly one lower copy per upper pod:

- no upper pod (force-deleted, or collected): delete our lower copy at once;
- upper pod terminating: delete the lower copy with the same grace period,
  again with a shorter one if the user shortens it, and once it is gone (or
  the name is held by a pod that is not ours) remove the upper pod, as a
  kubelet does;
- DaemonSet pods are accepted without a copy (see ``_accept_without_copy``);
- no lower copy: create its dependencies, then the copy. What holds the pod
  (a missing dependency, a create the lower apiserver refuses, a spec no
  lower cluster can run) shows in the upper pod's status the way a kubelet
  shows it, with one Warning Event per change, not per retry;
- lower copy vanished out of band after it ran: the upper pod turns Failed
  (and is deleted if a controller owns it), so its controller replaces it. A
  copy that had finished before it vanished hands its final status up
  instead: a completed Job pod is never failed or re-run;
- otherwise: pull status up and push allowed spec changes down, each on its
  own, so a lower admission policy refusing a spec patch never stops status.

Lower pods tensile does not own never enter the lower cache (it is filtered
by owner labels) and so are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

from tensile import conventions as c
from tensile import dependencies as deps
from tensile import origin, pod_status, timestamps, translate
from tensile.controllers.context import Context
from tensile.controllers.dependencies import REFUSED, RESOURCES, DependencyController, refused
from tensile.controllers.metrics import VirtualNodeMetrics
from tensile.controllers.namespaces import NamespaceEnsurer, NamespaceTerminatingError, is_terminating_error
from tensile.kube.client import JSON, STRATEGIC_PATCH, path
from tensile.kube.errors import ApiError
from tensile.kube.events import NORMAL, WARNING
from tensile.kube.informer import NAMESPACE, key_of, meta_of
from tensile.kube.workqueue import Workers, WorkQueue
from tensile.logs import V, fields

log = logging.getLogger("tensile.pods")

TERMINAL = ("Succeeded", "Failed")
#: First recheck of a pod held by a missing dependency; doubles up to ``HELD_MAX``. The dependency
#: appearing upstairs releases the pod at once, so the recheck is only a safety net.
HELD_RECHECK = 5.0
HELD_MAX = 300.0
#: A copy that is only being placed downstairs (created, scheduled, no container started yet) is
#: looked at again this much later, not at once: the next step (containers Running) usually follows
#: within it, and one status write upstairs carries both. Running, a failure or a deletion is not delayed.
STATUS_COALESCE = 1.0
#: Why a DaemonSet pod has no copy.
NOT_COPIED_REASON = "DaemonSetPodNotCopied"


def _phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _only_placed(lower: JSON) -> bool:
    """A live copy still Pending with no container status: being scheduled downstairs, nothing started."""
    status = lower.get("status") or {}
    return (_phase(lower) in ("", "Pending") and not meta_of(lower).get("deletionTimestamp")
            and not status.get("containerStatuses") and not status.get("initContainerStatuses")
            and all(cond.get("status") != "False" for cond in status.get("conditions") or []))


def _api_message(exc: ApiError) -> str:
    return str(exc.body.get("message") or exc.message)


class PodController:
    def __init__(self, ctx: Context, deps_ctl: DependencyController, namespaces: NamespaceEnsurer) -> None:
        self.ctx = ctx
        self.deps = deps_ctl
        self.namespaces = namespaces
        self.queue = WorkQueue("pods")
        ctx.retry_failed_on_reconnect(self.queue)
        self.workers = Workers(self.queue, self.reconcile, ctx.config.pod_workers, self._on_error)
        #: upper uid -> topic -> the (reason, message) last reported in a Warning Event.
        self._reported: dict[str, dict[str, tuple[str, str]]] = {}
        #: pod key -> how often it was held in a row (for the recheck backoff).
        self._held: dict[str, int] = {}
        #: pod key -> the last state of a lower copy that finished and was then deleted.
        self._final: TTLCache[str, JSON] = TTLCache(maxsize=100_000, ttl=3600)
        #: pod keys whose lower copy the lower cache saw deleted (and not created again since):
        #: their absence from the cache is a fact, not lag, and needs no confirming GET.
        self._gone: set[str] = set()
        ctx.upper_pods.add_handler(self._on_upper)
        ctx.lower_pods.add_handler(self._on_lower)
        ctx.lower_namespaces.add_handler(self._on_namespace)
        # A dependency appearing upstairs releases pods held for it.
        for resource in RESOURCES:
            if resource in ctx.upper_deps:
                ctx.upper_deps[resource].add_handler(self._dependency_handler(resource))

    @property
    def m(self) -> VirtualNodeMetrics:
        return self.ctx.metrics

    @property
    def cluster(self) -> str:
        return self.ctx.config.cluster_id

    # --- event handlers ------------------------------------------------------------------------

    def _on_upper(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = key_of(obj)
        if new is None:
            self._reported.pop(str(meta_of(obj).get("uid", "")), None)
            self._gone.discard(key)
            self.m.forget(key)
        elif old is None and self.ctx.upper_pods.is_synced:
            self.m.bound(key)  # bound to this node just now (not found in the first list)
        self.queue.add(key)

    def _on_lower(self, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        if obj is None:
            return
        key = self.ctx.upper_key(obj)
        if new is None and old is not None and (old.get("status") or {}).get("phase") in TERMINAL:
            self._final[key] = old
        if new is None:
            if self.ctx.upper_pods.get(key) is not None:  # else nothing will discard it: no leak
                self._gone.add(key)
        else:
            self._gone.discard(key)
        if new is not None and _phase(new) == "Running" and (old is None or _phase(old) != "Running"):
            self.m.lower_running(key)
        if new is not None and _only_placed(new):
            self.queue.add_after(key, STATUS_COALESCE)
            return
        self.queue.add(key)

    def _on_namespace(self, old: JSON | None, new: JSON | None) -> None:
        if new is None and old is not None:
            upper_ns = self.ctx.owner.namespaces.upper_of_namespace(old)
            for pod in self.ctx.upper_pods.by_index(NAMESPACE, upper_ns):
                self.queue.add(key_of(pod))

    def _dependency_handler(self, resource: str) -> Callable[[JSON | None, JSON | None], None]:
        def on_dependency(old: JSON | None, new: JSON | None) -> None:
            """A dependency appeared or changed upstairs: release the pods held for it (found by index, not
            by scan). A change matters too: a copy the lower cluster refused may be accepted now."""
            if new is None:
                return
            for source in self.deps.referrers.get(f"{resource}/{key_of(new)}", ()):
                side, _, key = source.partition(":")
                if side == "upper" and self.ctx.lower_pods.get(self.ctx.lower_key(key)) is None:
                    self.queue.add(key)
        return on_dependency

    def _on_error(self, key: str, exc: BaseException) -> None:
        log.warning("pod sync failed: %s", exc, extra=fields(key, cluster=self.cluster))
        upper = self.ctx.upper_pods.get(key)
        # The queue counted this failure already: 1 is the first. Then the 3rd and the 10th.
        if upper is not None and self.queue.failures(key) in (1, 3, 10):
            self.ctx.recorder.event(upper, WARNING, "ProviderSyncFailed", f"tensile: {exc}")

    def _warn_once(self, upper: JSON, topic: str, reason: str, message: str) -> None:
        """A Warning Event when what is wrong about ``topic`` changes, not on every retry."""
        topics = self._reported.setdefault(str(meta_of(upper).get("uid", "")), {})
        if topics.get(topic) == (reason, message):
            return
        topics[topic] = (reason, message)
        self.ctx.recorder.event(upper, WARNING, reason, message)
        log.warning("%s: %s", reason, message, extra=fields(key_of(upper), cluster=self.cluster))

    def _not_leading(self, key: str, what: str, exc: ApiError) -> bool:
        """True when ``exc`` is the leader fence holding a write back, not a lower cluster refusing it.

        Then this replica does not lead (or stopped leading mid-item): the write is not its job, so
        it says nothing upstairs (a follower cannot write Events anyway, and a Warning would blame
        the lower cluster for nothing); the work queue looks at the key again once it leads.
        """
        if not exc.not_leader:
            return False
        log.debug("%s was not sent: this replica does not lead", what, extra=fields(key, cluster=self.cluster))
        return True

    def _resolved(self, upper: JSON, *topics: str) -> None:
        uid = str(meta_of(upper).get("uid", ""))
        reported = self._reported.get(uid)
        if reported is None:
            return
        for topic in topics:
            reported.pop(topic, None)
        if not reported:
            del self._reported[uid]

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        upper = self.ctx.upper_pods.get(key)
        lower = self.ctx.lower_pods.get(self.ctx.lower_key(key))
        log.log(V(5), "reconciling pod", extra=fields(key, cluster=self.cluster, upper=upper is not None,
                                                       lower=lower is not None))
        if upper is None:
            self._held.pop(key, None)
            self._final.pop(key, None)
            if lower is not None and not meta_of(lower).get("deletionTimestamp"):
                # Removed without waiting for its copy (a force delete, PodGC): the copy goes at once too.
                await self._delete_lower(key, lower, grace=0, reason="upper pod is gone")
            return None
        lower_uid = (meta_of(lower).get("annotations") or {}).get(c.UPPER_UID_ANNOTATION)
        if lower is not None and lower_uid != meta_of(upper).get("uid"):
            # Same name, new upper pod (StatefulSet replaces pods like that): replace the copy.
            if not meta_of(lower).get("deletionTimestamp"):
                await self._delete_lower(key, lower, grace=0, reason="lower copy belongs to an older upper pod")
            return None
        if meta_of(upper).get("deletionTimestamp"):
            return await self._terminate(key, upper, lower)
        if translate.is_daemonset_pod(upper):
            await self._accept_without_copy(key, upper)
            return None
        if lower is None:
            return await self._ensure_lower(key, upper)
        self._held.pop(key, None)
        errors: list[ApiError] = []
        for step in (self._update_status, self._update_lower, self._update_ephemeral):
            try:
                await step(key, upper, lower)
            except ApiError as exc:
                errors.append(exc)
        self._report_lower_problem(upper, lower)
        retryable = [e for e in errors if e.status not in REFUSED]
        if retryable:
            raise retryable[0]
        if errors:
            # Refused by the lower cluster (an admission policy): a Warning said so; the same request
            # will be refused again until someone changes something, so look again slowly.
            return self._held_delay(key)
        return None

    def _lower_path(self, key: str, subresource: str | None = None) -> str:
        """The API path of the lower copy of upper pod ``key`` (in its mapped namespace)."""
        ns, name = key.split("/", 1)
        return path("pods", self.ctx.lower_ns(ns), name, subresource)

    async def _delete_lower(self, key: str, lower: JSON, grace: int | None, reason: str) -> None:
        body: dict[str, Any] = {"preconditions": {"uid": meta_of(lower).get("uid")}}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            with self.m.pod_write("delete_lower"):
                await self.ctx.lower.delete(self._lower_path(key), body)
            log.info("deleted lower pod: %s", reason, extra=fields(key, cluster=self.cluster, grace=grace))
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    async def _terminate(self, key: str, upper: JSON, lower: JSON | None) -> float | None:
        if lower is not None:
            grace = meta_of(upper).get("deletionGracePeriodSeconds")
            lower_grace = meta_of(lower).get("deletionGracePeriodSeconds")
            if not meta_of(lower).get("deletionTimestamp"):
                await self._delete_lower(key, lower, grace=grace, reason="upper pod is terminating")
                self.ctx.recorder.event(upper, NORMAL, "ProviderDeleteSuccess",
                                        f"deleting the lower pod in cluster {self.cluster}")
            elif grace is not None and lower_grace is not None and grace < lower_grace:
                # `kubectl delete --grace-period=1` after a normal delete: the apiserver shortened the
                # upper grace period, and the lower copy must not outlive it.
                await self._delete_lower(key, lower, grace=grace, reason="upper grace period was shortened")
            try:
                await self._update_status(key, upper, lower)
            except ApiError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            return None
        if key not in self._gone:
            # The cache never held the copy, or still does not show it deleted: make sure it is
            # really gone, not merely missing from a lagging cache (created just now, by this process
            # or a leader before it). Once the cache saw it deleted, that is a fact: nothing creates
            # a copy again for a terminating pod.
            try:
                existing = await self.ctx.lower.get(self._lower_path(key))
                if self.ctx.owner.owns(existing):
                    return 1.0
                # The name is held by a pod that is not ours (a NameConflict); ours never existed.
            except ApiError as exc:
                if not exc.not_found:
                    raise
        await self._remove_upper(key, upper)
        log.info("removed upper pod after its lower copy was gone", extra=fields(key, cluster=self.cluster))
        return None

    async def _remove_upper(self, key: str, upper: JSON) -> None:
        ns, name = key.split("/", 1)
        try:
            with self.m.pod_write("delete_upper"):
                await self.ctx.upper.delete(path("pods", ns, name), {
                    "gracePeriodSeconds": 0, "preconditions": {"uid": meta_of(upper).get("uid")},
                })
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    def _ran_before(self, upper: JSON) -> bool:
        """The upper pod shows status that came from a lower copy."""
        status = upper.get("status") or {}
        return bool(status.get("hostIP")) and not any(
            (cs.get("state") or {}).get("waiting", {}).get("reason") in (pod_status.CONFIG_ERROR,
                                                                         pod_status.CREATE_ERROR)
            for cs in status.get("containerStatuses") or [])

    async def _write_status(self, key: str, upper: JSON, desired: JSON) -> None:
        # Conditions are replaced whole by a merge patch. Where someone else writes conditions too
        # (readiness gates, DisruptionTarget), the patch is pinned to the revision it was computed
        # from, so theirs is never lost; elsewhere pinning would only add conflicts.
        shared = any(cond.get("type") not in (*pod_status.KUBELET_CONDITIONS, pod_status.SCHEDULED,
                                               c.LOWER_POD_CONDITION)
                     for cond in (upper.get("status") or {}).get("conditions") or [])
        revision = meta_of(upper).get("resourceVersion") if shared or pod_status.readiness_gates(upper) else None
        patch = pod_status.status_patch(upper.get("status") or {}, desired, revision)
        if patch is None:
            return
        ns, name = key.split("/", 1)
        with self.m.pod_write("status"):
            await self.ctx.upper.patch(path("pods", ns, name, "status"), patch)
        if desired.get("phase") == "Running":
            self.m.upper_running(key)
        log.log(V(4), "wrote upper pod status", extra=fields(key, cluster=self.cluster, phase=desired.get("phase"),
                                                               fields=sorted(patch.get("status") or {})))

    async def _hold(self, key: str, upper: JSON, reason: str, message: str, event_reason: str) -> None:
        """Show the pod as a kubelet shows one it cannot start, and say why once."""
        self._warn_once(upper, "held", event_reason, message)
        status = pod_status.held_status(upper, self.ctx.config.node_ip, reason, message, timestamps.rfc3339())
        await self._write_status(key, upper, status)

    def _held_delay(self, key: str, cap: float = HELD_MAX) -> float:
        n = self._held.get(key, 0)
        self._held[key] = n + 1
        return float(min(cap, HELD_RECHECK * 2**n))

    async def _accept_without_copy(self, key: str, upper: JSON) -> None:
        """A DaemonSet pod: accepted and reported Ready, never copied.

        A DaemonSet runs one pod per *node*; a virtual node is a whole cluster, whose own nodes run
        its own DaemonSets. Copying the pod would run one more instance on some lower node. Leaving it
        Pending or Failed would block the DaemonSet's rolling update forever (the unavailable pod
        uses up maxUnavailable) or make its controller recreate it in a loop. So the pod is Ready
        with no IP (no Service sends traffic to it), its containers wait with the reason, and one
        Warning Event says so. The README shows how to keep DaemonSets off virtual nodes.
        """
        message = (f"DaemonSet pods are not copied to lower cluster {self.cluster}: the virtual node stands for a "
                   "whole cluster, which runs its own DaemonSets. Keep DaemonSets off virtual nodes with a node "
                   f"affinity {c.VIRTUAL_NODE_TYPE_LABEL} NotIn [{c.VIRTUAL_NODE_TYPE_VALUE}].")
        self._warn_once(upper, "held", NOT_COPIED_REASON, message)
        status = pod_status.not_copied_status(upper, self.ctx.config.node_ip, NOT_COPIED_REASON, message,
                                              timestamps.rfc3339())
        await self._write_status(key, upper, status)

    async def _ensure_lower(self, key: str, upper: JSON) -> float | None:
        ns = key.split("/", 1)[0]
        if (upper.get("status") or {}).get("phase") in TERMINAL:
            return None
        final = self._final.get(key)
        if final is not None and (meta_of(final).get("annotations") or {}).get(
                c.UPPER_UID_ANNOTATION) == meta_of(upper).get("uid"):
            # The copy finished, then vanished before its end was written up: hand up the end.
            await self._update_status(key, upper, final)
            return None
        if self._ran_before(upper):
            try:
                lower = await self.ctx.lower.get(self._lower_path(key))
            except ApiError as exc:
                if not exc.not_found:
                    raise
                await self._fail_upper(key, upper)
                return None
            if self.ctx.owner.owns(lower):
                return 1.0  # the cache has not caught up yet
        unsupported = translate.unsupported_reason(upper)
        if unsupported is not None:
            await self._hold(key, upper, pod_status.CREATE_ERROR, unsupported, "UnsupportedPodSpec")
            return None  # retrying cannot help; an update of the pod requeues it
        loop = self._loop_reason(upper)
        if loop is not None:
            await self._hold(key, upper, pod_status.CREATE_ERROR, loop, "OriginLoop")
            return None  # its chain never changes; deleting the pod is the way out
        try:
            desired = self._desired(upper)
        except ValueError as exc:
            await self._hold(key, upper, pod_status.CREATE_ERROR, str(exc), "InvalidClusterSelector")
            return None
        if await self._ensure_dependencies(key, upper, desired):
            return self._held_delay(key)
        try:
            await self.namespaces.ensure(ns)
        except NamespaceTerminatingError as exc:
            log.info("%s", exc, extra=fields(key, cluster=self.cluster))
            return 2.0
        self._gone.discard(key)  # a copy again: its deletion is no longer what the cache last showed
        try:
            with self.m.pod_write("create"):
                await self.ctx.lower.create(path("pods", self.ctx.lower_ns(ns)), desired)
        except ApiError as exc:
            return await self._create_failed(key, upper, exc)
        self.m.created(key)
        self._held.pop(key, None)
        self._resolved(upper, "held", "create")
        self.ctx.recorder.event(upper, NORMAL, "ProviderCreateSuccess", f"created pod in lower cluster {self.cluster}")
        log.info("created lower pod", extra=fields(key, cluster=self.cluster))
        return None

    def _desired(self, upper: JSON) -> JSON:
        return translate.lower_pod(upper, self.ctx.owner, self.ctx.upper_only_keys, self.ctx.pool)

    def _loop_reason(self, upper: JSON) -> str | None:
        """Why copying ``upper`` would send it round a loop (its chain holds the lower cluster); None: it would not."""
        return origin.refusal(upper, self.ctx.config.node_name, self.ctx.owner.lower_cluster)

    async def _create_failed(self, key: str, upper: JSON, exc: ApiError) -> float | None:
        if exc.already_exists:
            existing = await self.ctx.lower.get(self._lower_path(key))
            if not self.ctx.owner.owns(existing):
                msg = (f"pod {self.ctx.lower_key(key)} already exists in lower cluster {self.cluster} and is not "
                       "managed by this virtual node; tensile will not touch it")
                await self._hold(key, upper, pod_status.CREATE_ERROR, msg, "NameConflict")
                return self._held_delay(key, cap=60.0)
            return 1.0
        if exc.not_found or is_terminating_error(exc):
            return 2.0  # the lower namespace was deleted meanwhile; it is made again once gone
        if self._not_leading(key, "the copy", exc):
            raise exc
        message = f"lower cluster {self.cluster} refused the pod: {_api_message(exc)}"
        if exc.status in (400, 422):
            # Invalid there: the same request can never succeed. Held until the pod changes.
            await self._hold(key, upper, pod_status.CREATE_ERROR, message, "ProviderCreateFailed")
            return None
        if exc.status == 403:
            # Admission (quota, policy, a missing RuntimeClass): may change, so look again, slowly.
            await self._hold(key, upper, pod_status.CREATE_ERROR, message, "ProviderCreateFailed")
            return self._held_delay(key)
        self._warn_once(upper, "create", "ProviderCreateFailed", message)
        raise exc

    async def _ensure_dependencies(self, key: str, upper: JSON, desired: JSON) -> bool:
        """Create what the pod needs; True when the pod must wait (its status and an Event say why)."""
        problems: list[tuple[str, str]] = []
        for ref in deps.pod_dependencies(desired, namespace=key.split("/", 1)[0]):
            kind = ref.resource[:-1]  # "configmap", "secret": the kubelet's wording
            try:
                result = await self.deps.sync(ref)
            except ApiError as exc:
                if not refused(exc):
                    raise
                # Refused downstairs (annotations that leave no room for tensile's, a policy): the
                # same copy is refused until something changes; a change of the object releases the pod.
                problems.append(("DependencyRefused", f'lower cluster {self.cluster} refused the copy of {kind} '
                                                      f'"{ref.name}": {_api_message(exc)}'))
                continue
            if result == "ok":
                continue
            if result == "missing" and ref.optional:
                reason = pod_status.REASON_OPTIONAL.get(ref.resource, "OptionalDependencyNotFound")
                self._warn_once(upper, f"optional:{ref.key}", reason, f'{kind} "{ref.name}" not found')
                continue
            if result == "missing":
                reason = pod_status.REASON_MANDATORY.get(ref.resource, "DependencyMissing")
                problems.append((reason, f'{kind} "{ref.name}" not found'))
            else:
                problems.append(("DependencyConflict",
                                 self.deps.copies.conflicts.get(ref.key, f"{ref.resource} {ref.name} conflicts")))
        if not problems:
            return False
        message = "; ".join(msg for _, msg in problems)
        await self._hold(key, upper, pod_status.CONFIG_ERROR, message, problems[0][0])
        return True

    async def _fail_upper(self, key: str, upper: JSON) -> None:
        ns, name = key.split("/", 1)
        reason = "LowerPodDeleted"
        message = f"the pod's copy in lower cluster {self.cluster} was deleted or evicted out of band"
        status = pod_status.failed_status(upper, reason, message)
        with self.m.pod_write("fail_upper"):
            await self.ctx.upper.patch(path("pods", ns, name, "status"), {"status": status})
        self.ctx.recorder.event(upper, WARNING, reason, message)
        log.warning(message, extra=fields(key, cluster=self.cluster))
        owners = meta_of(upper).get("ownerReferences") or []
        if any(o.get("controller") for o in owners):
            await self._remove_upper(key, upper)

    async def _update_lower(self, key: str, upper: JSON, lower: JSON) -> None:
        if meta_of(lower).get("deletionTimestamp"):
            return
        try:
            desired = self._desired(upper)
        except ValueError:
            return
        patch = translate.pod_update_patch(desired, lower)
        if patch is None:
            self._resolved(upper, "update")
            return
        try:
            with self.m.pod_write("spec"):
                await self.ctx.lower.patch(self._lower_path(key), patch, content_type=STRATEGIC_PATCH)
        except ApiError as exc:
            if self._not_leading(key, "the update", exc):
                raise
            self._warn_once(upper, "update", "ProviderUpdateFailed",
                            f"lower cluster {self.cluster} refused the update: {_api_message(exc)}")
            raise
        self._resolved(upper, "update")
        self.ctx.recorder.event(upper, NORMAL, "ProviderUpdateSuccess",
                                f"updated the pod in lower cluster {self.cluster}")
        log.info("updated lower pod", extra=fields(key, cluster=self.cluster, fields=sorted(patch)))

    async def _update_ephemeral(self, key: str, upper: JSON, lower: JSON) -> None:
        """``kubectl debug`` upstairs adds ephemeral containers; the copy gets them too."""
        if meta_of(lower).get("deletionTimestamp"):
            return
        patch = translate.ephemeral_containers_patch(upper, lower)
        if patch is None:
            return
        try:
            with self.m.pod_write("ephemeral"):
                await self.ctx.lower.patch(self._lower_path(key, "ephemeralcontainers"), patch,
                                           content_type=STRATEGIC_PATCH)
        except ApiError as exc:
            if self._not_leading(key, "the ephemeral containers", exc):
                raise
            self._warn_once(upper, "ephemeral", "ProviderUpdateFailed",
                            f"lower cluster {self.cluster} refused the ephemeral containers: {_api_message(exc)}")
            raise
        log.info("added ephemeral containers to lower pod", extra=fields(key, cluster=self.cluster))

    async def _update_status(self, key: str, upper: JSON, lower: JSON) -> None:
        cfg = self.ctx.config
        desired = pod_status.upper_status(lower, upper, cfg.node_ip, flat_network=cfg.flat_network,
                                          now=timestamps.rfc3339())
        await self._write_status(key, upper, desired)

    def _report_lower_problem(self, upper: JSON, lower: JSON) -> None:
        problem = pod_status.lower_problem(lower)
        if problem is None:
            self._resolved(upper, "lower")
            return
        reason, message = problem
        self._warn_once(upper, "lower", reason, f"lower cluster {self.cluster}: {message}")

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for obj in self.ctx.upper_pods.items():
            self.queue.add(key_of(obj))
        for obj in self.ctx.lower_pods.items():
            self.queue.add(self.ctx.upper_key(obj))
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
