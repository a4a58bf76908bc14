"""Benchmark: N pods through tensile against the real limit, the lower and upper clusters' own work.

One run brings up a local pair (the lower cluster with ``--lower-nodes`` kwok nodes; the upper one
with one kwok node, the webhook and, for the ``tensile`` case, a fresh virtual node) and measures,
for each N of ``--pods``:

- ``lower``: N pods created straight in the lower cluster, until all are Running;
- ``upper``: N pods created in the upper cluster onto its kwok node, until all are Running (the
  upper cluster's own share of what tensile's path costs);
- ``tensile``: N pods created upstairs with ``virtual-pod=true`` (through the webhook and the upper
  scheduler onto the virtual node), until all are reported Running upstairs;
- then, for each case, the deletion of all N, until they are gone on both sides.

Reported per case: wall times and the ratios ``tensile / lower`` and ``tensile / (upper + lower)``;
per-pod latency p50/p90/p99 from upper creation to Running upstairs, and tensile's own share per
hop (upper bind -> lower create; lower Running -> upper Running), from watch events this process
stamps as it receives them (object timestamps have one-second resolution; they and tensile's own
histograms are kept as cross-checks); API requests per pod by verb on each apiserver
(``apiserver_request_total``, all clients) and tensile's own (``tensile_api_requests_total``),
tensile's writes per pod and retries; CPU seconds of every component, tensile's per 1,000 pods,
and tensile's peak RSS (VmHWM, a fresh process per N); pods lost or duplicated (from every lower
copy seen, by the upper UID it carries).

Then a steady-load run: pods created upstairs at ``--steady-rate`` per second for
``--steady-seconds``, reporting tensile's added latency per hop when the machine is not saturated.

Pods are created and deleted by ``--clients`` threads over keep-alive connections, with no client
model decoding, so the load generator costs the same in every case. Results go to ``--out``
(default bench/results/): ``pods-<N>.json``, ``pods-steady.json``, ``pods.md``, ``pods-<N>.png``,
``pods-steady.png`` and, with ``--profile``, the virtual node's profile of each tensile case.

Usage: python -m bench.pods [--pods 1000,5000] [--steady-rate 20 --steady-seconds 120]
                            [--profile py-spy|pyinstrument|none] [--cases lower,upper,tensile] [--audit]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import http.client
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from e2e import audit
from e2e.cluster import LocalCluster, runs_root, wait_for
from e2e.kube_helpers import create_namespace
from e2e.kwok import NodeSpec
from e2e.metrics import Samples, quantile
from e2e.versions import ETCD, KWOK
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c
from tensile import quantity

if not __package__:  # run as a script (python bench/pods.py): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import report

RESULTS = Path(__file__).parent / "results"
#: Every benchmark pod carries this label, valued ``<case>-<N>`` (copied onto lower copies by tensile).
BENCH_LABEL = "tensile-bench"
VN_NAME = "vk-bench"
USER_AGENT = "tensile-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILERS = ("none", "py-spy", "pyinstrument")


# --- kept for bench/kubelet.py and bench/startup.py ------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident memory."""
    kib = report.status_kib(Path(f"/proc/{pid}/status").read_text(), "VmHWM")
    return round((kib or 0) / 1024, 1)


def running(cluster: LocalCluster, ns: str) -> int:
    pods = cluster.core.list_namespaced_pod(ns, label_selector="bench=1").items
    return sum(1 for p in pods if p.status is not None and p.status.phase == "Running")


# --- the API, raw ------------------------------------------------------------------------------------


class Api:
    """One apiserver over keep-alive HTTPS, one connection per thread, JSON bodies, no model decoding."""

    def __init__(self, cluster: LocalCluster) -> None:
        url = urllib.parse.urlsplit(cluster.server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
        pki = cluster.dir / "pki"
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._local = threading.local()
        #: Requests sent again (connection dropped, 429): a run with many is not a clean measurement.
        self.retries = 0

    def connect(self, timeout: float | None = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(6):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                out = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 5:
                    raise
                self.retries += 1
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status == 429 and attempt < 5:
                self.retries += 1
                time.sleep(float(resp.getheader("Retry-After") or 1))
                continue
            return resp.status, out
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)


def pod_body(name: str, label: str, virtual: bool) -> dict[str, Any]:
    """A small pod; ``virtual``: opted in (``virtual-pod=true``), so the webhook sends it to virtual nodes."""
    labels = {BENCH_LABEL: label}
    if virtual:
        labels[c.VIRTUAL_POD_LABEL] = c.VIRTUAL_POD_VALUE
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                     "terminationGracePeriodSeconds": 5}}


