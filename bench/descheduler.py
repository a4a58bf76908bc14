"""Benchmark: one descheduler pass over many Pending pods, from caches (no API server).

A pass reads only its caches, so its cost is the candidate check per Pending pod plus the
writes for the few it moves. This measures the pass over N Pending pods bound to virtual
nodes (a tenth of them stuck, all blocked by a budget, so nothing is written) against a
fake client. Writes JSON to bench/results/ and prints it.
Usage: python -m bench.descheduler [--pods 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.pods import RESULTS
from descheduler.controller import Descheduler
from descheduler.policy import Options
from tests.fakes import FakeKube, seed
from tests.test_descheduler_policy import NOW, pod, unschedulable, vnode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=5000)
    args = parser.parse_args()
    d = Descheduler(FakeKube(), Options(cooldown=600))  # type: ignore[arg-type]
    seed(d.nodes, *(vnode(f"vk-{i}") for i in range(10)))
    pods = []
    for i in range(args.pods):
        stuck = i % 10 == 0
        p = pod(node=f"vk-{i % 10}", scheduled=unschedulable(120) if stuck else None)
        p["metadata"].update(name=f"p-{i}", uid=f"u-{i}", labels={"app": "web"})
        pods.append(p)
    seed(d.pods, *pods)
    seed(d.budgets, {"metadata": {"name": "web", "namespace": "ns"},
                     "spec": {"selector": {"matchLabels": {"app": "web"}}}, "status": {"disruptionsAllowed": 0}})
    times = []
    for _ in range(5):
        d.stayed.clear()
        started = time.perf_counter()
        outcomes = asyncio.run(d.run_once(NOW))
        times.append(time.perf_counter() - started)
    record = {"pods": args.pods, "candidates": len(outcomes), "pass_ms_min": round(min(times) * 1000, 1),
              "pass_ms_median": round(sorted(times)[len(times) // 2] * 1000, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"descheduler-{args.pods}-pods.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
