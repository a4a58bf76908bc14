"""The virtual node's own metrics: pod syncs and their latency, dependency copies, capacity, leadership.

The machinery's series (API requests, informers, queues, Events) come from
``tensile.kube.metrics``; the README lists every series of both.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tensile import quantity
from tensile.kube.errors import ApiError
from tensile.kube.metrics import SYNC_BUCKETS

if TYPE_CHECKING:
    from tensile.controllers.node import NodeController
    from tensile.kube.leader import LeaderElector

#: Latency clocks start at most this many pods ago and live at most this long.
PENDING_MAX = 100_000
PENDING_TTL = 3600.0


def result_of(exc: ApiError) -> str:
    """A bounded label for how a write failed."""
    if exc.not_leader:
        return "not_leader"
    if exc.status == 404:
        return "not_found"
    if exc.status == 409:
        return "conflict"
    if exc.status in (400, 403, 422):
        return "refused"
    return "error"


@contextlib.contextmanager
def _counted(counter: Counter, *labels: str) -> Iterator[None]:
    """Count the write in the block under ``labels`` and its result (``success`` or ``result_of``)."""
    try:
        yield
    except ApiError as exc:
        counter.labels(*labels, result_of(exc)).inc()
        raise
    counter.labels(*labels, "success").inc()


class VirtualNodeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.pod_writes = Counter(
            "tensile_pod_syncs_total", "Writes the pod controller made, by operation (create, delete_lower, "
            "delete_upper, status, spec, ephemeral, fail_upper) and result (success, not_found, conflict, "
            "refused, not_leader, error).", ["operation", "result"], registry=registry)
        self.dependency_writes = Counter(
            "tensile_dependency_syncs_total", "Writes of lower copies of what pods need, by kind (configmaps, "
            "secrets, persistentvolumeclaims, serviceaccounts, services, endpointslices), operation "
            "(create, update, delete) and result.", ["kind", "operation", "result"], registry=registry)
        self.create_latency = Histogram(
            "tensile_pod_create_latency_seconds", "From an upper pod bound to this node (as the watch "
            "delivered it) to its lower copy created. Pods bound before this process started are not "
            "counted.", buckets=SYNC_BUCKETS, registry=registry)
        self.running_latency = Histogram(
            "tensile_pod_running_latency_seconds", "From a lower copy seen Running to the upper pod's "
            "status written Running.", buckets=SYNC_BUCKETS, registry=registry)
        self._bound: TTLCache[str, float] = TTLCache(PENDING_MAX, PENDING_TTL)
        self._running: TTLCache[str, float] = TTLCache(PENDING_MAX, PENDING_TTL)

    def pod_write(self, operation: str) -> contextlib.AbstractContextManager[None]:
        return _counted(self.pod_writes, operation)

    def dependency_write(self, kind: str, operation: str) -> contextlib.AbstractContextManager[None]:
        return _counted(self.dependency_writes, kind, operation)

    # --- latency clocks, keyed by pod key ---------------------------------------------------

    def bound(self, key: str) -> None:
        self._bound.setdefault(key, time.monotonic())

    def created(self, key: str) -> None:
        started = self._bound.pop(key, None)
        if started is not None:
            self.create_latency.observe(time.monotonic() - started)

    def lower_running(self, key: str) -> None:
        self._running.setdefault(key, time.monotonic())

    def upper_running(self, key: str) -> None:
        started = self._running.pop(key, None)
        if started is not None:
            self.running_latency.observe(time.monotonic() - started)

    def forget(self, key: str) -> None:
        self._bound.pop(key, None)
        self._running.pop(key, None)


class VirtualNodeCollector(Collector):
    """Capacity and allocatable published, copies held, Lease age and leadership, read at scrape time."""

    def __init__(self, node: Callable[[], NodeController | None], copies: Callable[[], dict[str, int]],
                 elector: Callable[[], LeaderElector | None], leader_elect: bool) -> None:
        self._node = node
        self._copies = copies
        self._elector = elector
        self._leader_elect = leader_elect

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        node = self._node()
        if node is not None and node.published is not None:
            cap, alloc = node.published
            for family_name, doc, values in (
                ("tensile_node_capacity", "Capacity published on the virtual Node, per resource, in base "
                 "units (cores, bytes, count).", cap),
                ("tensile_node_allocatable", "Allocatable published on the virtual Node, per resource, in base "
                 "units: the lower cluster's allocatable minus what pods tensile did not copy use.", alloc),
            ):
                family = GaugeMetricFamily(family_name, doc, labels=["resource"])
                for resource, value in sorted(values.items()):
                    family.add_metric([resource], float(quantity.parse(value)))
                yield family
        if node is not None:
            age = time.monotonic() - node.last_renewed if node.last_renewed else 0.0
            yield GaugeMetricFamily("tensile_node_lease_age_seconds", "Seconds since the Node's heartbeat "
                                    "Lease was last renewed (kube-node-lease).", value=age)
            yield GaugeMetricFamily("tensile_lower_cluster_reachable", "1 while the lower apiserver answers.",
                                    value=1 if node.reachable else 0)
        copies = GaugeMetricFamily("tensile_dependency_copies", "Lower copies this virtual node owns, by kind.",
                                   labels=["kind"])
        for kind, count in sorted(self._copies().items()):
            copies.add_metric([kind], count)
        yield copies
        elector = self._elector()
        leader = GaugeMetricFamily("tensile_leader_is_leader", "1 while this replica holds the leader-election "
                                   "Lease and may write (always 1 with --leader-elect=false).")
        leader.add_metric([], 1 if (elector.may_write() if elector is not None else not self._leader_elect) else 0)
        yield leader
        if elector is not None:
            yield CounterMetricFamily("tensile_leader_acquisitions", "Times this replica acquired the Lease.",
                                      value=elector.transitions)
            yield CounterMetricFamily("tensile_leader_losses", "Times this replica lost the Lease (renew deadline "
                                      "passed, or another replica held it) and stepped down.", value=elector.losses)
