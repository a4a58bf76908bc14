"""``/stats/summary`` and ``/metrics/resource`` from the lower cluster's PodMetrics. Pure.

metrics-server (>= 0.6) scrapes ``/metrics/resource`` on every node and turns two
scrapes of the cumulative counter ``container_cpu_usage_seconds_total`` into a CPU
rate; older scrapers and tools read ``/stats/summary``. The lower cluster's
``metrics.k8s.io`` PodMetrics give a usage *rate* per container (cores, averaged over
a window) and a memory working set, not a counter. So :class:`CpuTime` integrates the
rate into a counter, advanced at each scrape by the latest rate times the time since
the previous scrape: the rate metrics-server computes upstairs is then the rate the
lower metrics-server measured downstairs, and the counter never goes backwards.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from tensile import quantity, timestamps

JSON = dict[str, Any]
Key = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class ContainerUsage:
    name: str
    cpu_cores: float
    memory_bytes: int


@dataclasses.dataclass(frozen=True)
class PodUsage:
    """One upper pod's usage, as measured downstairs."""

    namespace: str
    name: str
    uid: str
    start: datetime.datetime | None
    containers: tuple[ContainerUsage, ...]

    @property
    def cpu_cores(self) -> float:
        return sum(c.cpu_cores for c in self.containers)

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.containers)


def _amount(usage: Any, resource: str) -> Fraction | None:
    if not isinstance(usage, dict) or resource not in usage:
        return None
    try:
        value = quantity.parse(usage[resource])
    except (ValueError, TypeError, ZeroDivisionError, ArithmeticError):
        return None
    return value if value >= 0 else None


def pod_usage(metrics: JSON, upper_pod: JSON) -> PodUsage | None:
    """The usage of ``upper_pod`` from its lower copy's PodMetrics; None when it gives none."""
    containers: list[ContainerUsage] = []
    for entry in metrics.get("containers") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        cpu, memory = _amount(entry.get("usage"), "cpu"), _amount(entry.get("usage"), "memory")
        if cpu is None and memory is None:
            continue
        containers.append(ContainerUsage(entry["name"], float(cpu or 0), int(memory or 0)))
    if not containers:
        return None
    meta = upper_pod.get("metadata") or {}
    status = upper_pod.get("status") or {}
    return PodUsage(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")),
                    timestamps.parse(status.get("startTime")), tuple(containers))


class CpuTime:
    """Cumulative CPU seconds per container, integrated from usage rates scrape after scrape.

    A container seen for the first time starts at its rate times ``first_window`` (the
    counter of a container that ran that long at that rate), so the first scrape already
    shows work done. Containers no longer reported are forgotten; one that comes back
    starts again, as a restarted container's counter does.
    """

    def __init__(self, first_window: float = 1.0) -> None:
        self.first_window = first_window
        self._seconds: dict[Key, float] = {}
        self._rate: dict[Key, float] = {}
        self._at: float | None = None

    def advance(self, usages: Iterable[PodUsage], now: float) -> dict[Key, float]:
        """The counters at ``now`` (a monotonic clock, in seconds)."""
        elapsed = 0.0 if self._at is None else max(0.0, now - self._at)
        self._at = now if self._at is None else max(self._at, now)
        seconds: dict[Key, float] = {}
        rates: dict[Key, float] = {}
        for pod in usages:
            for container in pod.containers:
                key = (pod.namespace, pod.name, container.name)
                if key in self._seconds:
                    seconds[key] = self._seconds[key] + self._rate[key] * elapsed
                else:
                    seconds[key] = container.cpu_cores * self.first_window
                rates[key] = container.cpu_cores
        self._seconds, self._rate = seconds, rates
        return dict(seconds)


def _cpu(cores: float, cumulative: float, when: str) -> JSON:
    return {"time": when, "usageNanoCores": int(cores * 1e9), "usageCoreNanoSeconds": int(cumulative * 1e9)}


def _memory(working_set: int, when: str) -> JSON:
    return {"time": when, "workingSetBytes": working_set, "usageBytes": working_set}


def summary(node_name: str, node_start: datetime.datetime, pods: Sequence[PodUsage],
            counters: dict[Key, float], now: datetime.datetime) -> JSON:
    """The kubelet's ``statsapi.Summary`` for the pods of this node."""
    when = timestamps.rfc3339(now)
    out_pods: list[JSON] = []
    for pod in pods:
        start = timestamps.rfc3339(pod.start or now)
        containers = [{
            "name": c.name, "startTime": start,
            "cpu": _cpu(c.cpu_cores, counters.get((pod.namespace, pod.name, c.name), 0.0), when),
            "memory": _memory(c.memory_bytes, when),
        } for c in pod.containers]
        pod_seconds = sum(counters.get((pod.namespace, pod.name, c.name), 0.0) for c in pod.containers)
        out_pods.append({
            "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "startTime": start, "containers": containers,
            "cpu": _cpu(pod.cpu_cores, pod_seconds, when), "memory": _memory(pod.memory_bytes, when),
        })
    return {
        "node": {
            "nodeName": node_name, "startTime": timestamps.rfc3339(node_start),
            "cpu": _cpu(sum(p.cpu_cores for p in pods), sum(counters.values()), when),
            "memory": _memory(sum(p.memory_bytes for p in pods), when),
            "systemContainers": [],
        },
        "pods": out_pods,
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


_FAMILIES = (
    ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the container in core-seconds"),
    ("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes"),
    ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds"),
    ("node_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the node in core-seconds"),
    ("node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes"),
    ("pod_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the pod in core-seconds"),
    ("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes"),
    ("resource_scrape_error", "gauge", "1 if there was an error while getting container metrics, 0 otherwise"),
)


def resource_metrics(pods: Sequence[PodUsage], counters: dict[Key, float], now: datetime.datetime) -> str:
    """The kubelet's ``/metrics/resource`` in Prometheus text format, samples stamped ``now``."""
    ms = int(now.timestamp() * 1000)
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    for pod in pods:
        start = (pod.start or now).timestamp()
        pod_seconds = 0.0
        for c in pod.containers:
            labels = _labels(container=c.name, namespace=pod.namespace, pod=pod.name)
            seconds = counters.get((pod.namespace, pod.name, c.name), 0.0)
            pod_seconds += seconds
            samples["container_cpu_usage_seconds_total"].append(f"{labels} {seconds:.9f} {ms}")
            samples["container_memory_working_set_bytes"].append(f"{labels} {c.memory_bytes} {ms}")
            samples["container_start_time_seconds"].append(f"{labels} {start:.3f} {ms}")
        labels = _labels(namespace=pod.namespace, pod=pod.name)
        samples["pod_cpu_usage_seconds_total"].append(f"{labels} {pod_seconds:.9f} {ms}")
        samples["pod_memory_working_set_bytes"].append(f"{labels} {pod.memory_bytes} {ms}")
    samples["node_cpu_usage_seconds_total"].append(f" {sum(counters.values()):.9f} {ms}")
    samples["node_memory_working_set_bytes"].append(f" {sum(p.memory_bytes for p in pods)} {ms}")
    samples["resource_scrape_error"].append(" 0")
    lines: list[str] = []
    for name, kind, help_text in _FAMILIES:
        lines += [f"# HELP {name} [STABLE] {help_text}", f"# TYPE {name} {kind}"]
        lines += [name + sample for sample in samples[name]]
    return "\n".join(lines) + "\n"
