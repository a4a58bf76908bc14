"""Benchmark: a virtual node starting against a big upper cluster.

Creates S Secrets and P pods bound to the virtual node (each referencing one
of the Secrets) while the node is down, then starts it and measures:

- seconds until ``/readyz`` (every cache listed and synced, Node and Lease written);
- seconds until every pod runs downstairs and shows Running upstairs;
- the process's peak RSS.

Before the handlers used indexes, each Secret arriving in the cache scanned
every pod of the node, on the event loop: 20,000 Secrets and 2,000 pods
blocked it for about 30 s. Writes a JSON record to bench/results/.
Usage: python -m bench.startup [--secrets 20000] [--pods 2000]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import platform
import time
from typing import Any

from bench.pods import RESULTS, peak_rss_mib, running
from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, pod_manifest
from e2e.kwok import NodeSpec
from e2e.virtualnode import VirtualNodeProcess

VK = "vk-start"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secrets", type=int, default=20000)
    parser.add_argument("--pods", type=int, default=2000)
    args = parser.parse_args(argv)
    nodes = [NodeSpec(f"lower-{i}", cpu="64", memory="256Gi", pods="250") for i in range(-(-args.pods // 200))]
    with LocalCluster("start-upper", [NodeSpec("upper-0")]) as upper, LocalCluster("start-lower", nodes) as lower:
        create_namespace(upper, "bench")
        data = {"k": base64.b64encode(b"v" * 64).decode()}

        def secret(i: int) -> None:
            upper.core.create_namespaced_secret("bench", {"metadata": {"name": f"s{i}"}, "data": data})

        def pod(i: int) -> None:
            body = pod_manifest(f"p{i}", labels={"bench": "1"}, node_name=VK, volumes=[
                {"name": "s", "secret": {"secretName": f"s{i % args.secrets}"}}])
            upper.core.create_namespaced_pod("bench", body)

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(secret, range(args.secrets)))
            list(pool.map(pod, range(args.pods)))
        print(f"created {args.secrets} secrets and {args.pods} pods in {time.monotonic() - t0:.0f}s")
        vn = VirtualNodeProcess(upper, lower, VK, extra_args=["--pod-workers=16"])
        started = time.monotonic()
        vn.start(timeout=600)
        ready = time.monotonic() - started
        print(f"ready after {ready:.1f}s")
        try:
            wait_for(lambda: running(upper, "bench") >= args.pods, 900, interval=1, what="all pods Running upstairs")
            all_running = time.monotonic() - started
            rss = peak_rss_mib(vn.proc.pid) if vn.proc and vn.proc.pid else None
        finally:
            vn.stop()
    result: dict[str, Any] = {
        "secrets": args.secrets, "pods": args.pods,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "ready_seconds": round(ready, 1), "all_running_seconds": round(all_running, 1), "peak_rss_mib": rss,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"startup-{args.secrets}-secrets-{args.pods}-pods.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
