"""The scheduler extender and the descheduler killed mid-work (issue 16, fault suite).

One upper cluster, whose kube-scheduler calls ``tensile scheduler`` as ``tensile scheduler config``
wires it (``ignorable: true``), and two lower clusters behind virtual nodes: A has 40 one-CPU
nodes, B three ten-CPU nodes. A has the larger sum, so kube-scheduler on its own prefers vk-a;
only the extender knows that a 2-CPU pod fits no node of A and a 12-CPU pod fits nowhere.

- **Extender**: killed with SIGKILL at a seeded moment of a burst of pods, and started again a few
  pods later while pods keep coming. While it answers, no pod is bound to a virtual node where no
  lower node can hold it. While it is down kube-scheduler places by summed capacity (that is what
  ``ignorable`` means: the alternative, ``ignorable: false``, stops all scheduling of the upper
  cluster, system pods included, for as long as the extender is down): a pod that fits no node there
  is shown Unschedulable upstairs with the lower scheduler's reason, and the descheduler moves it
  once the extender is back. In the end every pod runs where it fits, or waits unbound with the
  extender's reason.
- **Descheduler**: killed with SIGKILL twice while it moves pods lower cluster A refuses (its nodes
  tainted): once after a seeded number of its writes, once right after it deleted a bare pod and
  before it made it again (the moment a pod could be lost). After each restart it finishes the work:
  each pod is evicted or deleted at most once (its writes are counted in the upper audit log, where
  it has a user of its own), pods it must leave alone are never touched, replacements that came back
  to the refusing node stay, no bare pod is lost and no backup is left behind.

The seed and the kill points are printed; ``TENSILE_FAULT_SEED`` repeats a run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e import audit, fixtures, pki
from e2e.cluster import LocalCluster, wait_for
from e2e.deschedulerproc import DeschedulerProcess
from e2e.kube_helpers import create_namespace, deployment_manifest, get_or_none, pod_manifest, unique
from e2e.kwok import NodeSpec
from e2e.process import free_port
from e2e.schedulerproc import SchedulerProcess, kube_scheduler_config
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("TENSILE_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
SMALL = [NodeSpec(f"a-{i}", cpu="1", memory="4Gi", labels={"pool": "small"}) for i in range(40)]
BIG = [NodeSpec(f"b-{i}", cpu="10", memory="40Gi", labels={"pool": "big"}) for i in range(3)]
UPPER = [NodeSpec("upper-0", cpu="2", memory="4Gi")]
#: The largest lower node behind each virtual node, in CPUs: what a pod must fit.
LARGEST = {"vk-a": 1.0, "vk-b": 10.0}
#: Pod shapes: fits both clusters, only B, none.
CPU = {"small": 0.5, "mid": 2.0, "huge": 12.0}
FULL = {"key": "full", "value": "yes", "effect": "NoSchedule"}
DESCHEDULER_USER = "tensile-descheduler"
#: A short Lease, so a restarted replica takes over from its killed self in seconds.
FAST_ELECTION = ["--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s",
                 "--leader-elect-retry-period=0.5s"]
PREFER_NO_EVICTION = "descheduler.alpha.kubernetes.io/prefer-no-eviction"


@dataclasses.dataclass
class Rig:
    upper: LocalCluster
    a: LocalCluster
    b: LocalCluster
    extender: SchedulerProcess
    audit_log: Path
    descheduler_kubeconfig: Path


def _all(*calls: Callable[[], object]) -> None:
    """Run ``calls`` at once (each blocks on a process becoming ready); raise the first failure."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def _user_kubeconfig(cluster: LocalCluster, user: str, directory: Path) -> Path:
    """An admin kubeconfig of ``cluster`` for a user of its own (in system:masters), told apart in the audit log."""
    cert, key = directory / f"{user}.crt", directory / f"{user}.key"
    pki.write_client_credentials(pki.paths(cluster.dir / "pki"), user, cert, key, groups="system:masters")
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"] = {"client-certificate": str(cert), "client-key": str(key)}
    path = directory / f"{user}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _profile(upper: LocalCluster, name: str) -> Any:
    api = k8s.CustomObjectsApi(upper.api())
    return get_or_none(api.get_cluster_custom_object, c.PROFILE_GROUP, c.PROFILE_VERSION, c.PROFILE_PLURAL, name)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    print(f"\nfault seed {SEED} (TENSILE_FAULT_SEED={SEED} repeats this run)")
    tmp = tmp_path_factory.mktemp("components")
    port = free_port()
    audit_flags, audit_log = audit.audit_args(tmp / "audit", "upper")
    # kube-scheduler starts before the extender listens: it retries, and ignorable covers the gap.
    clusters = [LocalCluster("fc-upper", UPPER, scheduler_config=kube_scheduler_config(f"http://127.0.0.1:{port}"),
                             apiserver_args=audit_flags),
                LocalCluster("fc-lower-a", SMALL), LocalCluster("fc-lower-b", BIG)]
    fixtures._LIVE.extend(clusters)
    upper, a, b = clusters
    vnodes = [VirtualNodeProcess(upper, lower, name, extra_args=["--profile-interval=500ms", f"--cluster-id={name}"])
              for name, lower in (("vk-a", a), ("vk-b", b))]
    extender = SchedulerProcess(upper, port)
    try:
        _all(*(cluster.start for cluster in clusters))
        fixtures._LIVE_VNODES.extend(vnodes)
        _all(*(vn.start for vn in vnodes), extender.start)
        wait_for(lambda: _profile(upper, "vk-a") and _profile(upper, "vk-b"), 60, what="both capacity profiles")
        yield Rig(upper, a, b, extender, audit_log, _user_kubeconfig(upper, DESCHEDULER_USER, tmp))
    finally:
        extender.stop()
        for vn in vnodes:
            vn.stop()
            if vn in fixtures._LIVE_VNODES:
                fixtures._LIVE_VNODES.remove(vn)
        for cluster in reversed(clusters):
            fixtures._stop(cluster)