class Load:
    """Creates and deletes pods through ``clients`` threads, remembering when each call started."""

    def __init__(self, api: Api, clients: int) -> None:
        self.api = api
        self.pool = concurrent.futures.ThreadPoolExecutor(clients, thread_name_prefix="load")
        self.started: dict[str, float] = {}

    def create(self, ns: str, name: str, label: str, virtual: bool) -> None:
        self.started[name] = time.monotonic()
        status, body = self.api.request("POST", f"/api/v1/namespaces/{ns}/pods", pod_body(name, label, virtual))
        if status not in (201, 409):  # 409: a retried create the first attempt had made
            raise RuntimeError(f"create {ns}/{name}: {status} {body[:300]!r}")

    def delete(self, ns: str, name: str) -> None:
        self.started[name] = time.monotonic()
        status, body = self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
        if status not in (200, 202, 404):
            raise RuntimeError(f"delete {ns}/{name}: {status} {body[:300]!r}")

    def run(self, fn: Callable[[str], None], names: list[str]) -> None:
        for f in [self.pool.submit(fn, n) for n in names]:
            f.result()

    def paced(self, fn: Callable[[str], None], names: list[str], rate: float) -> None:
        """Submit ``fn(name)`` at ``rate`` per second (the pool absorbs a slow call)."""
        t0 = time.monotonic()
        futures = []
        for i, name in enumerate(names):
            pause = t0 + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            futures.append(self.pool.submit(fn, name))
        for f in futures:
            f.result()

    def close(self) -> None:
        self.pool.shutdown()


# --- watches: when each pod did what, as received here ---------------------------------------------


@dataclasses.dataclass
class Seen:
    """One pod as a watch saw it; times are ``time.monotonic()`` at receipt."""

    uid: str
    namespace: str
    name: str
    label: str
    added: float
    created_ts: str = ""
    upper_uid: str | None = None
    bound: float | None = None
    running: float | None = None
    deleted: float | None = None
    scheduled_ts: str | None = None


