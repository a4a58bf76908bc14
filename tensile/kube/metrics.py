"""Prometheus metrics of the machinery every tensile component runs on.

One ``CollectorRegistry`` per process (``new_registry``), served on the
component's ``--metrics-addr``. Two kinds of series:

- **measured on the hot path** with prometheus-client objects: API requests
  by cluster, verb and code, and their latency (``ApiMetrics``);
- **read at scrape time** from the machinery's own counters
  (``MachineryCollector``): informers, work queues, the Event recorder and
  supervised loops already count what they do as plain integers, so nothing
  is added to their hot paths and nothing can drift.

Conventions, checked by ``convention_problems`` in the unit tests: every
name starts with ``tensile_`` (the process and Python collectors keep their
standard names), counters end in ``_total``, histograms measure
``_seconds``, every family has HELP text, and no label can carry an object
name (cardinality stays bounded by clusters, verbs, codes, informers and
queues).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tensile.kube.events import EventRecorder
    from tensile.kube.informer import Informer
    from tensile.kube.supervisor import Supervisor
    from tensile.kube.workqueue import Workers

PREFIX = "tensile_"
#: Standard collectors whose names Prometheus users already know.
STANDARD_PREFIXES = ("process_", "python_")
#: Labels that would carry one value per object: never allowed.
UNBOUNDED_LABELS = frozenset({"pod", "name", "namespace", "uid", "key", "object", "path", "url", "node_name"})
#: API round trips: 5 ms to a minute (a list of 10,000 pods takes seconds).
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Sync latencies: 5 ms (one hop of an unloaded virtual node) to 10 minutes (a pod held for a dependency).
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def new_registry() -> CollectorRegistry:
    """The process's registry, with the standard process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(TaskCollector())
    return registry


class TaskCollector(Collector):
    """Asyncio tasks alive in the process's event loop, counted when Prometheus scrapes.

    ``/metrics`` is answered on the event loop, so the running loop is the process's one. A
    number that keeps growing under steady work is a leak (a task per object never ended).
    Collected outside a running loop (a unit test calling ``generate_latest``), the family is absent.
    """

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no running event loop
            return
        yield GaugeMetricFamily("tensile_asyncio_tasks", "Asyncio tasks not yet done in the process's event "
                                "loop, counted at scrape time.", value=len(tasks))


