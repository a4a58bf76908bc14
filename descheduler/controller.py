"""The descheduler's pass: find pods a lower cluster will not start, and move them, safely.

One pass (every ``--interval``) reads only caches: Pending pods, virtual Nodes and the
avoidance records. For each candidate (``policy.candidate``) it checks, in order:

1. not moved within the cooldown (a pod, or a bare pod's recreation, is moved once per cooldown);
2. another virtual node can take it (``policy.other_targets``), else it stays, with one Event;
3. the pass's budget (per virtual node and in all);

then moves it. A controller-owned pod gets an avoidance record for its owner (so the
webhook keeps the replacement off the node) and is evicted through the Eviction API, so
PodDisruptionBudgets hold (a 429 is an Event, not a retry storm). A bare pod is recreated:
its manifest is first saved in a backup ConfigMap, the pod deleted, and a new one with the
same name, labels, annotations and spec (plus the avoidance) created; the backup is removed
only after the create succeeded, and an Event names it when it did not. ``dry_run``
writes nothing at all and logs what it would do.

What it did is kept in the cluster, not in memory, so a restart (a crash, a new leader) neither
repeats a move nor leaves one half done:

- an owner's record lists, per avoided node, the pods of the owner that were already there
  (``avoidance.present``): those are still moved after a restart (the one whose eviction the
  restart interrupted, and its siblings), while a replacement that came back is not;
- a recreated bare pod carries its own avoidance annotation: while it is active the pod has
  moved within the cooldown and is not moved again;
- a backup is also the move's journal: each pass first finishes the moves that backups left
  behind (:meth:`Descheduler.recover`). The pod gone and not recreated: it is created from the
  backup. The pod recreated, or never deleted: the backup is removed. The pod still being
  deleted: the next pass looks again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import json
import logging
import time
from typing import Any

from descheduler import policy
from descheduler.policy import Budget, Candidate, Options
from tensile import avoidance, timestamps
from tensile import conventions as c
from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.events import EventRecorder
from tensile.kube.informer import Informer

log = logging.getLogger("tensile.descheduler")

BACKUP_PREFIX = "tensile-backup-"
BACKUP_LABEL = c.PREFIX + "pod-backup"
RESCHEDULED_FROM = c.PREFIX + "rescheduled-from"
#: A bare pod's own avoidance (it has no owner to hold a record): node -> expiry, JSON.
AVOID_ANNOTATION = c.PREFIX + "avoid"
GONE_TIMEOUT = 120.0
#: Keys of a backup ConfigMap: the original pod (for people), its UID, and the pod to create (for recovery).
BACKUP_POD_KEY = "pod"
BACKUP_UID_KEY = "uid"
BACKUP_RECREATE_KEY = "recreate"


@dataclasses.dataclass
class Outcome:
    pod: str
    node: str
    action: str  # evicted, recreated, blocked, stayed, rate_limited, would_evict, would_recreate, failed
    reason: str
    detail: str = ""


def _object(pod: JSON) -> JSON:
    return {**pod, "apiVersion": "v1", "kind": "Pod"}


def _owner_object(pod: JSON, owner: JSON) -> JSON:
    meta = pod.get("metadata") or {}
    return {"apiVersion": owner.get("apiVersion", ""), "kind": owner.get("kind", ""),
            "metadata": {"name": owner.get("name", ""), "namespace": meta.get("namespace", ""),
                         "uid": owner.get("uid", "")}}


def bare_record(pod: JSON) -> JSON | None:
    """A bare pod's own avoidance, read like an owner's record."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(AVOID_ANNOTATION)
    return {"data": {avoidance.AVOID_KEY: raw}} if isinstance(raw, str) else None


