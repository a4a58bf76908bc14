"""The pods benchmark's pure computations (bench/report.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from bench import report


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert report.percentile(values, 0.0) == 1.0
    assert report.percentile(values, 1.0) == 4.0
    assert report.percentile(values, 0.5) == pytest.approx(2.5)
    assert report.percentile(list(map(float, range(1, 101))), 0.99) == pytest.approx(99.01)
    assert report.percentile([7.0], 0.99) == 7.0
    assert report.percentile([], 0.5) is None
    with pytest.raises(ValueError):
        report.percentile([1.0], 1.5)


def test_summary_rounds_and_handles_no_values() -> None:
    s = report.summary([0.1, 0.2, 0.3, 0.4, 10.0])
    assert s["count"] == 5
    assert s["p50"] == 0.3
    assert s["max"] == 10.0
    assert s["min"] == 0.1
    assert s["mean"] == pytest.approx(2.2)
    empty = report.summary([])
    assert empty == {"count": 0, "min": None, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}


def test_ratio_is_none_without_both_sides() -> None:
    assert report.ratio(30.0, 12.0) == 2.5
    assert report.ratio(None, 12.0) is None
    assert report.ratio(30.0, None) is None
    assert report.ratio(30.0, 0.0) is None


def test_ratios_of_the_cases() -> None:
    cases: dict[str, Any] = {"lower": {"create_seconds": 10.0, "delete_seconds": 5.0},
                             "upper": {"create_seconds": 12.0, "delete_seconds": 4.0},
                             "tensile": {"create_seconds": 24.2, "delete_seconds": 18.0}}
    assert report.ratios(cases) == {"tensile_over_lower": 2.42, "tensile_over_upper_plus_lower": 1.1,
                                    "delete_tensile_over_lower": 3.6, "delete_tensile_over_upper_plus_lower": 2.0}
    only = report.ratios({"lower": cases["lower"], "tensile": cases["tensile"]})
    assert only["tensile_over_lower"] == 2.42
    assert only["tensile_over_upper_plus_lower"] is None


def test_delta_and_per_pod() -> None:
    before = {"POST pods": 10.0, "GET nodes": 5.0, "WATCH pods": 2.0}
    after = {"POST pods": 1010.0, "GET nodes": 5.0, "WATCH pods": 3.0, "PATCH pods/status": 2000.0}
    d = report.delta(after, before)
    assert d == {"POST pods": 1000.0, "WATCH pods": 1.0, "PATCH pods/status": 2000.0}
    assert report.per_pod(d, 1000) == {"PATCH pods/status": 2.0, "POST pods": 1.0, "WATCH pods": 0.0}
    assert report.per_pod(d, 0) == {}
    assert report.by_verb(d) == {"POST": 1000.0, "WATCH": 1.0, "PATCH": 2000.0}


METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 1000
apiserver_request_total{code="201",resource="pods",subresource="binding",verb="POST"} 1000
apiserver_request_total{code="200",resource="pods",subresource="status",verb="PATCH"} 1500
apiserver_request_total{code="409",resource="pods",subresource="status",verb="PATCH"} 3
apiserver_request_total{code="0",resource="pods",subresource="",verb="WATCH"} 4
apiserver_request_duration_seconds_bucket{verb="POST",le="0.1"} 999
"""


def test_apiserver_requests_by_verb_and_resource() -> None:
    counts = report.apiserver_requests(METRICS)
    assert counts == {"POST pods": 1000.0, "POST pods/binding": 1000.0, "PATCH pods/status": 1503.0,
                      "WATCH pods": 4.0}
    assert report.by_verb(counts) == {"POST": 2000.0, "PATCH": 1503.0, "WATCH": 4.0}


