"""Benchmark: N pods through the virtual node versus straight into the lower cluster.

Measures, on one machine in one run (so the ratio is meaningful even on a
noisy machine):

- direct: time from the first create to all N pods Running, created straight
  in the lower cluster;
- via tensile: the same N pods created in the upper cluster, bound to the
  virtual node, copied down, Running downstairs, and reported Running
  upstairs;
- API requests per pod on each apiserver during the tensile run (all clients,
  from ``apiserver_request_total``) and tensile's own requests per pod.

Writes a JSON record to bench/results/ and prints a summary.
Usage: python bench/pods.py [--pods 1000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, pod_manifest
from e2e.kwok import NodeSpec
from e2e.metrics import quantile
from e2e.virtualnode import VirtualNodeProcess

RESULTS = Path(__file__).parent / "results"
API = "tensile_api_requests_total"
SYNCS = "tensile_pod_syncs_total"
RETRIES = "tensile_workqueue_retries_total"
_METRIC = re.compile(r'^apiserver_request_total\{([^}]*)\} (\S+)$')


def request_total(cluster: LocalCluster) -> dict[str, float]:
    """apiserver_request_total summed by verb (WATCH included)."""
    status, body = cluster.get_raw("/metrics", timeout=30)
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        m = _METRIC.match(line)
        if m:
            verb = re.search(r'verb="([^"]+)"', m.group(1))
            key = verb.group(1) if verb else "?"
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if after.get(k, 0.0) - before.get(k, 0.0) > 0}


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def create_pods(cluster: LocalCluster, ns: str, n: int, virtual: bool) -> None:
    core = cluster.core

    def one(i: int) -> None:
        body = pod_manifest(f"b{i}", labels={"bench": "1"}, virtual=virtual)
        body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
        core.create_namespaced_pod(ns, body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def running(cluster: LocalCluster, ns: str) -> int:
    pods = cluster.core.list_namespaced_pod(ns, label_selector="bench=1").items
    return sum(1 for p in pods if p.status.phase == "Running")


def timed_run(create_in: LocalCluster, watch: LocalCluster, ns: str, n: int, virtual: bool, timeout: float) -> float:
    started = time.monotonic()
    create_pods(create_in, ns, n, virtual)
    wait_for(lambda: running(watch, ns) >= n, timeout, interval=0.5, what=f"{n} pods Running in {watch.name}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    n = args.pods
    per_node = 250
    nodes = [NodeSpec(f"lower-{i}", cpu="64", memory="256Gi", pods=str(per_node)) for i in range(-(-2 * n // per_node))]
    with LocalCluster("bench-upper", [NodeSpec("upper-0", cpu="4", memory="8Gi")]) as upper, \
            LocalCluster("bench-lower", nodes) as lower:
        create_namespace(lower, "direct")
        direct = timed_run(lower, lower, "direct", n, virtual=False, timeout=args.timeout)
        print(f"direct: {n} pods Running in the lower cluster in {direct:.1f}s")

        with VirtualNodeProcess(upper, lower, "vk-bench", extra_args=["--pod-sync-workers=16"]) as vn:
            create_namespace(upper, "bench")
            up0, low0 = request_total(upper), request_total(lower)
            m0 = vn.metrics()
            via = timed_run(upper, upper, "bench", n, virtual=True, timeout=args.timeout)
            up1, low1 = request_total(upper), request_total(lower)
            m1 = vn.metrics()
            print(f"via tensile: {n} pods Running upstairs in {via:.1f}s")
            up_d, low_d = delta(up1, up0), delta(low1, low0)
            result: dict[str, Any] = {
                "pods": n,
                "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                "direct_seconds": round(direct, 2),
                "via_tensile_seconds": round(via, 2),
                "ratio": round(via / direct, 2),
                "upper_apiserver_requests_per_pod": round(sum(up_d.values()) / n, 2),
                "lower_apiserver_requests_per_pod": round(sum(low_d.values()) / n, 2),
                "upper_requests_by_verb": {k: int(v) for k, v in sorted(up_d.items())},
                "lower_requests_by_verb": {k: int(v) for k, v in sorted(low_d.items())},
                "tensile_upper_requests_per_pod": round(
                    (m1.total(API, cluster="upper") - m0.total(API, cluster="upper")) / n, 2),
                "tensile_lower_requests_per_pod": round(
                    (m1.total(API, cluster="lower") - m0.total(API, cluster="lower")) / n, 2),
                "tensile_status_updates_per_pod": round(
                    (m1.total(SYNCS, operation="status") - m0.total(SYNCS, operation="status")) / n, 2),
                "tensile_retries": int(m1.total(RETRIES, queue="pods") - m0.total(RETRIES, queue="pods")),
                "create_latency_p50_seconds": quantile(m0, m1, "tensile_pod_create_latency_seconds", 0.5),
                "create_latency_p99_seconds": quantile(m0, m1, "tensile_pod_create_latency_seconds", 0.99),
                "running_latency_p50_seconds": quantile(m0, m1, "tensile_pod_running_latency_seconds", 0.5),
                "running_latency_p99_seconds": quantile(m0, m1, "tensile_pod_running_latency_seconds", 0.99),
                "tensile_peak_rss_mib": peak_rss_mib(vn.proc.pid) if vn.proc and vn.proc.pid else None,
            }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pods-{n}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
