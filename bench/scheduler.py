"""Benchmark: the scheduler extender with 100 virtual nodes whose lower clusters hold 1,000 nodes each.

A real local upper cluster holds 100 ClusterProfiles, each built with ``tensile.profile.build`` from a
synthetic lower cluster of 1,000 nodes in 10 node pools (zone x instance type, 4 to 64 CPU) with 0 to 8
pods each. A real ``tensile scheduler`` process watches them. The script then calls ``/filter`` and
``/prioritize`` over one keep-alive HTTP connection, as kube-scheduler does, with all 100 virtual nodes
as candidates (``NodeNames``) and a mix of pods: small and large requests, with and without a node
selector on a pool label, some that fit nowhere.

It also measures, in the same run, the size of a profile for 5,000 lower nodes in 50 signatures and
how long one 1,000-node profile takes to build (the virtual node's cost every --profile-interval).

Reported: client-side latency per call (p50/p99/max), the extender's own histogram, and its RSS.
Writes bench/results/scheduler-100x1000.json. Usage: python bench/scheduler.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

from e2e.cluster import LocalCluster, wait_for
from e2e.schedulerproc import SchedulerProcess
from tensile import capacity, clusterprofile, profile, timestamps
from tensile import conventions as c

RESULTS = Path(__file__).parent / "results"
INSTANCE = [("m.xlarge", "4", "16Gi"), ("m.2xlarge", "8", "32Gi"), ("c.4xlarge", "16", "32Gi"),
            ("r.8xlarge", "32", "256Gi"), ("m.16xlarge", "64", "256Gi")]


def lower_cluster(rng: random.Random, nodes: int, signatures: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out_nodes, out_pods = [], []
    for i in range(nodes):
        sig = i % signatures
        kind, cpu, memory = INSTANCE[sig % len(INSTANCE)]
        name = f"node-{i:05d}"
        taints = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}] if sig == signatures - 1 else []
        out_nodes.append({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": f"zone-{sig % 3}",
                "node.kubernetes.io/instance-type": kind, "pool": f"pool-{sig}", "kubernetes.io/os": "linux"}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}})
        for _ in range(rng.randrange(0, 9)):
            out_pods.append({"spec": {"nodeName": name, "containers": [{"name": "c", "resources": {"requests": {
                "cpu": f"{rng.choice([100, 250, 500, 1000, 2000])}m",
                "memory": f"{rng.choice([128, 256, 512, 1024, 4096])}Mi"}}}]}, "status": {"phase": "Running"}})
    return out_nodes, out_pods


def adversarial_pods(rng: random.Random, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        cpu_milli = int(node["status"]["allocatable"]["cpu"]) * 1000
        used = rng.randrange(1, cpu_milli)
        memory_mib = (cpu_milli - used) * 3
        out.append({"spec": {"nodeName": node["metadata"]["name"], "containers": [{"name": "c", "resources": {
            "requests": {"cpu": f"{used}m", "memory": f"{memory_mib}Mi"}}}]}, "status": {"phase": "Running"}})
    return out


def pods(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        cpu = rng.choice(["100m", "500m", "2", "6", "14", "30", "100"])
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "x", "resources": {
            "requests": {"cpu": cpu, "memory": rng.choice(["256Mi", "2Gi", "16Gi"])}}}]}
        if i % 3 == 0:
            spec["nodeSelector"] = {"pool": f"pool-{rng.randrange(12)}"}
        out.append({"metadata": {"name": f"p{i}", "namespace": "bench", "uid": f"u{i}"}, "spec": spec})
    return out


def quantile(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--virtual-nodes", type=int, default=100)
    parser.add_argument("--lower-nodes", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(7)

    big_nodes, big_pods = lower_cluster(rng, 5000, 50)
    started = time.perf_counter()
    big_pods = [capacity.shrink_pod(p) for p in big_pods]  # as the virtual node's cache holds them
    big = profile.build(big_nodes, big_pods)
    big_build = time.perf_counter() - started
    print(f"5,000 nodes in 50 signatures: {profile.size(big)} bytes, {len(big['groups'])} groups, built in "
          f"{big_build:.2f}s, truncated={bool(big.get('truncated'))}")

    # The worst case for size: usage anti-correlated between cpu and memory puts every node on its
    # group's frontier, so only the byte budget bounds the profile.
    for node, pod in zip(big_nodes, adversarial_pods(rng, big_nodes), strict=True):
        node["pods"] = pod
    worst = profile.build(big_nodes, [n.pop("pods") for n in big_nodes])
    print(f"... every node on its frontier: {profile.size(worst)} bytes, truncated={worst.get('truncated')}")

    statuses, build_seconds = [], []
    for _ in range(args.virtual_nodes):
        nodes, lower_pods = lower_cluster(rng, args.lower_nodes, 10)
        started = time.perf_counter()
        statuses.append(profile.build(nodes, [capacity.shrink_pod(p) for p in lower_pods]))
        build_seconds.append(time.perf_counter() - started)
    sizes = [profile.size(s) for s in statuses]
    print(f"{args.virtual_nodes} profiles of {args.lower_nodes} nodes: build p50 {quantile(build_seconds, 0.5):.3f}s, "
          f"size p50 {quantile(sizes, 0.5):.0f} bytes")

    with LocalCluster("bench-sched", nodes=[]) as upper:
        extender = SchedulerProcess(upper, extra_args=["--v=0"])
        extender.start()
        try:
            api = upper.api()
            from kubernetes import client as k8s

            custom = k8s.CustomObjectsApi(api)
            names = [f"vk-{i:03d}" for i in range(args.virtual_nodes)]
            for name, status in zip(names, statuses, strict=True):
                body = clusterprofile.manifest(name, "", name, {**status, "heartbeatTime": timestamps.rfc3339()})
                custom.create_cluster_custom_object(c.PROFILE_GROUP, c.PROFILE_VERSION, c.PROFILE_PLURAL, body)

            def all_held() -> bool:
                conn = http.client.HTTPConnection("127.0.0.1", extender.port, timeout=5)
                conn.request("GET", "/readyz")
                text = conn.getresponse().read().decode()
                return f"{args.virtual_nodes} capacity profiles" in text

            wait_for(all_held, 60, what="every profile in the extender")
            assert extender.proc is not None and extender.proc.pid is not None
            idle_rss, _ = rss_kib(extender.proc.pid)
            workload = pods(rng, args.calls)
            conn = http.client.HTTPConnection("127.0.0.1", extender.port, timeout=10)
            latencies: dict[str, list[float]] = {"filter": [], "prioritize": []}
            passed = []
            for verb in ("filter", "prioritize"):
                for pod in workload:
                    body = json.dumps({"Pod": pod, "NodeNames": names, "Nodes": None}).encode()
                    started = time.perf_counter()
                    conn.request("POST", f"/{verb}", body=body, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                    latencies[verb].append(time.perf_counter() - started)
                    assert response.status == 200, payload
                    if verb == "filter":
                        passed.append(len(json.loads(payload)["NodeNames"]))
            rss, peak = rss_kib(extender.proc.pid)
            server_side = extender.metrics()
        finally:
            extender.stop()

    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "virtual_nodes": args.virtual_nodes, "lower_nodes_each": args.lower_nodes, "calls_per_verb": args.calls,
        "profile_5000_nodes_50_signatures_bytes": profile.size(big), "profile_5000_build_seconds": round(big_build, 3),
        "profile_5000_nodes_every_node_on_the_frontier_bytes": profile.size(worst),
        "profile_5000_worst_truncated": worst.get("truncated"),
        "profile_1000_nodes_bytes_p50": quantile(sizes, 0.5), "profile_1000_build_seconds_p50":
            round(quantile(build_seconds, 0.5), 4),
        "passed_per_filter_p50": quantile(passed, 0.5),
        "extender_rss_mib": {"idle": round(idle_rss / 1024, 1), "after": round(rss / 1024, 1),
                             "peak": round(peak / 1024, 1)},
    }
    for verb, values in latencies.items():
        ms = [v * 1000 for v in values]
        result[f"{verb}_ms"] = {"p50": round(quantile(ms, 0.5), 3), "p99": round(quantile(ms, 0.99), 3),
                                "max": round(max(ms), 3)}
        count = server_side.total("tensile_scheduler_request_duration_seconds_count", verb=verb)
        total = server_side.total("tensile_scheduler_request_duration_seconds_sum", verb=verb)
        result[f"{verb}_server_mean_ms"] = round(1000 * total / count, 3) if count else None
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scheduler-{args.virtual_nodes}x{args.lower_nodes}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
