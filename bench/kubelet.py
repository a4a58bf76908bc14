"""Benchmark: the kubelet API relay against the lower cluster's own, with a real kubectl.

On one machine in one run (compare ratios, not seconds):

- logs: ``kubectl logs`` of a pod whose log holds N lines, upstairs (through the virtual
  node, relayed from the lower apiserver) and downstairs (straight from the lower one);
- port-forward: M MiB through ``kubectl port-forward`` to kwok's echo target, both ways;
- exec: K sequential ``kubectl exec -- true`` round trips, upstairs and downstairs;
- the virtual node's RSS and open files after all of it.

Writes a JSON record to bench/results/ and prints a summary.
Usage: python -m bench.kubelet [--lines 100000] [--mib 64] [--execs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import threading
import time
from typing import Any

from bench.pods import RESULTS, peak_rss_mib
from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, pod_manifest, wait_pod_running
from e2e.kwok import NodeSpec
from e2e.process import free_port
from e2e.virtualnode import VirtualNodeProcess

NS, POD, VK = "bench", "app", "vk-lower"


def _kubectl(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, timeout=600)


def timed_logs(cluster: LocalCluster, lines: int) -> float:
    started = time.monotonic()
    out = _kubectl(cluster, "logs", "-n", NS, POD)
    elapsed = time.monotonic() - started
    assert out.returncode == 0 and out.stdout.count(b"\n") >= lines, out.stderr[-500:]
    return elapsed


def timed_execs(cluster: LocalCluster, n: int) -> float:
    started = time.monotonic()
    for _ in range(n):
        assert _kubectl(cluster, "exec", "-n", NS, POD, "--", "true").returncode == 0
    return (time.monotonic() - started) / n


def timed_forward(cluster: LocalCluster, mib: int) -> float:
    port = free_port()
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "port-forward", "-n", NS,
                             f"pod/{POD}", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        stdout = proc.stdout
        assert stdout is not None
        wait_for(lambda: b"Forwarding from" in stdout.readline(), 30, what="port-forward listening")
        payload = os.urandom(1024 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            received = [0]

            def drain() -> None:
                while received[0] < mib * len(payload):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        return
                    received[0] += len(chunk)

            reader = threading.Thread(target=drain)
            started = time.monotonic()
            reader.start()
            for _ in range(mib):
                s.sendall(payload)
            reader.join(300)
            elapsed = time.monotonic() - started
            assert received[0] == mib * len(payload), received[0]
        return elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--execs", type=int, default=20)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with LocalCluster("upper", [NodeSpec("upper-0")]) as upper, LocalCluster("lower", [NodeSpec("lower-0")]) as lower:
        vn = VirtualNodeProcess(upper, lower, VK)
        vn.start()
        try:
            create_namespace(upper, NS)
            upper.core.create_namespaced_pod(NS, pod_manifest(POD, node_name=VK))  # type: ignore[arg-type]
            wait_pod_running(upper, NS, POD, timeout=90)
            wait_pod_running(lower, NS, POD, timeout=30)
            for start in range(0, args.lines, 10_000):
                lower.write_pod_log([f"line {i} " + "x" * 60 for i in range(start, min(args.lines, start + 10_000))])
            record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                                      "python": platform.python_version(), "lines": args.lines, "mib": args.mib,
                                      "execs": args.execs}
            for side, cluster in (("direct", lower), ("via_tensile", upper)):
                record[f"logs_seconds_{side}"] = round(timed_logs(cluster, args.lines), 3)
                record[f"exec_seconds_{side}"] = round(timed_execs(cluster, args.execs), 3)
                record[f"forward_mib_per_s_{side}"] = round(args.mib / timed_forward(cluster, args.mib), 1)
            record["logs_ratio"] = round(record["logs_seconds_via_tensile"] / record["logs_seconds_direct"], 2)
            record["exec_ratio"] = round(record["exec_seconds_via_tensile"] / record["exec_seconds_direct"], 2)
            forward = record["forward_mib_per_s_direct"] / record["forward_mib_per_s_via_tensile"]
            record["forward_ratio"] = round(forward, 2)
            assert vn.proc is not None and vn.proc.pid is not None
            record["virtual_node_peak_rss_mib"] = peak_rss_mib(vn.proc.pid)
            record["virtual_node_open_files"] = len(os.listdir(f"/proc/{vn.proc.pid}/fd"))
            record["open_streams_after"] = vn.metrics().total("tensile_kubelet_open_streams")
        finally:
            vn.stop()
    out = RESULTS / f"kubelet-{args.lines}-lines-{args.mib}-mib.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
