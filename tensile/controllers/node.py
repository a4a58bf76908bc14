"""The virtual Node in the upper cluster: registration, Lease, status.

Acts toward the upper cluster the way a kubelet does: registers the Node,
renews its Lease in ``kube-node-lease`` every 10 s, and writes status
through ``/status`` at least every minute and whenever the lower cluster's
capacity changes (driven by the lower node and pod caches, not by polling).

Ready reflects the lower cluster: a ping (``/version``) every 10 s; once the
lower apiserver has been unreachable beyond a grace period, Ready turns
False with reason ``LowerClusterUnreachable``; it turns True again as soon
as a ping succeeds. If someone deletes the Node, it is registered again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from tensile import capacity, quantity, timestamps
from tensile import conventions as c
from tensile.controllers.context import Context
from tensile.kube.client import JSON, path
from tensile.kube.errors import ApiError
from tensile.kube.supervisor import Supervisor
from tensile.logs import V

log = logging.getLogger("tensile.node")

STATUS_DEBOUNCE = 1.0
#: A heartbeat loop that has not come round for this long (at least) is wedged.
WEDGED_AFTER = 120.0


#: Labels NodeRestriction refuses from a node's own credentials.
NODE_FORBIDDEN_LABELS = (c.ROLE_LABEL, c.MANAGED_BY_LABEL)


def node_manifest(ctx: Context, arch: str, os_name: str) -> JSON:
    cfg = ctx.config
    labels = {
        c.VIRTUAL_NODE_TYPE_LABEL: c.VIRTUAL_NODE_TYPE_VALUE,
        c.ROLE_LABEL: c.ROLE_VALUE,
        c.HOSTNAME_LABEL: cfg.node_name,
        c.OS_LABEL: os_name,
        c.ARCH_LABEL: arch,
        c.BETA_OS_LABEL: os_name,
        c.BETA_ARCH_LABEL: arch,
        c.CLUSTER_ID_LABEL: cfg.cluster_id,
        c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE,
        **cfg.node_labels,
    }
    if ctx.owner.lower_cluster:
        labels[c.LOWER_CLUSTER_LABEL] = ctx.owner.lower_cluster
    if cfg.node_credentials:
        # NodeRestriction lets a node set only kubelet labels under kubernetes.io and k8s.io.
        for key in NODE_FORBIDDEN_LABELS:
            labels.pop(key, None)
    taints = [provider_taint()] if cfg.taint else []
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels},
        "spec": {"taints": taints},
    }


def node_addresses(node_ip: str) -> list[JSON]:
    """Only an address the upper apiserver can dial as given.

    kube-apiserver tries a node's addresses in its ``--kubelet-preferred-address-types`` order,
    Hostname first by default, and does not fall back when a name does not resolve. A virtual
    node's name is not a host name, so no ``Hostname`` address is published: an IP goes in as
    ``InternalIP``, and a name the operator gave (``--node-ip=vk.example.net``) as ``Hostname``.
    """
    try:
        ipaddress.ip_address(node_ip)
    except ValueError:
        return [{"type": "Hostname", "address": node_ip}] if node_ip else []
    return [{"type": "InternalIP", "address": node_ip}]


def provider_taint() -> JSON:
    return {"key": c.PROVIDER_TAINT_KEY, "value": c.PROVIDER_TAINT_VALUE, "effect": c.PROVIDER_TAINT_EFFECT}


def merged_taints(current: list[JSON], want_provider_taint: bool) -> list[JSON]:
    """``current`` with tensile's taint present (or absent); every other taint kept as it is."""
    others = [t for t in current if t.get("key") != c.PROVIDER_TAINT_KEY]
    mine = [t for t in current if t.get("key") == c.PROVIDER_TAINT_KEY]
    if not want_provider_taint:
        return others
    wanted = provider_taint()
    if len(mine) == 1 and all(mine[0].get(k) == v for k, v in wanted.items()):
        return current
    return [*others, wanted]