def _request(pod: k8s.V1Pod) -> float:
    value = (pod.spec.containers[0].resources.requests or {}).get("cpu", "0")
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _sized(name: str, kind: str) -> dict[str, Any]:
    body = pod_manifest(name, labels={"kind": kind})
    body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": f"{int(CPU[kind] * 1000)}m"}}
    return body


def _condition(pod: k8s.V1Pod, ctype: str) -> k8s.V1PodCondition | None:
    return next((cond for cond in pod.status.conditions or [] if cond.type == ctype), None)


@dataclasses.dataclass
class Binding:
    name: str
    node: str
    cpu: float
    #: PodScheduled's transition to True: the second it happened in (the apiserver truncates), so at or before it.
    at: datetime.datetime
    #: When a poll first saw it bound: at or after it.
    seen: datetime.datetime
    #: The Unschedulable reason shown upstairs while it waited, if it was seen.
    refused: str = ""


class Bindings:
    """Every binding of the namespace's pods as it happens (polled every 0.2 s in a thread), by UID."""

    def __init__(self, cluster: LocalCluster, ns: str) -> None:
        self.core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
        self.ns = ns
        self.seen: dict[str, Binding] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bindings-{ns}", daemon=True)

    def __enter__(self) -> Bindings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.poll()
            except (k8s.ApiException, OSError) as exc:  # a slow answer; the next poll sees the same
                print(f"bindings poll: {exc}")

    def poll(self) -> None:
        for pod in self.core.list_namespaced_pod(self.ns).items:
            scheduled = _condition(pod, "PodScheduled")
            if not pod.spec.node_name or scheduled is None or scheduled.status != "True":
                continue
            uid = pod.metadata.uid
            if uid not in self.seen:
                self.seen[uid] = Binding(pod.metadata.name, pod.spec.node_name, _request(pod),
                                         scheduled.last_transition_time, datetime.datetime.now(datetime.UTC))
            ready = _condition(pod, "ContainersReady")
            if ready is not None and ready.status == "False" and ready.reason == "Unschedulable":
                self.seen[uid].refused = ready.message or ready.reason


def _fits(binding: Binding) -> bool:
    return binding.cpu <= LARGEST.get(binding.node, 0.0)


def _failed_scheduling(cluster: LocalCluster, ns: str, pod: k8s.V1Pod) -> str:
    """The FailedScheduling messages of this very pod (a recreated one has the name of the one before)."""
    events = cluster.core.list_namespaced_event(ns, field_selector=f"involvedObject.uid={pod.metadata.uid}").items
    return "\n".join(e.message or "" for e in events if e.reason == "FailedScheduling")