class ApiMetrics:
    """Requests a ``Kube`` sends, by cluster (the client's name), verb and HTTP code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tensile_api_requests_total", "API requests sent, by cluster, verb and HTTP code "
            "(code 0: no answer, a connection error or timeout).",
            ["cluster", "verb", "code"], registry=registry)
        self.duration = Histogram(
            "tensile_api_request_duration_seconds", "API request latency by cluster and verb, until the "
            "whole body is read (watches: until the stream opens).",
            ["cluster", "verb"], buckets=API_BUCKETS, registry=registry)
        self.refused_writes = Counter(
            "tensile_api_writes_refused_total", "Writes this replica did not send because it does not hold "
            "the leader-election Lease (or its renew deadline passed).", ["cluster"], registry=registry)
        self.reauths = Counter(
            "tensile_api_reauthentications_total", "Credentials reloaded after a 401 Unauthorized.",
            ["cluster"], registry=registry)
        self.retries = Counter(
            "tensile_api_retries_total", "Requests sent again because the server asked to be asked again "
            "(429 Too Many Requests, or a 5xx with Retry-After), by cluster, verb and the code that asked.",
            ["cluster", "verb", "code"], registry=registry)

    def observe(self, cluster: str, verb: str, code: int, seconds: float) -> None:
        self.requests.labels(cluster, verb, str(code)).inc()
        self.duration.labels(cluster, verb).observe(seconds)


# --- read at scrape time --------------------------------------------------------------------------


class MachineryCollector(Collector):
    """Informers, work queues, Events and supervised loops, read when Prometheus scrapes."""

    def __init__(
        self,
        informers: Callable[[], Iterable[Informer]],
        workers: Callable[[], Iterable[Workers]],
        recorder: Callable[[], EventRecorder | None],
        supervisor: Supervisor | None,
    ) -> None:
        self._informers = informers
        self._workers = workers
        self._recorder = recorder
        self._supervisor = supervisor

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on what runs; an empty describe keeps registration lazy

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_informers()
        yield from self._collect_queues()
        yield from self._collect_events()
        yield from self._collect_supervised()

    def _collect_informers(self) -> Iterator[Metric]:
        lists = CounterMetricFamily("tensile_informer_lists", "Full lists by informer: the first one and "
                                    "relists after 410 Gone or an undecodable watch event.", labels=["informer"])
        watches = CounterMetricFamily("tensile_informer_watches", "Watches started by informer (a watch "
                                      "resumed from its resourceVersion counts once more).", labels=["informer"])
        failures = CounterMetricFamily("tensile_informer_failures", "List or watch failures by informer.",
                                       labels=["informer"])
        objects = GaugeMetricFamily("tensile_cache_objects", "Objects in the informer's cache.",
                                    labels=["informer"])
        synced = GaugeMetricFamily("tensile_informer_synced", "1 once the informer's cache has synced.",
                                   labels=["informer"])
        silence = GaugeMetricFamily("tensile_informer_last_progress_seconds", "Seconds since the informer "
                                    "last listed or received a watch event or bookmark.", labels=["informer"])
        now = time.monotonic()
        for inf in self._informers():
            lists.add_metric([inf.name], inf.relists)
            watches.add_metric([inf.name], inf.watches)
            failures.add_metric([inf.name], inf.failures)
            objects.add_metric([inf.name], len(inf.store))
            synced.add_metric([inf.name], 1 if inf.is_synced else 0)
            silence.add_metric([inf.name], max(0.0, now - inf.last_progress))
        yield from (lists, watches, failures, objects, synced, silence)

    def _collect_queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tensile_workqueue_depth", "Keys waiting in the work queue.", labels=["queue"])
        adds = CounterMetricFamily("tensile_workqueue_adds", "Keys added to the work queue (a key already "
                                   "waiting is not added twice).", labels=["queue"])
        retries = CounterMetricFamily("tensile_workqueue_retries", "Keys put back with backoff after a failure.",
                                      labels=["queue"])
        processed = CounterMetricFamily("tensile_workqueue_processed", "Keys handled by a worker.",
                                        labels=["queue"])
        longest = GaugeMetricFamily("tensile_workqueue_longest_running_processor_seconds", "How long the "
                                    "longest-running key in hand has been handled.", labels=["queue"])
        busy = GaugeMetricFamily("tensile_workqueue_busy_workers", "Workers handling a key now.",
                                 labels=["queue"])
        configured = GaugeMetricFamily("tensile_workqueue_workers", "Workers of the queue.", labels=["queue"])
        for w in self._workers():
            q = w.queue
            depth.add_metric([q.name], len(q))
            adds.add_metric([q.name], q.adds)
            retries.add_metric([q.name], q.retries)
            processed.add_metric([q.name], q.processed)
            running = w.longest_running()
            longest.add_metric([q.name], running[1] if running else 0.0)
            busy.add_metric([q.name], w.busy())
            configured.add_metric([q.name], w.count)
        yield from (depth, adds, retries, processed, longest, busy, configured)

    def _collect_events(self) -> Iterator[Metric]:
        recorder = self._recorder()
        if recorder is None:
            return
        events = CounterMetricFamily("tensile_events", "Kubernetes Events by outcome: written, folded into "
                                     "an existing Event's count, dropped (queue full), failed.", labels=["result"])
        for result in ("written", "folded", "dropped", "failed"):
            events.add_metric([result], getattr(recorder, result))
        yield events
        yield GaugeMetricFamily("tensile_events_queued", "Events waiting to be written.", value=len(recorder))

    def _collect_supervised(self) -> Iterator[Metric]:
        if self._supervisor is None:
            return
        restarts = CounterMetricFamily("tensile_supervised_restarts", "Times a supervised loop failed or "
                                       "returned and was started again.", labels=["loop"])
        for name, entry in self._supervisor.entries.items():
            restarts.add_metric([name], entry.restarts)
        yield restarts


# --- conventions -------------------------------------------------------------------------------


def convention_problems(registry: CollectorRegistry) -> list[str]:
    """What breaks tensile's metric conventions in ``registry``; empty when all is well."""
    problems = []
    for family in registry.collect():
        name = family.name
        if name.startswith(STANDARD_PREFIXES):
            continue
        if not name.startswith(PREFIX):
            problems.append(f"{name}: no {PREFIX} prefix")
        if not family.documentation.strip():
            problems.append(f"{name}: no HELP text")
        if family.type == "counter" and not all(s.name.endswith(("_total", "_created")) for s in family.samples):
            problems.append(f"{name}: a counter whose samples do not end in _total")
        if family.type == "histogram" and not name.endswith(("_seconds", "_bytes")):
            problems.append(f"{name}: a histogram must measure _seconds or _bytes")
        if family.type == "gauge" and name.endswith("_total"):
            problems.append(f"{name}: a gauge named like a counter")
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        for label in sorted(labels & UNBOUNDED_LABELS):
            problems.append(f"{name}: label {label!r} would carry one series per object")
    return problems