def recreated(pod: JSON, avoid_until: dict[str, str], from_node: str) -> JSON:
    """The bare pod's new manifest: same name, labels, annotations and spec, unbound, avoiding."""
    meta = pod.get("metadata") or {}
    spec = {k: v for k, v in (pod.get("spec") or {}).items() if k != "nodeName"}
    annotations = {**(meta.get("annotations") or {}), AVOID_ANNOTATION: json.dumps(avoid_until, sort_keys=True),
                   RESCHEDULED_FROM: from_node}
    new_meta = {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels", "finalizers") if k in meta}
    new_meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": new_meta, "spec": avoidance.avoiding(spec, avoid_until)}


def backup_manifest(pod: JSON, recreate: JSON | None = None) -> JSON:
    """The backup of a bare pod about to be recreated: its manifest for people (``pod``), and for
    :meth:`Descheduler.recover` its UID and the manifest of the pod to create (``recreate``)."""
    meta = pod.get("metadata") or {}
    original = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
                "spec": {k: v for k, v in (pod.get("spec") or {}).items() if k != "nodeName"}}
    data = {BACKUP_POD_KEY: json.dumps(original, indent=2, sort_keys=True), BACKUP_UID_KEY: str(meta.get("uid", ""))}
    if recreate is not None:
        data[BACKUP_RECREATE_KEY] = json.dumps(recreate, sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{BACKUP_PREFIX}{meta.get('uid', '')}"[:253], "namespace": meta.get("namespace"),
                         "labels": {BACKUP_LABEL: "true", c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}},
            "data": data}


def _backup_pod(backup: JSON) -> tuple[JSON, str, JSON] | None:
    """(the original pod, its UID, the pod to create) from a backup; None when it does not parse."""
    data = backup.get("data") or {}
    try:
        original = json.loads(data.get(BACKUP_POD_KEY) or "")
        to_create = json.loads(data[BACKUP_RECREATE_KEY]) if BACKUP_RECREATE_KEY in data else original
    except (ValueError, TypeError):
        return None
    if not isinstance(original, dict) or not isinstance(to_create, dict):
        return None
    name = str((backup.get("metadata") or {}).get("name") or "")
    uid = str(data.get(BACKUP_UID_KEY) or name.removeprefix(BACKUP_PREFIX))
    if not (original.get("metadata") or {}).get("name") or not uid:
        return None
    return original, uid, to_create