def _settled(rig: Rig, ns: str, names: dict[str, str]) -> list[str]:
    """What is not yet where it should end: running where it fits, or (a pod that fits nowhere) waiting unbound
    with a FailedScheduling reason: the extender's, or kube-scheduler's own when no virtual node was even left to
    ask about (vk-b's summed room used up, vk-a avoided after a move)."""
    lowers = {"vk-a": rig.a, "vk-b": rig.b}
    problems = []
    for name, kind in sorted(names.items()):
        pod = get_or_none(rig.upper.core.read_namespaced_pod, name, ns)
        if pod is None:
            problems.append(f"{name}: no pod")
        elif not pod.spec.node_name:
            if kind != "huge" or not _failed_scheduling(rig.upper, ns, pod):
                problems.append(f"{name}: unbound without a FailedScheduling reason")
        elif pod.status.phase != "Running":
            problems.append(f"{name}: {pod.status.phase} on {pod.spec.node_name}")
        else:
            low = get_or_none(lowers[pod.spec.node_name].core.read_namespaced_pod, name, ns)
            if low is None or low.status.phase != "Running" or (
                    (low.metadata.annotations or {}).get(c.UPPER_UID_ANNOTATION) != pod.metadata.uid):
                problems.append(f"{name}: no Running copy in {pod.spec.node_name}'s cluster")
            else:
                lower_node = lowers[pod.spec.node_name].core.read_node(low.spec.node_name)
                if float(lower_node.status.allocatable["cpu"]) < _request(pod):
                    problems.append(f"{name}: runs on {low.spec.node_name}, too small")
    return problems


def test_extender_killed_mid_burst_binds_nothing_where_it_cannot_run_and_what_the_outage_misplaced_is_moved(
        rig: Rig) -> None:
    upper = rig.upper
    rng = random.Random(SEED)
    ns = unique("ext")
    for cluster in (upper, rig.a, rig.b):
        create_namespace(cluster, ns)
    kill_after, restart_after = rng.randint(4, 7), rng.randint(3, 5)
    names: dict[str, str] = {}

    def create(kind: str) -> None:
        name = f"{kind}-{len(names)}"
        names[name] = kind
        upper.core.create_namespaced_pod(ns, _sized(name, kind))
        time.sleep(0.25)

    deck: list[str] = []

    def some_kind() -> str:
        """Shapes dealt from shuffled decks of 5 small, 3 mid, 2 huge: B keeps room for every mid."""
        if not deck:
            deck.extend(rng.sample(["small"] * 5 + ["mid"] * 3 + ["huge"] * 2, 10))
        return deck.pop()

    started = time.monotonic()
    descheduler = DeschedulerProcess(upper, "descheduler-heal", kubeconfig=rig.descheduler_kubeconfig,
                                     extra_args=["--unschedulable-for=3s"])
    with descheduler, Bindings(upper, ns) as bindings:
        for _ in range(kill_after):
            create(some_kind())
        # Placed (or refused) while it answers, so the kill falls between bursts, not into a decision.
        wait_for(lambda: all(get_or_none(upper.core.read_namespaced_pod, n, ns).spec.node_name
                             or _failed_scheduling(upper, ns, upper.core.read_namespaced_pod(n, ns)) for n in names),
                 30, what="the first pods placed or refused")
        assert rig.extender.proc is not None
        rig.extender.proc.kill()
        killed = datetime.datetime.now(datetime.UTC)
        for _ in range(restart_after):
            create(some_kind())
        restart = threading.Thread(target=rig.extender.start, name="extender-restart")
        restart.start()
        for _ in range(6):  # pods keep coming while it starts and lists
            if restart.is_alive():
                create(some_kind())
        restart.join(60)
        back = datetime.datetime.now(datetime.UTC)
        assert rig.extender.proc is not None and rig.extender.proc.alive()
        time.sleep(1.0)  # past the second the restart ended in, so these bindings are told apart
        for kind in ("small", "mid", "huge", "mid"):
            create(kind)
        print(f"extender: {len(names)} pods; killed after pod {kill_after}, restarted after {restart_after} more, "
              f"answering again {(back - killed).total_seconds():.1f}s after the kill")
        try:
            wait_for(lambda: not _settled(rig, ns, names), 120, interval=1,
                     what="every pod running where it fits, or waiting unbound with a reason")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {_settled(rig, ns, names)}") from exc
        converged = time.monotonic() - started
    # Surely while it answered: seen bound before the kill, or bound (to the second, rounded down) after the restart.
    outside = {uid: b for uid, b in bindings.seen.items() if b.seen < killed or b.at >= back}
    during = {uid: b for uid, b in bindings.seen.items() if uid not in outside}
    misplaced = {uid: b for uid, b in during.items() if not _fits(b)}
    early = rig.extender.metrics().total("tensile_scheduler_requests_total", result="not_synced")
    print(f"extender: {len(bindings.seen)} bindings checked, {len(outside)} while it answered (all fit), "
          f"{len(during)} around the outage ({len(misplaced)} where no lower node fits, each moved by the "
          f"descheduler); converged {converged:.1f}s after the first pod; calls answered before its caches synced "
          f"after the restart: {early:.0f}")
    wrong = [f"{b.name} ({b.cpu} CPU) on {b.node} at {b.at}" for b in outside.values() if not _fits(b)]
    assert wrong == [], "bound where no lower node fits while the extender answered"
    assert during, "no pod was placed during the outage: the test proved nothing"
    for uid, binding in misplaced.items():
        assert binding.refused, f"{binding.name} was misplaced on {binding.node} and never shown Unschedulable"
        now = get_or_none(upper.core.read_namespaced_pod, binding.name, ns)
        assert now is None or now.metadata.uid != uid, f"{binding.name} still sits where it cannot run"
    mids = [name for name, kind in names.items() if kind == "mid"]
    assert {upper.core.read_namespaced_pod(name, ns).spec.node_name for name in mids} == {"vk-b"}
    huge = [upper.core.read_namespaced_pod(name, ns) for name, kind in names.items() if kind == "huge"]
    reasons = {_failed_scheduling(upper, ns, pod).splitlines()[-1] for pod in huge}
    print("the pods that fit nowhere wait with: " + " | ".join(sorted(reasons)))
    upper.core.delete_namespace(ns)


