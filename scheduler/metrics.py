"""The scheduler extender's metrics (``tensile_scheduler_*``); the README lists them.

Labels are bounded: the verb, a result, a verdict. Never a pod or node name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.extender import Knowledge

#: Filter and prioritize take well under a millisecond each at 100 virtual nodes.
EXTENDER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
VERBS = ("filter", "prioritize")
RESULTS = ("success", "bad_request", "error")


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tensile_scheduler_requests_total", "Extender calls from kube-scheduler, by verb (filter, prioritize) "
            "and result (success, bad_request, error, not_synced: answered with an error before the caches "
            "synced).", ["verb", "result"], registry=registry)
        self.duration = Histogram(
            "tensile_scheduler_request_duration_seconds", "Time to answer one extender call, by verb, from the "
            "body read to the answer encoded.", ["verb"], buckets=EXTENDER_BUCKETS, registry=registry)
        self.verdicts = Counter(
            "tensile_scheduler_verdicts_total", "Per candidate node and call: fits, full (FailedNodes), never "
            "(FailedAndUnresolvableNodes), not_virtual (passed untouched), and virtual nodes without a usable "
            "profile (no_profile, stale, invalid), which --missing-profile passes or fails.",
            ["verb", "verdict"], registry=registry)
        for verb in VERBS:
            for result in RESULTS:
                self.requests.labels(verb, result)


class ProfileCollector(Collector):
    """Profiles held and how many are stale, read at scrape time."""

    def __init__(self, knowledge: Callable[[], Knowledge], max_age: float) -> None:
        self._knowledge = knowledge
        self._max_age = max_age

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        k = self._knowledge()
        yield GaugeMetricFamily("tensile_scheduler_virtual_nodes", "Virtual nodes (type=virtual-kubelet) in the "
                                "upper cluster.", value=len(k.virtual))
        yield GaugeMetricFamily("tensile_scheduler_profiles", "ClusterProfiles held.", value=len(k.profiles))
        yield GaugeMetricFamily("tensile_scheduler_profiles_stale", "ClusterProfiles not renewed within "
                                "--profile-max-age.", value=len(k.stale(self._max_age)))
        yield GaugeMetricFamily("tensile_scheduler_profiles_invalid", "ClusterProfiles that do not parse.",
                                value=sum(1 for p in k.profiles.values() if p.profile is None))