class Descheduler:
    def __init__(self, kube: Kube, options: Options, *, dry_run: bool = False,
                 recorder: EventRecorder | None = None) -> None:
        self.kube = kube
        self.options = options
        self.dry_run = dry_run
        self.recorder = recorder
        self.pods = Informer(kube, path("pods"), field_selector="status.phase=Pending", name="pending-pods")
        self.nodes = Informer(kube, path("nodes"),
                              label_selector=f"{c.VIRTUAL_NODE_TYPE_LABEL}={c.VIRTUAL_NODE_TYPE_VALUE}",
                              name="virtual-nodes")
        self.records = Informer(kube, path("configmaps"), label_selector=f"{avoidance.RECORD_LABEL}=true",
                                name="avoidance-records")
        self.budgets = Informer(kube, path("poddisruptionbudgets", group_version="policy/v1"),
                                name="poddisruptionbudgets")
        self.backups = Informer(kube, path("configmaps"), label_selector=f"{BACKUP_LABEL}=true", name="pod-backups")
        #: pod key (or a bare pod's name) -> when it was last moved; also when it was told to stay.
        self.moved: dict[str, float] = {}
        self.stayed: dict[str, float] = {}
        self.passes = 0
        self.beat = time.monotonic()

    def informers(self) -> list[Informer]:
        return [self.pods, self.nodes, self.records, self.budgets, self.backups]

    def _event(self, obj: JSON, etype: str, reason: str, message: str) -> None:
        if self.recorder is not None and not self.dry_run:
            self.recorder.event(obj, etype, reason, message)

    def _expire(self, memory: dict[str, float], now: float) -> None:
        for key in [k for k, at in memory.items() if now - at >= self.options.cooldown]:
            del memory[key]

    async def run_once(self, now: datetime.datetime | None = None) -> list[Outcome]:
        now = now or timestamps.utc_now()
        clock = time.monotonic()
        self._expire(self.moved, clock)
        self._expire(self.stayed, clock)
        nodes = {n["metadata"]["name"]: n for n in self.nodes.items() if policy.is_virtual_node(n)}
        budget = Budget(self.options)
        outcomes: list[Outcome] = await self.recover(clock)
        for pod in sorted(self.pods.items(), key=lambda p: (p["metadata"].get("namespace"), p["metadata"]["name"])):
            found = policy.candidate(pod, nodes, now, self.options)
            if found is None:
                continue
            outcome = await self._consider(found, nodes, budget, now, clock)
            if outcome is not None:
                outcomes.append(outcome)
        self.passes += 1
        self.beat = time.monotonic()
        return outcomes

    async def _consider(self, found: Candidate, nodes: dict[str, JSON], budget: Budget, now: datetime.datetime,
                        clock: float) -> Outcome | None:
        pod, node = found.pod, found.node
        owner = policy.controller_of(pod)
        ns = pod["metadata"].get("namespace", "")
        record = self.records.get(f"{ns}/{avoidance.record_name(str(owner.get('uid')))}") if owner else None
        if owner is None:
            record = bare_record(pod)
        avoid = avoidance.active(record, now)
        uid = str(pod["metadata"].get("uid", ""))
        if owner is not None and node in avoid and uid not in avoidance.present(record, node):
            # A pod of this owner was moved away from this node within the cooldown and this one came
            # back: moving it too would only bounce (the webhook applies records to new pods). The pods
            # that were there before (siblings, or one whose eviction a restart cut short) still move.
            return self._stay(found, clock, f"a pod of {owner.get('kind')} {owner.get('name')} was already moved "
                                            f"away from {node} within the cooldown; staying on {node}")
        targets = policy.other_targets(pod, nodes, avoid)
        if not targets:
            return self._stay(found, clock, f"no other virtual node can take this pod; staying on {node} "
                                            f"({found.reason}: {found.message})")
        if found.key in self.moved or (owner is None and avoid):
            # A bare pod's active avoidance means the descheduler recreated it within the cooldown: the
            # annotation remembers it across restarts, the map only within this process.
            return self._stay(found, clock, f"moved once within the cooldown already; staying on {node} "
                                            f"({found.reason}: {found.message})")
        budget_object = policy.blocking_budget(pod, self.budgets.items())
        if budget_object is not None:
            name = budget_object["metadata"]["name"]
            if found.key not in self.stayed:
                self.stayed[found.key] = clock
                self._event(_object(pod), "Warning", "EvictionBlocked",
                            f"not rescheduled away from {node}: PodDisruptionBudget {name} allows no disruption "
                            "now (the Eviction API would let a Pending pod through; the descheduler honours "
                            "the budget)")
            return Outcome(found.key, node, "blocked", found.reason, f"PodDisruptionBudget {name}")
        if not budget.allows(node):
            return Outcome(found.key, node, "rate_limited", found.reason)
        budget.spend(node)
        cluster = ((nodes.get(node) or {}).get("metadata") or {}).get("labels", {}).get(c.CLUSTER_ID_LABEL, node)
        why = f"Rescheduled away from {node}: {found.reason} in lower cluster {cluster}: {found.message}".rstrip(": ")
        if self.dry_run:
            action = "would_evict" if owner else "would_recreate"
            log.info("dry run: would %s %s (%s); candidates: %s", action.split("_")[1], found.key, why,
                     ", ".join(targets))
            self.moved[found.key] = clock
            return Outcome(found.key, node, action, found.reason)
        self.moved[found.key] = clock
        until = now + datetime.timedelta(seconds=self.options.cooldown)
        if owner is not None:
            return await self._evict(found, owner, record, until, now, why)
        return await self._recreate(found, avoidance.with_node(record, node, until, now), why)

    def _stay(self, found: Candidate, clock: float, message: str) -> Outcome:
        """Leave the pod where it is, saying why once per cooldown."""
        if found.key not in self.stayed:
            self.stayed[found.key] = clock
            self._event(_object(found.pod), "Warning", "NotRescheduled", message)
            log.info("%s stays: %s", found.key, message)
        return Outcome(found.key, found.node, "stayed", found.reason)

    async def _evict(self, found: Candidate, owner: JSON, record: JSON | None, until: datetime.datetime,
                     now: datetime.datetime, why: str) -> Outcome:
        pod = found.pod
        meta = pod["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        here = self._owned_on(owner, ns, found.node) | {str(meta.get("uid", ""))}

        def record_for(current: JSON | None) -> JSON:
            return avoidance.manifest(ns, owner, avoidance.with_node(current, found.node, until, now),
                                      avoidance.with_present(current, found.node, here, now))

        body = record_for(record)
        record_path = path("configmaps", ns, body["metadata"]["name"])
        try:
            if record is None:
                try:
                    await self.kube.create(path("configmaps", ns), body)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    # Made since the cache last heard (another pod of the owner this pass): merge into it.
                    current = await self.kube.get(record_path)
                    await self.kube.patch(record_path, {"data": record_for(current)["data"]})
            else:
                await self.kube.patch(record_path, {"data": body["data"]})
            await self.kube.create(path("pods", ns, name, "eviction"), {
                "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns},
                "deleteOptions": {"preconditions": {"uid": meta.get("uid")}}})
        except ApiError as exc:
            if exc.status == 429:
                self._event(_object(pod), "Warning", "EvictionBlocked",
                            f"not rescheduled away from {found.node}: a PodDisruptionBudget does not allow it now: "
                            f"{exc}")
                return Outcome(found.key, found.node, "blocked", found.reason, str(exc))
            self.moved.pop(found.key, None)
            log.warning("evicting %s failed: %s", found.key, exc)
            return Outcome(found.key, found.node, "failed", found.reason, str(exc))
        self._event(_object(pod), "Normal", "Rescheduled", why)
        self._event(_owner_object(pod, owner), "Normal", "Rescheduled", f"pod {name}: {why}")
        log.info("evicted %s from %s: %s", found.key, found.node, why)
        return Outcome(found.key, found.node, "evicted", found.reason)

    def _owned_on(self, owner: JSON, ns: str, node: str) -> set[str]:
        """UIDs of the Pending pods of ``owner`` bound to ``node``, as the cache has them."""
        uid = owner.get("uid")
        return {str(p["metadata"].get("uid", "")) for p in self.pods.items()
                if p["metadata"].get("namespace") == ns and (p.get("spec") or {}).get("nodeName") == node
                and (policy.controller_of(p) or {}).get("uid") == uid}

    async def _gone(self, ns: str, name: str, uid: str) -> bool:
        deadline = time.monotonic() + GONE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                current = await self.kube.get(path("pods", ns, name))
            except ApiError as exc:
                if exc.not_found:
                    return True
                raise
            if current.get("metadata", {}).get("uid") != uid:
                return True  # someone else already made a new one
            await asyncio.sleep(1.0)
        return False

    async def _recreate(self, found: Candidate, avoid_until: dict[str, str], why: str) -> Outcome:
        pod = found.pod
        meta = pod["metadata"]
        ns, name, uid = meta.get("namespace", ""), meta["name"], str(meta.get("uid", ""))
        replacement = recreated(pod, avoid_until, found.node)
        backup = backup_manifest(pod, replacement)
        backup_name = backup["metadata"]["name"]
        recover = (f"kubectl get configmap -n {ns} {backup_name} -o jsonpath='{{.data.pod}}' | "
                   "kubectl create -f -")
        try:
            try:
                await self.kube.create(path("configmaps", ns), backup)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                # Left by a move of this very pod that stopped before its delete: this move takes it over.
                await self.kube.patch(path("configmaps", ns, backup_name), {"data": backup["data"]})
            await self.kube.delete(path("pods", ns, name), {"kind": "DeleteOptions", "apiVersion": "v1",
                                                            "preconditions": {"uid": uid}})
            if not await self._gone(ns, name, uid):
                raise ApiError(504, "Timeout", f"pod {ns}/{name} was not gone after {GONE_TIMEOUT:.0f}s")
            await self.kube.create(path("pods", ns), replacement)
        except ApiError as exc:
            self._event(_object(pod), "Warning", "RecreateFailed",
                        f"moving the pod away from {found.node} failed ({exc}); its manifest is kept in ConfigMap "
                        f"{backup_name}: {recover}")
            log.warning("recreating %s failed, manifest kept in %s/%s: %s", found.key, ns, backup_name, exc)
            return Outcome(found.key, found.node, "failed", found.reason, str(exc))
        try:
            await self.kube.delete(path("configmaps", ns, backup_name))
        except ApiError as exc:
            log.warning("the backup %s/%s of a recreated pod stays: %s", ns, backup_name, exc)
        self._event(_object(pod), "Normal", "Rescheduled", f"{why}; recreated")
        log.info("recreated %s away from %s: %s", found.key, found.node, why)
        return Outcome(found.key, found.node, "recreated", found.reason)

    async def recover(self, clock: float | None = None) -> list[Outcome]:
        """Finish the bare-pod moves a restart interrupted, from the backups they left behind."""
        if self.dry_run:
            return []
        outcomes = []
        for backup in sorted(self.backups.items(), key=lambda b: (b["metadata"].get("namespace"),
                                                                   b["metadata"]["name"])):
            outcome = await self._recover(backup, time.monotonic() if clock is None else clock)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    async def _drop_backup(self, ns: str, name: str, why: str) -> None:
        try:
            await self.kube.delete(path("configmaps", ns, name))
        except ApiError as exc:
            if not exc.not_found:
                log.warning("the backup %s/%s stays: %s", ns, name, exc)
                return
        log.info("removed the backup %s/%s: %s", ns, name, why)

    async def _recover(self, backup: JSON, clock: float) -> Outcome | None:
        meta = backup["metadata"]
        ns, backup_name = str(meta.get("namespace", "")), str(meta["name"])
        parsed = _backup_pod(backup)
        if parsed is None:
            if f"backup:{ns}/{backup_name}" not in self.stayed:
                self.stayed[f"backup:{ns}/{backup_name}"] = clock
                log.warning("the backup %s/%s does not hold a pod manifest; left alone", ns, backup_name)
            return None
        original, uid, to_create = parsed
        name = str(original["metadata"]["name"])
        key = f"{ns}/{name}"
        try:
            current: JSON | None = await self.kube.get(path("pods", ns, name))
        except ApiError as exc:
            if not exc.not_found:
                log.warning("cannot check %s for its backup %s: %s", key, backup_name, exc)
                return None
            current = None
        if current is not None:
            current_meta = current.get("metadata") or {}
            if current_meta.get("uid") != uid:
                await self._drop_backup(ns, backup_name, f"{key} was recreated already")
            elif not current_meta.get("deletionTimestamp"):
                await self._drop_backup(ns, backup_name, f"the move of {key} stopped before its delete")
            return None  # still being deleted: the next pass finishes the move
        from_node = str(((to_create.get("metadata") or {}).get("annotations") or {}).get(RESCHEDULED_FROM, ""))
        try:
            created = await self.kube.create(path("pods", ns), to_create)
        except ApiError as exc:
            if exc.status == 409:
                return None  # someone made it meanwhile: the next pass sees a new UID and drops the backup
            if f"backup:{ns}/{backup_name}" not in self.stayed:
                self.stayed[f"backup:{ns}/{backup_name}"] = clock
                self._event(_object({**original, "metadata": {**original["metadata"], "uid": uid}}), "Warning",
                            "RecreateFailed", f"recreating the pod from its backup {backup_name} failed ({exc}); "
                            "the backup is kept and retried every pass")
                log.warning("recreating %s from its backup %s failed: %s", key, backup_name, exc)
            return Outcome(key, from_node, "failed", "Recovered", str(exc))
        self.moved[key] = clock
        await self._drop_backup(ns, backup_name, f"{key} recreated from it")
        self._event(_object(created or to_create), "Normal", "Rescheduled",
                    f"Rescheduled away from {from_node}: recreated from backup {backup_name} (the move was "
                    "interrupted between the delete and the create)")
        log.info("recreated %s from its backup %s/%s: its move was interrupted", key, ns, backup_name)
        return Outcome(key, from_node, "recreated", "Recovered")

    def expired_records(self, now: datetime.datetime) -> list[JSON]:
        """Records with no node avoided any more: to delete."""
        return [r for r in self.records.items() if not avoidance.active(r, now)]

    async def clean_records(self, now: datetime.datetime | None = None) -> int:
        if self.dry_run:
            return 0
        removed = 0
        for record in self.expired_records(now or timestamps.utc_now()):
            meta = record["metadata"]
            try:
                await self.kube.delete(path("configmaps", meta["namespace"], meta["name"]))
                removed += 1
            except ApiError as exc:
                if not exc.not_found:
                    log.warning("deleting expired avoidance record %s/%s: %s", meta["namespace"], meta["name"], exc)
        return removed


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    return counts