class AuditTail:
    """The upper audit log's writes by one user, read from where a test began."""

    def __init__(self, log: Path, user: str) -> None:
        self.log = log
        self.user = user
        self.offset = log.stat().st_size if log.exists() else 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        if self.log.exists():
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].splitlines():
                event = json.loads(line)
                if (event.get("user") or {}).get("username") == self.user and event.get("verb") in audit.WRITE_VERBS:
                    self.events.append(event)
        return self.events

    def moves(self) -> list[dict[str, Any]]:
        """Writes to pods (deletes, evictions, creates) and to the descheduler's ConfigMaps."""
        return [e for e in self.read() if (e.get("objectRef") or {}).get("resource") in ("pods", "configmaps")]


def _kind(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    return f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"


def _done(event: dict[str, Any]) -> bool:
    return 200 <= int((event.get("responseStatus") or {}).get("code") or 0) < 300


def _stuck(upper: LocalCluster, ns: str, name: str) -> bool:
    pod = get_or_none(upper.core.read_namespaced_pod, name, ns)
    ready = _condition(pod, "ContainersReady") if pod is not None else None
    return ready is not None and ready.reason == "Unschedulable"


def test_descheduler_killed_mid_move_evicts_each_pod_at_most_once_and_finishes_after_restart(rig: Rig) -> None:
    upper, a = rig.upper, rig.a
    rng = random.Random(SEED + 1)
    for node in SMALL:
        a.core.patch_node(node.name, {"spec": {"taints": [FULL]}})
    try:
        ns = unique("move")
        create_namespace(upper, ns)
        bare = [f"bare-{i}" for i in range(4)]
        keep = ["keep-0", "keep-1"]
        for name in bare:
            upper.core.create_namespaced_pod(ns, pod_manifest(name, node_name="vk-a", labels={"app": "bare"}))
        for name in keep:
            body = pod_manifest(name, node_name="vk-a", labels={"app": "keep"})
            body["metadata"]["annotations"] = {PREFER_NO_EVICTION: "true"}
            upper.core.create_namespaced_pod(ns, body)
        upper.core.create_namespaced_pod(ns, pod_manifest("fine-0", node_name="vk-b"))
        # Pinned: the ReplicaSet's replacements come back to vk-a, and must be left there.
        upper.apps.create_namespaced_deployment(ns, deployment_manifest("web", 2, {"app": "web"}, nodeName="vk-a"))
        web = wait_for(lambda: (pods := upper.core.list_namespaced_pod(ns, label_selector="app=web").items)
                       and len(pods) == 2 and pods, 60, what="the Deployment's two pods")
        originals = {p.metadata.name: p.metadata.uid for p in web}
        first_uids = {name: upper.core.read_namespaced_pod(name, ns).metadata.uid for name in bare}
        wait_for(lambda: all(_stuck(upper, ns, n) for n in [*bare, *keep, *originals]), 90,
                 what="the pods refused in lower cluster A")
        tail = AuditTail(rig.audit_log, DESCHEDULER_USER)
        # Each bare pod's move is 4 writes (backup, delete, create, backup gone): the first kill falls somewhere in
        # the first three, so a bare pod is left for the second.
        kill_at, delay = rng.randint(1, 10), rng.uniform(0.0, 0.5)
        descheduler = DeschedulerProcess(upper, "descheduler-killed", kubeconfig=rig.descheduler_kubeconfig,
                                         extra_args=[*FAST_ELECTION, "--unschedulable-for=2s"])
        started = time.monotonic()
        kills: list[str] = []
        try:
            descheduler.start()
            # Kill 1: after a seeded number of its writes, a seeded fraction of a second later.
            wait_for(lambda: len(tail.moves()) >= kill_at, 90, interval=0.05, what=f"{kill_at} descheduler writes")
            time.sleep(delay)
            descheduler.proc.kill()
            last = tail.moves()[-1]
            kills.append(f"after write {len(tail.moves())} ({_kind(last)} {last['objectRef'].get('name')}), "
                         f"{delay:.2f}s after write {kill_at}")
            descheduler.start()
            # Kill 2: right after it deleted a bare pod, before it could make the pod again.
            written = len(tail.moves())
            delete = wait_for(lambda: next((e for e in tail.moves()[written:] if _kind(e) == "delete pods"), None),
                              90, interval=0.02, what="the restarted descheduler deleting a bare pod")
            pause = rng.uniform(0.0, 0.3)
            time.sleep(pause)
            descheduler.proc.kill()
            victim = delete["objectRef"]["name"]
            left = get_or_none(upper.core.read_namespaced_pod, victim, ns)
            gap = left is None or left.metadata.deletion_timestamp is not None  # gone or going, not made again
            kills.append(f"{pause:.2f}s after deleting {victim}, before making it again "
                         f"({'gone' if left is None else 'terminating'} at the kill)")
            assert gap, f"the second kill came after {victim} was made again: it tested no gap"
            descheduler.start()

            def finished() -> bool:
                pods = {p.metadata.name: p for p in upper.core.list_namespaced_pod(ns).items}
                moved = all(n in pods and pods[n].metadata.uid != first_uids[n] and pods[n].spec.node_name == "vk-b"
                            and pods[n].status.phase == "Running" for n in bare)
                evicted = not any(p.metadata.uid in originals.values() for p in pods.values())
                backups = [cm for cm in upper.core.list_namespaced_config_map(ns).items
                           if cm.metadata.name.startswith("tensile-backup-")]
                return moved and evicted and not backups

            wait_for(finished, 120, interval=0.5, what="every bare pod on vk-b, every original web pod evicted, "
                                                        "no backup left")
            done = time.monotonic() - started
            passes = descheduler.metrics().total("tensile_descheduler_pass_duration_seconds_count")
            wait_for(lambda: descheduler.metrics().total("tensile_descheduler_pass_duration_seconds_count")
                     >= passes + 2, 30, what="two more passes, to see nothing else move")
        finally:
            descheduler.stop()
        print(f"descheduler: seed {SEED + 1}; kills: " + "; ".join(kills) + f"; all moved {done:.1f}s after start")
        evictions: dict[str, int] = {}
        deletes: dict[str, int] = {}
        creates: dict[str, int] = {}
        for event in tail.moves():
            ref = event["objectRef"]
            counter = {"create pods/eviction": evictions, "delete pods": deletes, "create pods": creates}.get(
                _kind(event))
            if counter is not None and _done(event):
                counter[ref["name"]] = counter.get(ref["name"], 0) + 1
        pods = {p.metadata.name: p for p in upper.core.list_namespaced_pod(ns).items}
        replacements = [n for n in pods if n.startswith("web-") and n not in originals]
        print(f"descheduler: {sum(evictions.values())} evictions, {sum(deletes.values())} deletes and "
              f"{sum(creates.values())} creates by its user in the audit log; replacements left on vk-a: "
              f"{len(replacements)}")
        assert {n: deletes.get(n, 0) for n in bare} == dict.fromkeys(bare, 1), "a bare pod deleted twice or never"
        assert {n: creates.get(n, 0) for n in bare} == dict.fromkeys(bare, 1), "a bare pod made twice or lost"
        assert {n: evictions.get(n, 0) for n in originals} == dict.fromkeys(originals, 1)
        touched = set(evictions) | set(deletes) | set(creates)
        assert touched == set(bare) | set(originals), f"it touched what it must leave alone: {touched}"
        assert len(replacements) == 2 and all(pods[n].spec.node_name == "vk-a" for n in replacements)
        for name in bare:
            assert pods[name].metadata.annotations[c.PREFIX + "rescheduled-from"] == "vk-a"
        for name in keep:
            assert pods[name].metadata.uid and pods[name].spec.node_name == "vk-a"
        owner = pods[replacements[0]].metadata.owner_references[0].uid
        record = upper.core.read_namespaced_config_map(f"tensile-avoid-{owner}", ns)
        assert set(json.loads(record.data["present"])["vk-a"]) == set(originals.values())
    finally:
        for node in SMALL:
            a.core.patch_node(node.name, {"spec": {"taints": []}})