class PodWatch(threading.Thread):
    """Watches every benchmark pod of one cluster and stamps each change as it arrives.

    Counters by ``(label, event)`` let the main thread wait cheaply; ``last`` holds when each
    count last grew (the end of a phase, to the watch's precision, not the poll's).
    """

    def __init__(self, api: Api, side: str) -> None:
        super().__init__(daemon=True, name=f"watch-{side}")
        self.api = api
        self.side = side
        self.pods: dict[str, Seen] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.last: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.listed = threading.Event()
        self.conn: http.client.HTTPSConnection | None = None
        self.rv = ""
        self.relists = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._list()
            self.listed.set()
            while not self.stopping.is_set():
                self._watch()
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            if not self.stopping.is_set():
                self.error = exc
        finally:
            self.listed.set()

    def _list(self) -> None:
        now = time.monotonic()
        body = self.api.get_json(f"/api/v1/pods?labelSelector={BENCH_LABEL}")
        for obj in body.get("items") or []:
            self._observe("ADDED", obj, now)
        self.rv = body["metadata"]["resourceVersion"]

    def _watch(self) -> None:
        self.conn = self.api.connect(timeout=None)
        query = urllib.parse.urlencode({"watch": "1", "labelSelector": BENCH_LABEL, "resourceVersion": self.rv,
                                        "allowWatchBookmarks": "true", "timeoutSeconds": "3600"})
        try:
            self.conn.request("GET", f"/api/v1/pods?{query}", headers={"User-Agent": USER_AGENT})
            resp = self.conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch {self.side}: {resp.status} {resp.read()[:300]!r}")
            for line in resp:
                now = time.monotonic()
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:  # expired: list again (changes in the gap get the list's time)
                        self.relists += 1
                        self._list()
                        return
                    raise RuntimeError(f"watch {self.side}: {obj}")
                self.rv = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._observe(kind, obj, now)
        except (OSError, http.client.HTTPException):
            if not self.stopping.is_set():
                raise
        finally:
            self.conn.close()

    def _count(self, label: str, event: str, now: float) -> None:
        self.counts[(label, event)] += 1
        self.last[(label, event)] = now

    def _observe(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        with self.lock:
            seen = self.pods.get(meta["uid"])
            if seen is None:
                seen = Seen(meta["uid"], meta.get("namespace", ""), meta.get("name", ""),
                            (meta.get("labels") or {}).get(BENCH_LABEL, ""), now, meta.get("creationTimestamp", ""),
                            (meta.get("annotations") or {}).get(c.UPPER_UID_ANNOTATION))
                self.pods[seen.uid] = seen
                self._count(seen.label, "added", now)
            if seen.bound is None and spec.get("nodeName"):
                seen.bound = now
                self._count(seen.label, "bound", now)
            if seen.running is None and status.get("phase") == "Running":
                seen.running = now
                self._count(seen.label, "running", now)
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
                    seen.scheduled_ts = cond.get("lastTransitionTime")
            if kind == "DELETED" and seen.deleted is None:
                seen.deleted = now
                self._count(seen.label, "deleted", now)

    def count(self, label: str, event: str) -> int:
        if self.error is not None:
            raise RuntimeError(f"watch of the {self.side} cluster failed: {self.error}") from self.error
        with self.lock:
            return self.counts[(label, event)]

    def last_time(self, label: str, event: str) -> float | None:
        with self.lock:
            return self.last.get((label, event))

    def of(self, label: str) -> list[Seen]:
        with self.lock:
            return [dataclasses.replace(s) for s in self.pods.values() if s.label == label]

    def stop(self) -> None:
        self.stopping.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self.join(10)


# --- snapshots: requests, CPU -------------------------------------------------------------------------


@dataclasses.dataclass
class Snapshot:
    mono: float
    wall: float
    cpu: dict[str, float]
    apiserver: dict[str, dict[str, float]]
    tensile: Samples | None


def cpu_seconds(pid: int) -> float:
    return report.cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


@dataclasses.dataclass
class Bench:
    """Everything a case needs: both clusters, their raw APIs and watches, the options."""

    upper: LocalCluster
    lower: LocalCluster
    webhook: WebhookProcess
    apis: dict[str, Api]
    watches: dict[str, PodWatch]
    args: argparse.Namespace
    audit_logs: dict[str, Path]
    vn: VirtualNodeProcess | None = None

    def cluster(self, side: str) -> LocalCluster:
        return self.upper if side == "upper" else self.lower

    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for side in ("upper", "lower"):
            for name, proc in self.cluster(side).processes.items():
                if proc.pid is not None and proc.alive():
                    out[f"{side}/{name}"] = proc.pid
        if self.webhook.proc is not None and self.webhook.proc.pid is not None:
            out["upper/webhook"] = self.webhook.proc.pid
        if self.vn is not None and self.vn.proc is not None and self.vn.proc.pid is not None:
            out["tensile"] = self.vn.proc.pid
        return out

    def snapshot(self) -> Snapshot:
        cpu = {}
        for name, pid in self.pids().items():
            try:
                cpu[name] = cpu_seconds(pid)
            except OSError:
                pass  # exited
        t = os.times()
        cpu["bench client"] = t.user + t.system
        apiserver = {}
        for side in ("upper", "lower"):
            status, body = self.cluster(side).get_raw("/metrics", timeout=60)
            if status != 200:
                raise RuntimeError(f"{side} apiserver /metrics: {status}")
            apiserver[side] = report.apiserver_requests(body.decode())
        return Snapshot(time.monotonic(), time.time(), cpu, apiserver, self.vn.metrics() if self.vn else None)


def tensile_series(s: Samples | None) -> dict[str, float]:
    if s is None:
        return {}
    return report.tensile_requests((labels, v) for n, labels, v in s.series if n == "tensile_api_requests_total")


def phase_requests(a: Snapshot, b: Snapshot, n: int) -> dict[str, dict[str, float]]:
    """All clients' requests per pod between two snapshots, by verb, on each apiserver."""
    return {side: report.per_pod(report.by_verb(report.delta(b.apiserver[side], a.apiserver[side])), n)
            for side in ("upper", "lower")}


def phase_cpu(a: Snapshot, b: Snapshot) -> dict[str, float]:
    return {k: round(v - a.cpu.get(k, v), 2) for k, v in sorted(b.cpu.items()) if k in a.cpu}


def audit_writes(logs: dict[str, Path], a: Snapshot, b: Snapshot, n: int) -> dict[str, dict[str, float]]:
    """With ``--audit``: each apiserver's writes per pod between two snapshots, by client and resource."""
    out = {}
    for side, log in logs.items():
        events = [e for e in audit.writes(log) if a.wall <= e["received"].timestamp() <= b.wall]
        out[side] = report.per_pod(report.audit_counts(events), n)
    return out


# --- the cases --------------------------------------------------------------------------------------


def wait_count(watch: PodWatch, label: str, event: str, n: int, timeout: float, what: str) -> None:
    try:
        wait_for(lambda: watch.count(label, event) >= n, timeout, interval=0.05, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} ({watch.count(label, event)} of {n} seen)") from None


def lat(values: list[float]) -> dict[str, Any]:
    return report.summary(values)


def k8s_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def tensile_latencies(upper: list[Seen], lower: list[Seen], deleted_from: dict[str, float] | None
                      ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per-pod latencies of pods through tensile, from the watches (and object timestamps, to the second)."""
    copies: dict[str, Seen] = {}
    for low in sorted(lower, key=lambda s: s.added):
        if low.upper_uid:
            copies.setdefault(low.upper_uid, low)
    series: dict[str, list[float]] = {"end_to_end": [], "bind_to_lower_create": [],
                                      "lower_running_to_upper_running": [], "lower_create_to_running": [],
                                      "bind_to_lower_create_from_timestamps": [], "delete_to_gone": []}
    for up in upper:
        if up.running is not None:
            series["end_to_end"].append(up.running - up.added)
        copy = copies.get(up.uid)
        if copy is None:
            continue
        low = copy
        if up.bound is not None:
            series["bind_to_lower_create"].append(low.added - up.bound)
        if low.running is not None and up.running is not None:
            series["lower_running_to_upper_running"].append(up.running - low.running)
        if low.running is not None:
            series["lower_create_to_running"].append(low.running - low.added)
        created, scheduled = k8s_time(low.created_ts), k8s_time(up.scheduled_ts)
        if created is not None and scheduled is not None:
            series["bind_to_lower_create_from_timestamps"].append(created - scheduled)
        if deleted_from is not None and up.name in deleted_from and up.deleted is not None:
            gone = max(up.deleted, low.deleted or up.deleted)
            series["delete_to_gone"].append(gone - deleted_from[up.name])
    return {k: lat(v) for k, v in series.items()}, series


def tensile_own(a: Snapshot, b: Snapshot, c_: Snapshot, n: int, pid: int | None) -> dict[str, Any]:
    """tensile's requests, writes, retries, CPU and memory over the create (a..b) and delete (b..c_) phases."""
    r0, r1, r2 = tensile_series(a.tensile), tensile_series(b.tensile), tensile_series(c_.tensile)
    create, delete = report.delta(r1, r0), report.delta(r2, r1)

    def per_pod_by_side(counts: dict[str, float], side: str) -> dict[str, float]:
        """Requests by verb of one side's clients, without the clock-driven ones (heartbeat, election)."""
        return report.per_pod(report.by_verb({k: v for k, v in counts.items() if report.side_of(k) == side
                                              and k.rpartition(":")[0] not in report.PERIODIC_CLIENTS}), n)
    w_create, w_delete = report.tensile_writes(create), report.tensile_writes(delete)
    cpu_create = b.cpu.get("tensile", 0.0) - a.cpu.get("tensile", 0.0)
    cpu_delete = c_.cpu.get("tensile", 0.0) - b.cpu.get("tensile", 0.0)

    def total(s: Samples | None, name: str) -> float:
        return s.total(name) if s is not None else 0.0

    assert a.tensile is not None and b.tensile is not None
    histograms = {f"{h}_{label}": quantile(a.tensile, b.tensile, f"tensile_pod_{h}_latency_seconds", q)
                  for h in ("create", "running") for label, q in (("p50", 0.5), ("p99", 0.99))}
    return {
        "requests_per_pod": {
            "create": {side: per_pod_by_side(create, side) for side in ("upper", "lower")},
            "delete": {side: per_pod_by_side(delete, side) for side in ("upper", "lower")},
        },
        "requests_per_pod_by_client": {"create": report.per_pod(create, n), "delete": report.per_pod(delete, n)},
        "writes_per_pod": {
            "create": round(sum(w_create.values()) / n, 2),
            "delete": round(sum(w_delete.values()) / n, 2),
            "total": round((sum(w_create.values()) + sum(w_delete.values())) / n, 2),
            "create_by_side_and_verb": report.per_pod(w_create, n),
            "delete_by_side_and_verb": report.per_pod(w_delete, n),
        },
        "pod_syncs_per_pod": report.per_pod(report.delta(
            {f"{ls.get('operation')}:{ls.get('result')}": v for nm, ls, v in (c_.tensile.series if c_.tensile else [])
             if nm == "tensile_pod_syncs_total"},
            {f"{ls.get('operation')}:{ls.get('result')}": v for nm, ls, v in a.tensile.series
             if nm == "tensile_pod_syncs_total"}), n),
        "workqueue_retries": int(total(c_.tensile, "tensile_workqueue_retries_total")
                                 - total(a.tensile, "tensile_workqueue_retries_total")),
        "api_retries": int(total(c_.tensile, "tensile_api_retries_total")
                           - total(a.tensile, "tensile_api_retries_total")),
        "cpu_seconds": {"create": round(cpu_create, 2), "delete": round(cpu_delete, 2)},
        "cpu_seconds_per_1000_pods": round((cpu_create + cpu_delete) / n * 1000, 2),
        "cpu_ms_per_pod": round((cpu_create + cpu_delete) / n * 1000, 3),
        "peak_rss_mib": peak_rss_mib(pid) if pid else None,
        "histograms_seconds": {k: None if v is None else round(v, 3) for k, v in histograms.items()},
    }


def run_case(b: Bench, case: str, n: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Create N pods for ``case``, wait until all Running, delete them, wait until all are gone."""
    side = "lower" if case == "lower" else "upper"
    cluster, watch = b.cluster(side), b.watches[side]
    label, ns = f"{case}-{n}", f"bench-{case}-{n}"
    create_namespace(cluster, ns)
    names = [f"p{i:05d}" for i in range(n)]
    load = Load(b.apis[side], b.args.clients)
    timeout = b.args.timeout
    retries = b.apis[side].retries
    s0 = b.snapshot()
    t0 = time.monotonic()
    load.run(lambda name: load.create(ns, name, label, case == "tensile"), names)
    created = time.monotonic()
    wait_count(watch, label, "running", n, timeout, f"{n} pods Running in {cluster.name} ({case})")
    t_running = watch.last_time(label, "running") or time.monotonic()
    s1 = b.snapshot()
    print(f"  {case}: {n} pods Running in {t_running - t0:.1f}s (creates sent in {created - t0:.1f}s)", flush=True)
    lower_copies = b.watches["lower"].count(label, "added") if case == "tensile" else 0

    load.started = {}
    d0 = time.monotonic()
    load.run(lambda name: load.delete(ns, name), names)
    wait_count(watch, label, "deleted", n, timeout, f"{n} pods gone in {cluster.name} ({case})")
    ends = [watch.last_time(label, "deleted") or time.monotonic()]
    if case == "tensile":
        copies = b.watches["lower"].count(label, "added")
        wait_count(b.watches["lower"], label, "deleted", copies, timeout, f"lower copies gone ({case})")
        ends.append(b.watches["lower"].last_time(label, "deleted") or time.monotonic())
    s2 = b.snapshot()
    load.close()
    print(f"  {case}: {n} pods gone in {max(ends) - d0:.1f}s", flush=True)

    upper_seen = watch.of(label)
    result: dict[str, Any] = {
        "create_seconds": round(t_running - t0, 2),
        "create_calls_seconds": round(created - t0, 2),
        "delete_seconds": round(max(ends) - d0, 2),
        "requests_per_pod": {"create": phase_requests(s0, s1, n), "delete": phase_requests(s1, s2, n)},
        "requests_per_pod_by_resource": {
            "create": {side: report.per_pod(report.delta(s1.apiserver[side], s0.apiserver[side]), n)
                       for side in ("upper", "lower")},
        },
        "cpu_seconds": {"create": phase_cpu(s0, s1), "delete": phase_cpu(s1, s2)},
        "bench_client_retries": b.apis[side].retries - retries,
    }
    if b.audit_logs:
        result["audit_writes_per_pod"] = {"create": audit_writes(b.audit_logs, s0, s1, n),
                                          "delete": audit_writes(b.audit_logs, s1, s2, n)}
    series: dict[str, list[float]] = {"running": sorted(s.running - t0 for s in upper_seen if s.running)}
    if case == "tensile":
        lower_seen = b.watches["lower"].of(label)
        result["latency"], lat_series = tensile_latencies(upper_seen, lower_seen, load.started)
        series.update(lat_series)
        series["lower_running"] = sorted(s.running - t0 for s in lower_seen if s.running)
        result["copies"] = report.copies_check((s.uid for s in upper_seen),
                                               ((s.uid, s.upper_uid or "") for s in lower_seen))
        result["copies"]["lower_copies_when_all_running"] = lower_copies
        pid = b.vn.proc.pid if b.vn is not None and b.vn.proc is not None else None
        result["tensile"] = tensile_own(s0, s1, s2, n, pid)
    else:
        result["latency"] = {"create_to_running": lat([s.running - s.added for s in upper_seen if s.running])}
    return result, series


# --- the virtual node, fresh per tensile run, and its profile -------------------------------------


class BenchVirtualNode(VirtualNodeProcess):
    """The virtual node, optionally started under ``python -m pyinstrument``."""

    def __init__(self, *args: Any, wrap: list[str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.wrap = wrap or []

    def argv(self) -> list[str]:
        argv = super().argv()
        return [argv[0], *self.wrap, *argv[1:]]


def profiler_available(tool: str) -> str | None:
    """Why ``tool`` cannot be used here; None when it can."""
    if tool == "py-spy" and not (Path(sys.executable).parent / "py-spy").exists() and not shutil.which("py-spy"):
        return "py-spy is not installed (pip install py-spy)"
    if tool == "pyinstrument" and importlib.util.find_spec("pyinstrument") is None:
        return "pyinstrument is not installed (pip install pyinstrument)"
    return None


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def start_py_spy(pid: int, path: Path, rate: int) -> subprocess.Popen[bytes]:
    """``py-spy record`` attached to ``pid`` (CPU samples only, by function), until ``stop_py_spy``."""
    with open(path.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--function", "--nonblocking",
                                 "--rate", str(rate), "--format", "raw", "--output", str(path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"py-spy exited with {proc.returncode}: {path.with_suffix('.log').read_text()[-2000:]}")
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if not path.exists():
        return {"tool": "py-spy", "error": path.with_suffix(".log").read_text()[-2000:]}
    top = report.top_frames(path.read_text(), only="tensile/", max_share=0.9)
    return {"tool": "py-spy", "file": path.name, "top": top}


def pyinstrument_result(path: Path) -> dict[str, Any]:
    """The text report pyinstrument wrote when the virtual node exited."""
    if not path.exists():
        return {"tool": "pyinstrument", "error": f"{path} not written (did the virtual node exit cleanly?)"}
    return {"tool": "pyinstrument", "file": path.name}


def wait_virtual_node(upper: LocalCluster, n: int, timeout: float = 120) -> None:
    """The virtual Node is Ready with room for ``n`` pods (else the first pods would wait out scheduler backoff)."""
    def ready() -> bool:
        status = upper.core.read_node(VN_NAME).status
        if status is None:
            return False
        conds = {cond.type: cond.status for cond in status.conditions or []}
        # allocatable is a quantity ("11k"), as a kubelet publishes it
        return conds.get("Ready") == "True" and quantity.parse((status.allocatable or {}).get("pods", "0")) >= n

    wait_for(ready, timeout, interval=0.2, what=f"virtual node {VN_NAME} Ready with room for {n} pods")


@contextlib.contextmanager
def virtual_node(b: Bench, n: int, profile_tag: str | None) -> Iterator[dict[str, Any]]:
    """A fresh virtual node for one tensile run; with ``--profile`` and a tag, profiled into the dict yielded."""
    tool = b.args.profile if profile_tag is not None else "none"
    profile: dict[str, Any] = {}
    base = b.args.out / f"profile-tensile-{profile_tag}"
    # pyinstrument keeps every sample in the process until it exits (so its RSS grows): 10 ms, not 1 ms.
    wrap = ["-m", "pyinstrument", "--interval=0.01", "-r", "text", "-o", str(base.with_suffix(".txt"))] \
        if tool == "pyinstrument" else []
    vn = BenchVirtualNode(b.upper, b.lower, VN_NAME, extra_args=shlex.split(b.args.virtual_node_args), wrap=wrap)
    with vn:
        b.vn = vn
        try:
            wait_virtual_node(b.upper, n)
            spy = None
            if tool == "py-spy":
                assert vn.proc is not None and vn.proc.pid is not None
                spy = start_py_spy(vn.proc.pid, base.with_suffix(".txt"), b.args.py_spy_rate)
            try:
                yield profile
            finally:
                if spy is not None:
                    profile.update(stop_py_spy(spy, base.with_suffix(".txt")))
        finally:
            b.vn = None
    if tool == "pyinstrument":
        profile.update(pyinstrument_result(base.with_suffix(".txt")))


# --- steady load --------------------------------------------------------------------------------------


def run_steady(b: Bench) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Pods created upstairs at a fixed rate: tensile's added latency when the machine is not saturated."""
    rate, seconds = b.args.steady_rate, b.args.steady_seconds
    n = max(1, round(rate * seconds))
    label, ns = "steady", "bench-steady"
    up, low = b.watches["upper"], b.watches["lower"]
    create_namespace(b.upper, ns)
    names = [f"s{i:06d}" for i in range(n)]
    timeout = b.args.timeout
    with virtual_node(b, n, None):
        load = Load(b.apis["upper"], max(b.args.clients, math.ceil(rate / 5)))
        s0 = b.snapshot()
        t0 = time.monotonic()
        load.paced(lambda name: load.create(ns, name, label, True), names, rate)
        calls = sorted(load.started.values())
        wait_count(up, label, "running", n, timeout, f"{n} steady pods Running upstairs")
        s1 = b.snapshot()
        print(f"  steady: {n} pods at {rate}/s, all Running {time.monotonic() - calls[-1]:.1f}s after the last create",
              flush=True)
        load.started = {}
        load.run(lambda name: load.delete(ns, name), names)
        wait_count(up, label, "deleted", n, timeout, "steady pods gone upstairs")
        wait_count(low, label, "deleted", low.count(label, "added"), timeout, "steady lower copies gone")
        s2 = b.snapshot()
        load.close()
        upper_seen, lower_seen = up.of(label), low.of(label)
        latency, series = tensile_latencies(upper_seen, lower_seen, load.started)
        pid = b.vn.proc.pid if b.vn is not None and b.vn.proc is not None else None
        own = tensile_own(s0, s1, s2, n, pid)
    series["created"] = sorted(s.added - t0 for s in upper_seen)
    series["running"] = sorted(s.running - t0 for s in upper_seen if s.running)
    result = {
        "rate": rate, "seconds": seconds, "pods": n,
        "achieved_rate": round((n - 1) / (calls[-1] - calls[0]), 2) if n > 1 and calls[-1] > calls[0] else None,
        "latency": latency,
        "tensile": own,
        "copies": report.copies_check((s.uid for s in upper_seen), ((s.uid, s.upper_uid or "") for s in lower_seen)),
        "requests_per_pod": {"create": phase_requests(s0, s1, n), "delete": phase_requests(s1, s2, n)},
        "cpu_seconds": {"create": phase_cpu(s0, s1), "delete": phase_cpu(s1, s2)},
    }
    return result, series


# --- plots --------------------------------------------------------------------------------------------

HOPS = (("end_to_end", "upper create → Running upstairs"),
        ("bind_to_lower_create", "tensile: upper bind → lower create"),
        ("lower_running_to_upper_running", "tensile: lower Running → upper Running"))


def _cdf(ax: Any, series: dict[str, list[float]]) -> None:
    for key, text in HOPS:
        values = sorted(v * 1000 for v in series.get(key, []))
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=text)
    # Logarithmic beyond 1 ms, linear within: a hop whose two watches' delivery delays differed by more
    # than the hop took comes out negative, and shows.
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("milliseconds (log beyond ±1 ms)")
    ax.set_ylabel("fraction of pods")
    ax.set_title("latency per pod (tensile case)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_size(path: Path, n: int, curves: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for case, series in curves.items():
        xs = series.get("running", [])
        text = "tensile (upstairs)" if case == "tensile" else case
        left.step(xs, range(1, len(xs) + 1), where="post", label=text)
        if case == "tensile" and series.get("lower_running"):
            low = series["lower_running"]
            left.step(low, range(1, len(low) + 1), where="post", linestyle="--", label="tensile (lower copies)")
    left.set_xlabel("seconds since the first create")
    left.set_ylabel("pods Running")
    left.set_title(f"{n:,} pods: Running over time")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    if "tensile" in curves:
        _cdf(right, curves["tensile"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steady(path: Path, s: dict[str, Any], series: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for key, text in (("created", "created upstairs"), ("running", "Running upstairs")):
        xs = series.get(key, [])
        left.step(xs, range(1, len(xs) + 1), where="post", label=text)
    left.set_xlabel("seconds since the first create")
    left.set_ylabel("pods")
    left.set_title(f"steady load: {s['rate']}/s for {s['seconds']} s")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    _cdf(right, series)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run --------------------------------------------------------------------------------------------


def environment(args: argparse.Namespace, upper: LocalCluster) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    _, body = upper.get_raw("/version")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    mem = report.status_kib(Path("/proc/meminfo").read_text(), "MemTotal") or 0

    def git(*a: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=30)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "tensile", "webhook"):
        commit += " (modified)"
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem / 1024 / 1024, 1),
        "python": platform.python_version(), "kubernetes": json.loads(body).get("gitVersion", "?"),
        "etcd": ETCD, "kwok": KWOK, "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "lower_nodes": args.lower_nodes, "clients": args.clients,
        "virtual_node_args": shlex.split(args.virtual_node_args), "profile": args.profile,
    }


def sizes(text: str) -> list[int]:
    out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if not out or any(x <= 0 for x in out):
        raise argparse.ArgumentTypeError("a comma-separated list of positive pod counts, e.g. 1000,5000")
    return out


def cases(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in report.CASES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(report.CASES)}")
    return [x for x in report.CASES if x in out]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pods", type=sizes, default=[1000, 5000], help="pod counts, comma-separated (10000 opt-in)")
    p.add_argument("--cases", type=cases, default=list(report.CASES), help="which of lower,upper,tensile to run")
    p.add_argument("--steady-rate", type=float, default=20.0, help="pods per second in the steady-load run")
    p.add_argument("--steady-seconds", type=float, default=120.0, help="length of the steady-load run (0: skip)")
    p.add_argument("--profile", choices=PROFILERS, default="none",
                   help="profile the virtual node during each tensile case")
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--lower-nodes", type=int, default=100, help="kwok nodes in the lower cluster")
    p.add_argument("--clients", type=int, default=8, help="threads creating and deleting pods")
    p.add_argument("--timeout", type=float, default=1800, help="seconds any one phase may take")
    p.add_argument("--virtual-node-args", default="--pod-sync-workers=16",
                   help="extra virtual node flags, one string: --virtual-node-args='--pod-sync-workers=32 --v=2'")
    p.add_argument("--audit", action="store_true",
                   help="audit both apiservers' writes and report them per pod by client (costs apiserver CPU)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results go (default bench/results)")
    return p.parse_args(argv)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a CI timeout, a closed terminal) unwind like Ctrl-C: every cluster, the
    webhook and the virtual node are torn down by their context managers, logs kept."""
    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    if args.profile != "none" and (why := profiler_available(args.profile)):
        print(f"--profile {args.profile}: {why}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    steady_n = round(args.steady_rate * args.steady_seconds)
    biggest = max([*args.pods, steady_n])
    per_node = max(110, math.ceil(1.2 * biggest / args.lower_nodes))
    lower_nodes = [NodeSpec(f"lower-{i:03d}", cpu="64", memory="256Gi", pods=str(per_node))
                   for i in range(args.lower_nodes)]
    upper_nodes = [NodeSpec("upper-0", cpu=str(max(64, math.ceil(biggest * 0.012))), memory="8Ti",
                            pods=str(max(110, math.ceil(1.2 * biggest))))]
    audit_logs: dict[str, Path] = {}
    extra: dict[str, list[str]] = {"upper": [], "lower": []}
    if args.audit:
        d = runs_root() / f"bench-audit-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        for side in ("upper", "lower"):
            extra[side], audit_logs[side] = audit.audit_args(d, side)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    steady: dict[str, Any] | None = None
    with LocalCluster("bench-upper", upper_nodes, apiserver_args=extra["upper"]) as upper, \
            LocalCluster("bench-lower", lower_nodes, apiserver_args=extra["lower"]) as lower, \
            WebhookProcess(upper) as webhook:
        print(f"clusters and webhook up in {time.monotonic() - started:.0f}s "
              f"(lower: {args.lower_nodes} kwok nodes; logs in {upper.dir}, {lower.dir})", flush=True)
        apis = {"upper": Api(upper), "lower": Api(lower)}
        watches = {side: PodWatch(apis[side], side) for side in ("upper", "lower")}
        for w in watches.values():
            w.start()
            w.listed.wait(60)
        b = Bench(upper, lower, webhook, apis, watches, args, audit_logs)
        env = environment(args, upper)
        try:
            for n in args.pods:
                print(f"{n} pods:", flush=True)
                r: dict[str, Any] = {"pods": n, "environment": env, "cases": {}}
                curves: dict[str, dict[str, list[float]]] = {}
                for case in args.cases:
                    if case == "tensile":
                        with virtual_node(b, n, str(n)) as profile:
                            r["cases"][case], curves[case] = run_case(b, case, n)
                        if profile:
                            r["profile"] = profile
                    else:
                        r["cases"][case], curves[case] = run_case(b, case, n)
                r["ratios"] = report.ratios(r["cases"])
                results.append(r)
                write_json(args.out / f"pods-{n}.json", r)
                plot_size(args.out / f"pods-{n}.png", n, curves)
                (args.out / "pods.md").write_text(report.markdown(results, steady, env))
            if args.steady_seconds > 0:
                print(f"steady load: {args.steady_rate}/s for {args.steady_seconds:.0f}s", flush=True)
                steady, series = run_steady(b)
                write_json(args.out / "pods-steady.json", {"environment": env, **steady})
                plot_steady(args.out / "pods-steady.png", steady, series)
                (args.out / "pods.md").write_text(report.markdown(results, steady, env))
        finally:
            for w in watches.values():
                w.stop()
    print()
    print(report.markdown(results, steady, env))
    print(f"\nwritten to {args.out} in {time.monotonic() - started:.0f}s")
    bad = [(r["pods"], r["cases"]["tensile"]["copies"]) for r in results if "tensile" in r["cases"]]
    if steady is not None:
        bad.append(("steady", steady["copies"]))
    wrong = [(n, cp) for n, cp in bad if cp["lost"] or cp["duplicated"] or cp["orphans"]]
    if wrong:
        print(f"pods lost, duplicated or orphaned: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