def conditions(ready: bool, reason: str, message: str, previous: list[JSON]) -> list[JSON]:
    """Node conditions; lastTransitionTime only moves when a status flips."""
    now = timestamps.rfc3339()
    prev = {cond.get("type"): cond for cond in previous}
    wanted = [
        ("Ready", "True" if ready else "False", reason, message),
        ("MemoryPressure", "False", "LowerClusterHasSufficientMemory", "capacity is the lower cluster's"),
        ("DiskPressure", "False", "LowerClusterHasNoDiskPressure", "capacity is the lower cluster's"),
        ("PIDPressure", "False", "LowerClusterHasSufficientPID", "capacity is the lower cluster's"),
        ("NetworkUnavailable", "False", "RouteCreated", "network is the lower cluster's"),
    ]
    out = []
    for ctype, status, why, msg in wanted:
        old = prev.get(ctype) or {}
        transition = old.get("lastTransitionTime") if old.get("status") == status else now
        out.append({
            "type": ctype, "status": status, "reason": why, "message": msg,
            "lastHeartbeatTime": now, "lastTransitionTime": transition or now,
        })
    return out


#: The supervised loops ``start`` runs, for whoever stops them (a leader stepping down).
NODE_LOOPS = ("lease renewal", "lower ping", "node status")