def test_tensile_requests_and_writes_leave_out_the_clock_driven_clients() -> None:
    series = [
        ({"cluster": "upper", "verb": "PATCH", "code": "200"}, 2000.0),
        ({"cluster": "upper", "verb": "POST", "code": "201"}, 1000.0),
        ({"cluster": "upper", "verb": "PATCH", "code": "409"}, 5.0),
        ({"cluster": "lower", "verb": "POST", "code": "201"}, 1000.0),
        ({"cluster": "lower", "verb": "GET", "code": "200"}, 3.0),
        ({"cluster": "upper-heartbeat", "verb": "PUT", "code": "200"}, 30.0),
        ({"cluster": "upper-leader-election", "verb": "PUT", "code": "200"}, 15.0),
        ({"cluster": "lower-kubelet-api", "verb": "POST", "code": "201"}, 1.0),
    ]
    requests = report.tensile_requests(series)
    assert requests["upper:PATCH"] == 2005.0
    assert report.tensile_writes(requests) == {"upper:PATCH": 2005.0, "upper:POST": 1000.0, "lower:POST": 1001.0}
    with_periodic = report.tensile_writes(requests, include_periodic=True)
    assert with_periodic["upper:PUT"] == 45.0
    assert report.side_of("lower-kubelet-api") == "lower"
    assert report.side_of("upper-heartbeat") == "upper"


def test_cpu_ticks_reads_utime_and_stime_even_with_parens_in_the_command() -> None:
    fields = ["S", *map(str, range(4, 14)), "120", "30", "7", "8", *map(str, range(18, 53))]
    stat = "4242 (python -m (x) y) " + " ".join(fields)
    assert report.cpu_ticks(stat) == 150


def test_status_kib() -> None:
    text = "Name:\tpython\nVmPeak:\t  500000 kB\nVmHWM:\t  151040 kB\nVmRSS:\t  140000 kB\n"
    assert report.status_kib(text, "VmHWM") == 151040
    assert report.status_kib(text, "VmRSS") == 140000
    assert report.status_kib(text, "VmSwap") is None


def test_copies_check_counts_lost_duplicated_and_orphans() -> None:
    uppers = ["u1", "u2", "u3", "u4"]
    lowers = [("l1", "u1"), ("l2", "u2"), ("l3", "u2"), ("l4", "u9"), ("l1", "u1")]
    assert report.copies_check(uppers, lowers) == {"lost": 2, "duplicated": 1, "orphans": 1}
    assert report.copies_check(["u1"], [("l1", "u1")]) == {"lost": 0, "duplicated": 0, "orphans": 0}


def test_top_frames_of_a_collapsed_profile() -> None:
    collapsed = "\n".join([
        "<module> (tensile/cli.py:1);run (asyncio/runners.py:10);sync (tensile/controllers/pods.py:40) 60",
        "<module> (tensile/cli.py:1);run (asyncio/runners.py:10);loads (json/__init__.py:299) 30",
        "<module> (tensile/cli.py:1);sync (tensile/controllers/pods.py:40);loads (json/__init__.py:299) 10",
        "garbage line",
        "",
    ])
    top = report.top_frames(collapsed, k=2)
    assert top["samples"] == 100
    assert top["self"] == [{"frame": "sync (tensile/controllers/pods.py:40)", "samples": 60, "share": 0.6},
                           {"frame": "loads (json/__init__.py:299)", "samples": 40, "share": 0.4}]
    only = report.top_frames(collapsed, only="tensile/")
    assert [r["frame"] for r in only["inclusive"]] == ["<module> (tensile/cli.py:1)",
                                                       "sync (tensile/controllers/pods.py:40)"]
    assert only["inclusive"][1]["share"] == 0.7
    # the entry point is on every stack: it says nothing
    below = report.top_frames(collapsed, only="tensile/", max_share=0.9)
    assert [r["frame"] for r in below["inclusive"]] == ["sync (tensile/controllers/pods.py:40)"]


def test_audit_counts_by_client_verb_and_resource() -> None:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    events = [
        {"userAgent": "kube-scheduler/v1.34.4 (linux/amd64) kubernetes/abc/scheduler", "verb": "create",
         "objectRef": {"resource": "pods", "subresource": "binding"}, "received": when},
        {"userAgent": "tensile/0.1.0", "verb": "patch", "objectRef": {"resource": "pods", "subresource": "status"}},
        {"userAgent": "tensile/0.1.0", "verb": "patch", "objectRef": {"resource": "pods", "subresource": "status"}},
        {"userAgent": "", "verb": "create", "objectRef": {"resource": "events"}},
    ]
    assert report.audit_counts(events) == {"kube-scheduler create pods/binding": 1.0,
                                           "tensile patch pods/status": 2.0, "? create events": 1.0}


