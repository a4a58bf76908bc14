"""Crashes at random moments and create/delete churn: nothing lost, nothing left behind.

Two properties, each written once and run at two sizes (the ``long`` size by ``make test-long``):

- a workload keeps creating, updating and deleting pods that use ConfigMaps (a volume and an env
  reference) and a Secret, and keeps changing those, while the virtual node is killed with SIGKILL
  at moments a seeded generator picks (``TENSILE_FAULT_SEED`` replays a run's choices). After each
  restart the lower cluster must converge to exactly the upper state;
- pods with a ConfigMap and a Secret each are created and deleted in parallel batches, many times
  over: nothing stays in the lower cluster, and the process's memory stays flat.

Both print what they measured (seed, kill moments, convergence times, RSS, tasks, cached objects).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e.cluster import LocalCluster, wait_for
from e2e.convergence import convergence_problems, items, meta, wait_converged
from e2e.fixtures import UPPER_NODES
from e2e.kube_helpers import create_namespace, pod_manifest, tensile_objects, unique
from e2e.kwok import NodeSpec
from e2e.metrics import Samples
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

VK = "vk-lower"
#: Room for the long sizes' pods on one lower node (the virtual node publishes its capacity).
LOWER_BIG = [NodeSpec("lower-big", cpu="64", memory="256Gi", pods="1000")]
#: Copies become collectable one second after their last pod goes; leader election off: a restarted
#: single replica writes at once instead of waiting out its own dead Lease (15 s).
NODE_ARGS = ["--dependency-gc-delay=1", "--leader-elect=false"]
IMAGES = ("nginx:1.25", "nginx:1.26", "nginx:1.27")
SHARED_CONFIGMAPS = 4
SECRET = "shared-secret"


def fault_seed() -> int:
    raw = os.environ.get("TENSILE_FAULT_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Workload(threading.Thread):
    """Creates, updates and deletes pods and changes their ConfigMaps and Secret, ``rate`` operations a second.

    Which operation comes next depends only on the seed. ``pause`` returns once no operation is in
    flight, so ``expected`` is then exact.
    """

    def __init__(self, upper: LocalCluster, ns: str, seed: int, pods: int, rate: float) -> None:
        super().__init__(name="workload", daemon=True)
        self.ns = ns
        self.api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(upper.kubeconfig)))  # type: ignore[no-untyped-call]
        self.rng = random.Random(seed)
        self.budget = pods
        self.floor = max(1, pods // 10)  # deletes stop there, so pods stay around once the budget is spent
        self.interval = 1.0 / rate
        #: pod name -> uid, for every pod created and not deleted
        self.expected: dict[str, str] = {}
        self.ops = 0
        self.counts = {"create": 0, "update": 0, "delete": 0, "configmap": 0, "secret": 0}
        self.errors: list[str] = []
        self._run = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._progress = threading.Condition()

    # --- control ---------------------------------------------------------------------------

    def resume(self) -> None:
        self._run.set()

    def pause(self) -> None:
        self._run.clear()
        with self._lock:  # the operation in flight, if any, has ended
            pass

    def finish(self) -> None:
        self.pause()
        self._done.set()
        self._run.set()
        self.join(30)

    def wait_created(self, n: int, timeout: float) -> None:
        with self._progress:
            if not self._progress.wait_for(lambda: self.counts["create"] >= n or bool(self.errors), timeout):
                raise TimeoutError(f"the workload created {self.counts['create']} of {n} pods in {timeout:.0f}s")
        if self.errors:
            raise AssertionError(f"the workload failed: {self.errors}")

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._done.is_set():
            if not self._run.wait(0.2):
                next_at = time.monotonic()
                continue
            with self._lock:
                if not self._run.is_set() or self._done.is_set():
                    continue
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - reported by wait_created and the test
                    self.errors.append(f"op {self.ops}: {exc!r}")
                    self._run.clear()
            with self._progress:
                self.ops += 1
                self._progress.notify_all()
            next_at = max(next_at + self.interval, time.monotonic() - self.interval)
            time.sleep(max(0.0, next_at - time.monotonic()))

    def setup(self) -> None:
        for i in range(SHARED_CONFIGMAPS):
            self.api.create_namespaced_config_map(self.ns, {"metadata": {"name": f"shared-{i}"}, "data": {"v": "0"}})
        self.api.create_namespaced_secret(self.ns, {"metadata": {"name": SECRET}, "data": {"token": b64("s0")}})

    def step(self) -> None:
        r = self.rng.random()
        created = self.counts["create"]
        if created < self.budget and (r < 0.4 or not self.expected):
            self.create(f"p-{created}")
        elif not self.expected:
            self.change_configmap()
        elif r < 0.7:
            self.update(self.rng.choice(sorted(self.expected)))
        elif r < 0.85 and len(self.expected) > self.floor:
            self.delete(self.rng.choice(sorted(self.expected)))
        elif r < 0.97:
            self.change_configmap()
        else:
            self.counts["secret"] += 1
            self.api.patch_namespaced_secret(SECRET, self.ns, {"data": {"token": b64(f"s{self.ops}")}})

    # --- the operations ----------------------------------------------------------------------

    def create(self, name: str) -> None:
        self.counts["create"] += 1
        self.api.create_namespaced_config_map(self.ns, {"metadata": {"name": f"cfg-{name}"}, "data": {"v": "0"}})
        shared = f"shared-{self.rng.randrange(SHARED_CONFIGMAPS)}"
        body = pod_manifest(name, labels={"app": "crash", "rev": "0"})
        body["spec"]["containers"][0].update(
            image=self.rng.choice(IMAGES),
            env=[{"name": "SHARED", "valueFrom": {"configMapKeyRef": {"name": shared, "key": "v"}}}],
            volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}])
        body["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": f"cfg-{name}"}},
                                   {"name": "sec", "secret": {"secretName": SECRET}}]
        pod = self.api.create_namespaced_pod(self.ns, body)
        self.expected[name] = str(pod.metadata.uid)

    def update(self, name: str) -> None:
        self.counts["update"] += 1
        if self.rng.random() < 0.5:
            image = self.rng.choice(IMAGES)
            self.api.patch_namespaced_pod(name, self.ns, [
                {"op": "replace", "path": "/spec/containers/0/image", "value": image}])
        else:
            self.api.patch_namespaced_pod(name, self.ns, {"metadata": {"labels": {"rev": str(self.ops)}}})

    def delete(self, name: str) -> None:
        self.counts["delete"] += 1
        del self.expected[name]
        self.api.delete_namespaced_pod(name, self.ns)
        self.api.delete_namespaced_config_map(f"cfg-{name}", self.ns)

    def change_configmap(self) -> None:
        self.counts["configmap"] += 1
        if self.rng.random() < 0.5 or not self.expected:
            name = f"shared-{self.rng.randrange(SHARED_CONFIGMAPS)}"
        else:
            name = f"cfg-{self.rng.choice(sorted(self.expected))}"
        self.api.patch_namespaced_config_map(name, self.ns, {"data": {"v": str(self.ops)}})


@dataclasses.dataclass(frozen=True)
class CrashSize:
    kills: int
    pods: int
    rate: float  # workload operations a second; about 40% create a pod
    run_for: tuple[float, float]  # seconds of workload before each kill, drawn uniformly
    timeout: float  # per convergence


CRASH_SIZES = [
    pytest.param(CrashSize(kills=3, pods=100, rate=12, run_for=(2, 6), timeout=120), id="short"),
    pytest.param(CrashSize(kills=10, pods=500, rate=15, run_for=(3, 10), timeout=240), id="long",
                 marks=pytest.mark.long),
]


@pytest.mark.parametrize("size", CRASH_SIZES)
def test_kill_9_at_random_moments_converges_with_nothing_lost_or_left_behind(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess],
    size: CrashSize,
) -> None:
    """kill -9 at seeded random moments under a live workload; after every restart the lower cluster
    converges: one copy per live upper pod with its phase, image and labels, no orphan copy, exactly the
    referenced ConfigMaps and Secret copied with current data, no pod lost or stuck terminating."""
    seed = fault_seed()
    rng = random.Random(seed)
    run_for = [round(rng.uniform(*size.run_for), 2) for _ in range(size.kills)]
    down_for = [round(rng.uniform(0.2, 3.0), 2) for _ in range(size.kills)]
    print(f"\nTENSILE_FAULT_SEED={seed}: {size.kills} kills, each after {run_for} s of workload, "
          f"down for {down_for} s")
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_BIG))
    vn = make_virtual_node(upper, lower, VK, extra_args=list(NODE_ARGS))
    ns = unique("crash")
    create_namespace(upper, ns)
    workload = Workload(upper, ns, seed, size.pods, size.rate)
    workload.setup()
    workload.start()
    rows: list[tuple[str, int, float, float, float, float, int]] = []
    began = time.monotonic()
    try:
        def check() -> list[str]:
            return convergence_problems(upper, lower, ns, workload.expected, VK)

        for i, (run, down) in enumerate(zip(run_for, down_for, strict=True)):
            workload.resume()
            time.sleep(run)
            killed = time.monotonic() - began
            vn.kill()
            time.sleep(down)  # the workload goes on while the node is dead, and while it starts again
            restarted = time.monotonic()
            vn.start()
            ready = time.monotonic() - restarted
            workload.pause()
            assert workload.errors == []
            converged = wait_converged(check, restarted, size.timeout, f"convergence after kill {i + 1}")
            rows.append((f"kill {i + 1}", workload.ops, killed, down, ready, converged, len(workload.expected)))
        workload.resume()  # the rest of the pods, with no kill
        workload.wait_created(size.pods, timeout=600)
        workload.pause()
        settled = time.monotonic()
        converged = wait_converged(check, settled, size.timeout, "convergence after the last pods")
        rows.append(("end", workload.ops, settled - began, 0.0, 0.0, converged, len(workload.expected)))
        time.sleep(3)  # and it stays converged: nothing trickles in late
        assert check() == []
    finally:
        workload.finish()
        print(f"seed {seed}; operations {workload.counts}; {time.monotonic() - began:.1f} s")
        print(f"{'moment':<8} {'ops':>5} {'at s':>7} {'down s':>7} {'ready s':>8} {'converged s':>12} "
              f"{'live pods':>10}")
        for moment, n, at_s, down_s, ready_s, conv_s, live in rows:
            print(f"{moment:<8} {n:>5} {at_s:>7.1f} {down_s:>7.2f} {ready_s:>8.2f} {conv_s:>12.2f} {live:>10}")
    assert workload.errors == []
    assert workload.counts["create"] == size.pods
    assert vn.proc is not None and vn.proc.alive()


# --- churn ---------------------------------------------------------------------------------------


def lower_leftovers(lower: LocalCluster, ns: str) -> list[str]:
    selector = f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}"
    out = []
    for kind, list_fn in (("pod", lower.core.list_namespaced_pod), ("configmap", lower.core.list_namespaced_config_map),
                          ("secret", lower.core.list_namespaced_secret),
                          ("claim", lower.core.list_namespaced_persistent_volume_claim),
                          ("serviceaccount", lower.core.list_namespaced_service_account),
                          ("service", lower.core.list_namespaced_service)):
        out += [f"{kind}/{meta(o)['name']}" for o in items(list_fn, ns, label_selector=selector)]
    return out


@dataclasses.dataclass
class Snapshot:
    cycles: int
    rss_kib: int
    tasks: float
    cached: float
    by_informer: dict[str, float]

    @classmethod
    def take(cls, vn: VirtualNodeProcess, cycles: int) -> Snapshot:
        samples: Samples = vn.metrics()
        by_informer = {labels["informer"]: v for n, labels, v in samples.series if n == "tensile_cache_objects"}
        return cls(cycles, vn.rss_kib(), samples.total("tensile_asyncio_tasks"), sum(by_informer.values()),
                   by_informer)


@pytest.mark.parametrize("cycles", [pytest.param(200, id="short"),
                                    pytest.param(1000, id="long", marks=pytest.mark.long)])
def test_create_delete_churn_leaves_nothing_and_memory_stays_flat(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess], cycles: int,
) -> None:
    batch = 20
    checkpoint = max(batch, cycles // 10)
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_BIG))
    vn = make_virtual_node(upper, lower, VK, extra_args=list(NODE_ARGS))
    ns = unique("churn")
    create_namespace(upper, ns)

    def create(name: str) -> None:
        upper.core.create_namespaced_config_map(ns, {"metadata": {"name": name}, "data": {"v": name}})
        upper.core.create_namespaced_secret(ns, {"metadata": {"name": name}, "data": {"v": b64(name)}})
        body = pod_manifest(name, labels={"app": "churn"})
        body["spec"]["containers"][0].update(
            envFrom=[{"secretRef": {"name": name}}], volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}])
        body["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": name}}]
        upper.core.create_namespaced_pod(ns, body)

    def delete(name: str) -> None:
        upper.core.delete_namespaced_pod(name, ns)
        upper.core.delete_namespaced_config_map(name, ns)
        upper.core.delete_namespaced_secret(name, ns)

    def all_running(names: list[str]) -> bool:
        pods = items(upper.core.list_namespaced_pod, ns)
        phases = {meta(p)["name"]: (p.get("status") or {}).get("phase") for p in pods}
        return all(phases.get(n) == "Running" for n in names)

    def clean() -> bool:
        return not items(upper.core.list_namespaced_pod, ns) and not lower_leftovers(lower, ns)

    def settle() -> None:
        wait_for(clean, 120, interval=0.5, what="no upper pod and no tensile object left downstairs")
        wait_for(lambda: vn.metrics().total("tensile_workqueue_depth") == 0 and vn.metrics().total(
            "tensile_workqueue_busy_workers") == 0, 60, what="the virtual node's queues empty")
        time.sleep(3)

    snapshots: list[Snapshot] = []
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        done = 0
        while done < cycles:
            names = [f"c{done + i}" for i in range(batch)]
            list(pool.map(create, names))
            wait_for(functools.partial(all_running, names), 120, interval=0.3, what=f"pods {names[0]}.. Running")
            list(pool.map(delete, names))
            done += batch
            if done == checkpoint:
                settle()
                snapshots.append(Snapshot.take(vn, done))
    settle()
    snapshots.append(Snapshot.take(vn, done))
    elapsed = time.monotonic() - began
    first, last = snapshots
    left = sorted(o for o in tensile_objects(lower) if o.split("/")[1] == ns and not o.startswith("Namespace/"))
    print(f"\n{cycles} create/delete cycles of a pod with a ConfigMap and a Secret, {batch} at a time: {elapsed:.1f} s")
    for s in snapshots:
        print(f"after {s.cycles:>5} cycles: RSS {s.rss_kib / 1024:.1f} MiB, asyncio tasks {s.tasks:.0f}, "
              f"cached objects {s.cached:.0f} {s.by_informer}")
    growth = (last.rss_kib - first.rss_kib) / first.rss_kib
    print(f"RSS growth from the first checkpoint to the end: {growth:+.1%}")
    assert left == []
    assert growth <= 0.10, f"RSS grew {growth:+.1%}: {first.rss_kib} KiB -> {last.rss_kib} KiB"
    assert last.tasks <= first.tasks + 5, (first.tasks, last.tasks)
    assert last.cached <= first.cached + 5, (first.by_informer, last.by_informer)