class NodeController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.name = ctx.config.node_name
        self.kubelet_version = "v0.0.0"
        self.last_lower_ok = time.monotonic()
        self.lower_error = ""
        self.reachable = True
        self.node_uid = ""
        self._dirty = asyncio.Event()
        self._pushed: tuple[Any, ...] | None = None
        #: loop name -> monotonic time it last came round
        self.beats: dict[str, float] = {}
        self.last_renewed = 0.0
        #: (capacity, allocatable) as last written to the Node.
        self.published: tuple[dict[str, str], dict[str, str]] | None = None
        ctx.lower_nodes.add_handler(lambda old, new: self._dirty.set())
        for informer in ctx.lower_pods_others:  # the copies are not in the allocatable
            informer.add_handler(self._on_lower_pod)
        ctx.upper_node.add_handler(self._on_upper_node)

    # --- triggers ------------------------------------------------------------

    def _on_lower_pod(self, old: JSON | None, new: JSON | None) -> None:
        """Only pods tensile did not create change the allocatable: a burst of its own copies going
        Running (every event of a 5,000-pod burst) does not recompute the node's status."""
        before = old and (old.get("spec") or {}).get("nodeName") and not self.ctx.owner.owns(old)
        after = new and (new.get("spec") or {}).get("nodeName") and not self.ctx.owner.owns(new)
        if before or after:
            self._dirty.set()

    def _on_upper_node(self, old: JSON | None, new: JSON | None) -> None:
        if new is None and old is not None:
            log.warning("virtual node was deleted from the upper cluster; registering it again",
                        extra={"node": self.name, "cluster": self.ctx.config.cluster_id})
            self._pushed = None
            self._dirty.set()

    # --- capacity and status --------------------------------------------------------

    def _capacity(self) -> tuple[dict[str, str], dict[str, str]]:
        cap, alloc = capacity.compute_from(self.ctx.lower_nodes.items(), self.ctx.lower_usage.foreign)
        # What the lower cluster can add by autoscaling counts as there: the upper scheduler must let
        # a pod that needs it through, so the lower autoscaler sees the pod and adds the node.
        for shape in self.ctx.config.extra_capacity:
            quantity.add_into(cap, shape)
            quantity.add_into(alloc, shape)
        return quantity.format_list(cap), quantity.format_list(alloc)

    def _ready(self) -> tuple[bool, str, str]:
        down_for = time.monotonic() - self.last_lower_ok
        if not self.reachable and down_for > self.ctx.config.lower_unreachable_grace:
            return False, "LowerClusterUnreachable", (
                f"lower cluster {self.ctx.config.cluster_id} unreachable for {down_for:.0f}s: {self.lower_error}"
            )
        return True, "KubeletReady", (
            f"tensile virtual node is posting ready status; lower cluster {self.ctx.config.cluster_id} reachable"
        )

    def status(self, previous: JSON) -> JSON:
        nodes = self.ctx.lower_nodes.items()
        cap, alloc = self._capacity()
        ready, reason, message = self._ready()
        return {
            "capacity": cap,
            "allocatable": alloc,
            "conditions": conditions(ready, reason, message, previous.get("conditions") or []),
            "addresses": node_addresses(self.ctx.config.node_ip),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.ctx.config.kubelet_port}},
            "nodeInfo": {
                "architecture": capacity.node_labels_majority(nodes, c.ARCH_LABEL, "amd64"),
                "operatingSystem": capacity.node_labels_majority(nodes, c.OS_LABEL, "linux"),
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": self.kubelet_version,
                "containerRuntimeVersion": "tensile://0.1.0",
                "kernelVersion": "",
                "osImage": f"tensile virtual node for lower cluster {self.ctx.config.cluster_id}",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        }

    async def ensure_registered(self) -> JSON:
        """Create the Node, or bring its labels and taint in line; retried when the Node changed meanwhile."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(lambda e: isinstance(e, ApiError) and e.conflict), reraise=True,
        ):
            with attempt:
                return await self._register()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _register(self) -> JSON:
        nodes = self.ctx.lower_nodes.items()
        manifest = node_manifest(
            self.ctx,
            capacity.node_labels_majority(nodes, c.ARCH_LABEL, "amd64"),
            capacity.node_labels_majority(nodes, c.OS_LABEL, "linux"),
        )
        try:
            node = await self.ctx.heartbeat.get(path("nodes", name=self.name))
            labels = (node.get("metadata") or {}).get("labels") or {}
            want = manifest["metadata"]["labels"]
            current = (node.get("spec") or {}).get("taints") or []
            # NodeRestriction forbids a node to change its own taints after registration.
            taints = current if self.ctx.config.node_credentials else merged_taints(current, self.ctx.config.taint)
            if any(labels.get(k) != v for k, v in want.items()) or taints != current:
                # The patch carries the whole taint list (a merge patch replaces lists), built from
                # the current one: taints set by controllers or admins stay. resourceVersion makes a
                # concurrent change fail with 409 instead of being overwritten.
                body: JSON = {"metadata": {"labels": want, "resourceVersion": (node.get("metadata") or {}).get(
                    "resourceVersion")}}
                if taints != current:
                    body["spec"] = {"taints": taints}
                node = await self.ctx.heartbeat.patch(path("nodes", name=self.name), body)
        except ApiError as exc:
            if not exc.not_found:
                raise
            node = await self.ctx.heartbeat.create(path("nodes"), manifest)
            log.info("registered virtual node", extra={"node": self.name, "cluster": self.ctx.config.cluster_id})
        self.node_uid = (node.get("metadata") or {}).get("uid", "")
        return node

    async def push_status(self, force: bool = False) -> None:
        node = self.ctx.upper_node.get(self.name)
        if node is None:
            node = await self.ensure_registered()
        status = self.status(node.get("status") or {})
        digest = (status["capacity"], status["allocatable"], status["conditions"][0]["status"],
                  status["nodeInfo"]["kubeletVersion"], self.node_uid)
        if not force and digest == self._pushed:
            return
        await self.ctx.heartbeat.patch(path("nodes", name=self.name, subresource="status"), {"status": status})
        self._pushed = digest
        self.published = (status["capacity"], status["allocatable"])
        log.log(V(4), "pushed node status", extra={"node": self.name, "cluster": self.ctx.config.cluster_id,
                                                   "ready": status["conditions"][0]["status"]})

    async def renew_lease(self) -> None:
        lease_path = path("leases", c.NODE_LEASE_NAMESPACE, self.name, group_version="coordination.k8s.io/v1")
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.ctx.config.lease_duration,
            "renewTime": timestamps.micro(),
        }
        try:
            await self.ctx.heartbeat.patch(lease_path, {"spec": spec})
        except ApiError as exc:
            if not exc.not_found:
                raise
            owner_refs = (
                [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.node_uid}]
                if self.node_uid else []
            )
            await self.ctx.heartbeat.create(
                path("leases", c.NODE_LEASE_NAMESPACE, group_version="coordination.k8s.io/v1"),
                {"metadata": {"name": self.name, "namespace": c.NODE_LEASE_NAMESPACE, "ownerReferences": owner_refs},
                 "spec": spec},
            )

    async def ping_lower(self) -> None:
        try:
            version = await self.ctx.lower.get("/version", timeout=5)
        except ApiError as exc:
            if self.reachable:
                log.warning("lower cluster unreachable",
                            extra={"cluster": self.ctx.config.cluster_id, "error": str(exc)})
            self.reachable = False
            self.lower_error = exc.message
        else:
            if not self.reachable:
                log.info("lower cluster reachable again", extra={"cluster": self.ctx.config.cluster_id})
            self.reachable = True
            self.last_lower_ok = time.monotonic()
            self.kubelet_version = str(version.get("gitVersion") or self.kubelet_version)
        self._dirty.set()

    # --- loops ----------------------------------------------------------------------------

    async def _every(self, interval: float, what: str, fn: Any) -> None:
        while True:
            try:
                await fn()
            except ApiError as exc:
                log.warning("%s failed: %s", what, exc,
                            extra={"node": self.name, "cluster": self.ctx.config.cluster_id})
            self.beats[what] = time.monotonic()
            await asyncio.sleep(interval)

    async def _renew_and_record(self) -> None:
        await self.renew_lease()
        self.last_renewed = time.monotonic()
        log.log(V(5), "renewed the node Lease", extra={"node": self.name})

    def lease_fresh(self) -> bool:
        """The Lease was renewed within its duration: the node-lifecycle controller sees us alive."""
        return time.monotonic() - self.last_renewed < self.ctx.config.lease_duration

    async def _status_loop(self) -> None:
        last_forced = 0.0
        while True:
            timeout = max(0.0, self.ctx.config.status_interval - (time.monotonic() - last_forced))
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout)
            except TimeoutError:
                pass
            await asyncio.sleep(STATUS_DEBOUNCE)  # fold a burst of cache events into one write
            self._dirty.clear()
            force = time.monotonic() - last_forced >= self.ctx.config.status_interval
            try:
                await self.push_status(force=force)
                if force:
                    last_forced = time.monotonic()
            except ApiError as exc:
                log.warning("node status update failed: %s", exc,
                            extra={"node": self.name, "cluster": self.ctx.config.cluster_id})
                self._pushed = None
                await asyncio.sleep(1.0)
                self._dirty.set()
            self.beats["node status"] = time.monotonic()

    async def start(self, supervisor: Supervisor) -> None:
        await self.ping_lower()
        await self.ensure_registered()
        await self.push_status(force=True)
        await self._renew_and_record()
        cfg = self.ctx.config
        now = time.monotonic()
        loops = (
            ("lease renewal", cfg.lease_renew_interval,
             lambda: self._every(cfg.lease_renew_interval, "lease renewal", self._renew_and_record)),
            ("lower ping", cfg.ping_interval, lambda: self._every(cfg.ping_interval, "lower ping", self.ping_lower)),
            ("node status", cfg.status_interval, self._status_loop),
        )
        for what, interval, factory in loops:
            self.beats[what] = now
            # A loop that has not come round in several of its intervals is wedged (an await that
            # never returns); a failing one still comes round, it only logs.
            supervisor.spawn(what, factory, progress=lambda what=what: self.beats[what],  # type: ignore[misc]
                             stall_after=max(WEDGED_AFTER, 3 * interval + 30))
