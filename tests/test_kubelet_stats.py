"""/stats/summary and /metrics/resource from PodMetrics: parsing, the CPU counter, the formats."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tensile.kubelet import stats
from tensile.kubelet.stats import ContainerUsage, CpuTime, PodUsage

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
UPPER = {"metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
         "status": {"startTime": "2026-12-02T11:00:00Z"}}


def _metrics(*containers: tuple[str, dict[str, str]]) -> dict[str, object]:
    return {"metadata": {"name": "web", "namespace": "ns"}, "timestamp": "2026-12-02T12:00:00Z", "window": "10s",
            "containers": [{"name": n, "usage": u} for n, u in containers]}


def test_pod_usage_reads_cpu_and_memory_per_container() -> None:
    usage = stats.pod_usage(_metrics(("app", {"cpu": "250m", "memory": "64Mi"}), ("side", {"cpu": "1"})), UPPER)
    assert usage is not None
    assert usage.containers == (ContainerUsage("app", 0.25, 64 * 2**20), ContainerUsage("side", 1.0, 0))
    assert (usage.namespace, usage.name, usage.uid) == ("ns", "web", "u1")
    assert usage.start == datetime.datetime(2026, 12, 2, 11, 0, tzinfo=datetime.UTC)
    assert usage.cpu_cores == 1.25 and usage.memory_bytes == 64 * 2**20


def test_bad_entries_are_skipped_not_fatal() -> None:
    bad = {"containers": [{"name": "a", "usage": {"cpu": "lots"}}, {"usage": {"cpu": "1"}}, "x",
                          {"name": "b", "usage": {"cpu": "-1", "memory": "1Ki"}}]}
    usage = stats.pod_usage(bad, UPPER)
    assert usage is not None and usage.containers == (ContainerUsage("b", 0.0, 1024),)
    assert stats.pod_usage({"containers": None}, UPPER) is None
    assert stats.pod_usage({}, {}) is None


def _pod(cores: float, name: str = "web") -> PodUsage:
    return PodUsage("ns", name, "u", None, (ContainerUsage("app", cores, 1),))


def test_cpu_counter_integrates_the_rate_and_forgets_gone_containers() -> None:
    cpu = CpuTime(first_window=1.0)
    assert cpu.advance([_pod(0.5)], 100.0) == {("ns", "web", "app"): 0.5}
    assert cpu.advance([_pod(2.0)], 110.0) == {("ns", "web", "app"): 0.5 + 0.5 * 10}
    assert cpu.advance([_pod(2.0)], 115.0) == {("ns", "web", "app"): 5.5 + 2.0 * 5}
    assert cpu.advance([], 120.0) == {}
    assert cpu.advance([_pod(1.0)], 130.0) == {("ns", "web", "app"): 1.0}


@given(st.lists(st.tuples(st.floats(0, 64), st.floats(0, 100)), min_size=2, max_size=30))
def test_the_rate_a_scraper_computes_is_the_rate_measured_downstairs(samples: list[tuple[float, float]]) -> None:
    cpu = CpuTime()
    now, previous_rate, previous = 0.0, None, None
    for rate, step in samples:
        now += step
        value = cpu.advance([_pod(rate)], now)[("ns", "web", "app")]
        if previous is not None and previous_rate is not None:
            assert value >= previous
            assert abs((value - previous) - previous_rate * step) < 1e-6 * max(1.0, value)
        previous, previous_rate = value, rate


def test_summary_has_the_kubelets_shape() -> None:
    pod = PodUsage("ns", "web", "u1", None, (ContainerUsage("app", 0.25, 100), ContainerUsage("side", 0.5, 50)))
    body = stats.summary("vk", NOW, [pod], {("ns", "web", "app"): 2.0, ("ns", "web", "side"): 1.0}, NOW)
    assert body["node"]["nodeName"] == "vk"
    assert body["node"]["cpu"]["usageNanoCores"] == 750_000_000
    assert body["node"]["cpu"]["usageCoreNanoSeconds"] == 3_000_000_000
    assert body["node"]["memory"]["workingSetBytes"] == 150
    (entry,) = body["pods"]
    assert entry["podRef"] == {"name": "web", "namespace": "ns", "uid": "u1"}
    assert [c["name"] for c in entry["containers"]] == ["app", "side"]
    assert entry["cpu"]["usageCoreNanoSeconds"] == 3_000_000_000
    assert entry["memory"]["workingSetBytes"] == 150


def test_resource_metrics_parse_as_prometheus_text_with_escaped_labels() -> None:
    pod = PodUsage("ns", 'we"b\\x', "u1", NOW, (ContainerUsage("app", 0.25, 100),))
    text = stats.resource_metrics([pod], {("ns", 'we"b\\x', "app"): 2.5}, NOW)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cpu = families["container_cpu_usage_seconds"].samples[0]
    assert cpu.labels == {"container": "app", "namespace": "ns", "pod": 'we"b\\x'} and cpu.value == 2.5
    assert cpu.timestamp == NOW.timestamp()
    assert families["container_memory_working_set_bytes"].samples[0].value == 100
    assert families["node_cpu_usage_seconds"].samples[0].value == 2.5
    assert families["node_memory_working_set_bytes"].samples[0].value == 100
    assert families["container_start_time_seconds"].samples[0].value == NOW.timestamp()
    assert families["resource_scrape_error"].samples[0].value == 0


def test_resource_metrics_without_pods_still_report_the_node() -> None:
    families = {f.name: f for f in text_string_to_metric_families(stats.resource_metrics([], {}, NOW))}
    assert families["node_cpu_usage_seconds"].samples[0].value == 0
    assert families["container_cpu_usage_seconds"].samples == []