def _result(pods: int) -> dict[str, Any]:
    lat = report.summary([0.01, 0.02, 0.03])
    own = {"requests_per_pod": {"create": {"upper": {"PATCH": 2.0, "POST": 1.0}, "lower": {"POST": 1.0}}},
           "writes_per_pod": {"create": 4.0, "delete": 2.0, "total": 6.0}, "workqueue_retries": 0,
           "api_retries": 0, "cpu_seconds_per_1000_pods": 3.5, "peak_rss_mib": 151.2}
    cases = {
        "lower": {"create_seconds": 10.0, "delete_seconds": 5.0,
                  "requests_per_pod": {"create": {"upper": {}, "lower": {"POST": 1.0, "PATCH": 1.0}}},
                  "cpu_seconds": {"create": {"lower/kube-apiserver": 4.0, "lower/etcd": 1.0}}},
        "upper": {"create_seconds": 12.0, "delete_seconds": 4.0},
        "tensile": {"create_seconds": 24.2, "delete_seconds": 18.0, "tensile": own,
                    "latency": {"end_to_end": lat, "bind_to_lower_create": lat,
                                "lower_running_to_upper_running": lat},
                    "copies": {"lost": 0, "duplicated": 0, "orphans": 0}},
    }
    return {"pods": pods, "cases": cases, "ratios": report.ratios(cases)}


def test_markdown_holds_the_summary_the_tensile_details_and_the_steady_run() -> None:
    env = {"cpus": 2, "cpu_model": "x", "memory_gib": 24.0, "kubernetes": "v1.34.4", "etcd": "v3.6.4",
           "kwok": "v0.8.0", "python": "3.11.7", "commit": "abc123", "date": "2026-12-03", "lower_nodes": 100,
           "virtual_node_args": ["--pod-sync-workers=16"], "profile": "none"}
    steady = {"rate": 20.0, "seconds": 120.0, "pods": 2400, "achieved_rate": 19.9,
              "latency": {"bind_to_lower_create": report.summary([0.005, 0.01, 0.04])},
              "tensile": {"writes_per_pod": {"create": 4.0}}, "copies": {"lost": 0, "duplicated": 0, "orphans": 0}}
    md = report.markdown([_result(1000), _result(5000)], steady, env)
    assert "| 1,000 | 10.0 s | 12.0 s | 24.2 s | 2.42 x | 1.10 x | 5.0 s / 4.0 s / 18.0 s | 2.00 x |" in md
    assert "| 5,000 |" in md
    assert "| tensile: upper bind → lower create, p50 / p90 / p99 | 20 ms / 28 ms / 30 ms |" in md
    assert "| tensile requests per pod, create → Running (upper; lower) | PATCH 2.00, POST 1.00; POST 1.00 |" in md
    assert "| tensile writes per pod: create → Running / deletion / both | 4.00 / 2.00 / 6.00 |" in md
    assert "| tensile peak RSS | 151.2 MiB |" in md
    assert "| lost / duplicated / orphaned pods | 0 / 0 / 0 |" in md
    assert "lower/kube-apiserver 4.0, lower/etcd 1.0" in md
    assert "steady load, 20/s for 120 s" in md
    assert "| tensile: upper bind → lower create, p50 / p90 / p99 | 10 ms / 34 ms / 39 ms |" in md
    assert "Kubernetes v1.34.4" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count(" | ") for row in rows if not row.startswith("|---")}) == 1, block


def test_fmt_cells() -> None:
    assert report.fmt(None) == "-"
    assert report.fmt(1234.5678, "s", 1) == "1,234.6 s"
    assert report.fmt(5000) == "5,000"
    assert report.ms(0.0123) == "12 ms"
    assert report.quantiles_cell(None) == "-"
    assert report.verbs_cell({}) == "0"
