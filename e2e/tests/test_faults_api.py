"""The virtual node against an upper apiserver that misbehaves (issue 16, fault suite).

- a watch resumed after a gap gets 410 Gone (etcd compacted the versions it knew): the informers
  list again, and what changed or was deleted meanwhile is applied;
- the upper apiserver and its etcd go down together and come back: nothing is lost, nothing is
  duplicated, the work that queued up meanwhile is done;
- an apiserver that answers 429 (a tiny in-flight budget) and writers that race tensile (409):
  everything converges, and a burst of updates to one pod is coalesced by the keyed queue.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e import audit
from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    get_or_none,
    pod_manifest,
    token_kubeconfig,
    unique,
    wait_pod_running,
)
from e2e.metrics import Samples
from e2e.tests.test_machinery import BreakableProxy
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

VK = "vk-lower"


def upper_informers(samples: Samples, kind: str) -> dict[str, float]:
    """``tensile_informer_<kind>_total`` of every upper informer, by informer."""
    return {labels["informer"]: value for name, labels, value in samples.series
            if name == f"tensile_informer_{kind}_total" and labels.get("informer", "").startswith("upper-")}


def api_codes(samples: Samples, cluster: str = "upper") -> dict[str, float]:
    """Requests to ``cluster`` by code (``tensile_api_requests_total``), all verbs summed."""
    out: dict[str, float] = {}
    for name, labels, value in samples.series:
        if name == "tensile_api_requests_total" and labels.get("cluster") == cluster:
            out[labels["code"]] = out.get(labels["code"], 0.0) + value
    return out


def owned_lower_pods(lower: LocalCluster, ns: str) -> list[k8s.V1Pod]:
    return list(lower.core.list_namespaced_pod(ns, label_selector=f"{c.OWNER_NODE_LABEL}={VK}").items)


def via(cluster: LocalCluster, port: int, path: Path) -> Path:
    """``cluster``'s admin kubeconfig, pointed at 127.0.0.1:``port`` (a proxy in front of it)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


class HoldableProxy(BreakableProxy):
    """A ``BreakableProxy`` that can also be held down: connections are cut and new ones closed at
    once (as behind a load balancer with no backend), until ``release``."""

    def hold(self) -> int:
        self.down = True
        return self.cut()

    def release(self) -> None:
        self.down = False


def compacted(cluster: LocalCluster, ns: str, resource_version: str) -> bool:
    """A watch from ``resource_version`` is answered 410 Gone: etcd compacted it away."""
    status, body = cluster.get_raw(
        f"/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion={resource_version}&timeoutSeconds=1")
    return status == 410 or b'"code":410' in body


# --- 1. watch expiry -------------------------------------------------------------------------------


def test_an_expired_watch_relists_and_applies_what_changed_and_what_was_deleted_in_the_gap(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess], tmp_path: Path
) -> None:
    # No watch cache: watches are served by etcd itself, and etcd forgets versions at every compaction.
    upper = make_cluster("upper", list(UPPER_NODES),
                         apiserver_args=["--watch-cache=false", "--etcd-compaction-interval=5s"])
    lower = make_cluster("lower", list(LOWER_NODES))
    proxy = HoldableProxy(urllib.parse.urlsplit(upper.server).port or 443)
    try:
        kubeconfig = via(upper, proxy.port, tmp_path / "proxy.kubeconfig")
        vn = make_virtual_node(upper, lower, VK, upper_kubeconfig=kubeconfig)
        ns = unique("expiry")
        create_namespace(upper, ns)
        upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"mode": "blue"}})
        upper.core.create_namespaced_pod(ns, pod_manifest(
            "reader", node_name=VK, volumes=[{"name": "c", "configMap": {"name": "cfg"}}],
            containers=[{"name": "app", "image": "nginx", "volumeMounts": [{"name": "c", "mountPath": "/c"}]}]))
        upper.core.create_namespaced_pod(ns, pod_manifest("doomed", node_name=VK))
        for name in ("reader", "doomed"):
            wait_pod_running(upper, ns, name, timeout=90)
        doomed_copy = wait_pod_running(lower, ns, "doomed", timeout=30)
        assert lower.core.read_namespaced_config_map("cfg", ns).data == {"mode": "blue"}
        before = vn.metrics()
        lists_before = upper_informers(before, "lists")
        assert {"upper-pods", "upper-configmaps"} <= set(lists_before), lists_before

        # The gap: the virtual node cannot reach the upper apiserver at all.
        started = time.monotonic()
        assert proxy.hold() > 0
        gap_rv = upper.core.list_namespaced_pod(ns).metadata.resource_version
        upper.core.patch_namespaced_config_map("cfg", ns, {"data": {"mode": "green"}})
        upper.core.delete_namespaced_pod("doomed", ns, grace_period_seconds=0)  # gone for good: only a relist
        upper.core.create_namespaced_pod(ns, pod_manifest("newcomer", node_name=VK))  # shows the deletion
        # Every version the informers knew is older than gap_rv; once that is compacted, theirs are too.
        wait_for(lambda: compacted(upper, ns, gap_rv), 60, interval=1, what="etcd compaction past the gap")
        gap = time.monotonic() - started
        assert vn.proc is not None and vn.proc.alive()
        proxy.release()
        restored = time.monotonic()

        wait_for(lambda: lower.core.read_namespaced_config_map("cfg", ns).data == {"mode": "green"}, 120,
                 what="the ConfigMap changed in the gap reaches its copy")
        wait_for(lambda: get_or_none(lower.core.read_namespaced_pod, "doomed", ns) is None, 120,
                 what="the copy of the pod deleted in the gap is deleted")
        wait_pod_running(lower, ns, "newcomer", timeout=120)
        wait_pod_running(upper, ns, "newcomer", timeout=60)
        applied = time.monotonic() - restored
        after = vn.metrics()
        lists_after = upper_informers(after, "lists")
        relisted = {k: lists_after[k] - lists_before.get(k, 0) for k in lists_after}
        failures_before = upper_informers(before, "failures")
        failures = {k: v - failures_before.get(k, 0) for k, v in upper_informers(after, "failures").items()}
        print(f"gap {gap:.1f}s (held until etcd compacted); changes applied {applied:.1f}s after the link came "
              f"back; upper relists {relisted}; list/watch failures {failures}")
        assert relisted["upper-pods"] >= 1 and relisted["upper-configmaps"] >= 1
        assert "resourceVersion too old, relisting" in vn.log_tail(100000)
        # The rest held: the reader's copy was never replaced, the deleted pod is gone upstairs for good.
        assert {str(p.metadata.name) for p in owned_lower_pods(lower, ns)} == {"newcomer", "reader"}
        assert doomed_copy.metadata.uid not in {p.metadata.uid for p in owned_lower_pods(lower, ns)}
        assert vn.healthz() == 200
    finally:
        proxy.close()


# --- 2. upper outage -------------------------------------------------------------------------------


def finish(lower: LocalCluster, ns: str, name: str) -> None:
    """The lower kubelet reports the pod's containers exited 0: Succeeded."""
    pod = lower.core.read_namespaced_pod(name, ns)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    statuses = [{"name": cs.name, "image": cs.image, "imageID": cs.image_id or "", "ready": False, "started": False,
                 "restartCount": cs.restart_count,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}
                for cs in pod.status.container_statuses]
    conditions = [{"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                  for t in ("Ready", "ContainersReady")]
    lower.core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Succeeded", "containerStatuses": statuses, "conditions": conditions}})


def test_upper_apiserver_and_etcd_restart_loses_and_duplicates_nothing(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess]
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    vn = make_virtual_node(upper, lower, VK)
    ns = unique("outage")
    create_namespace(upper, ns)
    upper.apps.create_namespaced_deployment(ns, deployment_manifest("web", 3, {"app": "web"}))
    upper.core.create_namespaced_pod(ns, pod_manifest("bare", node_name=VK))
    upper.core.create_namespaced_pod(ns, pod_manifest("finisher", node_name=VK, restartPolicy="Never"))

    def web_pods() -> list[k8s.V1Pod]:
        return list(upper.core.list_namespaced_pod(ns, label_selector="app=web").items)

    wait_for(lambda: len(web := web_pods()) == 3 and all(p.status.phase == "Running" for p in web), 90,
             what="the Deployment's pods Running")
    for name in ("bare", "finisher"):
        wait_pod_running(upper, ns, name, timeout=60)
    web_before = {p.metadata.name: p.metadata.uid for p in web_pods()}
    copies_before = {p.metadata.name: p.metadata.uid for p in owned_lower_pods(lower, ns)}
    assert set(copies_before) == {*web_before, "bare", "finisher"}
    victim, *survivors = sorted(str(n) for n in web_before)
    before = vn.metrics()

    upper.stop_apiserver()
    upper.stop_etcd()
    down = time.monotonic()
    # Downstairs life goes on: copies deleted out of band (an eviction, an admin), a pod that finishes.
    lower.core.delete_namespaced_pod(victim, ns, grace_period_seconds=0)
    lower.core.delete_namespaced_pod("bare", ns, grace_period_seconds=0)
    finish(lower, ns, "finisher")
    time.sleep(max(0.0, 15 - (time.monotonic() - down)))
    health_during = vn.healthz()
    assert vn.proc is not None and vn.proc.alive()
    upper.start_etcd()
    upper.start_apiserver()
    up = time.monotonic()
    outage = up - down
    # A pod created right after the restart runs.
    upper.core.create_namespaced_pod(ns, pod_manifest("after", node_name=VK))

    def failed_bare() -> bool:
        p = upper.core.read_namespaced_pod("bare", ns)
        return bool(p.status.phase == "Failed" and p.status.reason == "LowerPodDeleted")

    wait_for(failed_bare, 120, what="the bare pod whose copy was deleted turned Failed upstairs")
    wait_for(lambda: upper.core.read_namespaced_pod("finisher", ns).status.phase == "Succeeded", 120,
             what="the pod that finished downstairs Succeeded upstairs")

    def web_replaced() -> bool:
        web = {p.metadata.name: p for p in web_pods()}
        return (victim not in web and len(web) == 3 and all(p.status.phase == "Running" for p in web.values())
                and all(web_before[s] == web[s].metadata.uid for s in survivors))

    wait_pod_running(upper, ns, "after", timeout=120)
    caught_up = time.monotonic() - up  # tensile's own share: the three above
    # The replacement waits for the upper control plane too: its controller-manager and scheduler
    # resume their own watches with client-go's backoff (up to 30 s) before they create and bind it.
    wait_for(web_replaced, 120, what="the Deployment pod whose copy was deleted replaced, the others kept")
    replaced = time.monotonic() - up

    def one_copy_each() -> bool:
        upper_pods = {p.metadata.name: p for p in upper.core.list_namespaced_pod(ns).items}
        copies = owned_lower_pods(lower, ns)
        live = {n for n, p in upper_pods.items() if p.status.phase not in ("Succeeded", "Failed")}
        return (len(copies) == len({p.metadata.name for p in copies})
                and {p.metadata.name for p in copies} == live | {"finisher"}
                and all(p.metadata.annotations[c.UPPER_UID_ANNOTATION] == upper_pods[p.metadata.name].metadata.uid
                        for p in copies))

    wait_for(one_copy_each, 60, what="one lower copy per pod")
    time.sleep(3)  # and it stays so: nothing trickles in late
    assert one_copy_each()
    copies_after = {p.metadata.name: p.metadata.uid for p in owned_lower_pods(lower, ns)}
    # Copies that were fine were never recreated; the finished one was not run again; bare was not re-run.
    assert all(copies_after[n] == copies_before[n] for n in (*survivors, "finisher"))
    assert "bare" not in copies_after
    assert lower.core.read_namespaced_pod("finisher", ns).status.phase == "Succeeded"
    assert upper.apps.read_namespaced_deployment("web", ns).status.ready_replicas == 3
    after = vn.metrics()
    watches_before, lists_before = upper_informers(before, "watches"), upper_informers(before, "lists")
    watches = {k: v - watches_before.get(k, 0) for k, v in upper_informers(after, "watches").items()}
    lists = {k: v - lists_before.get(k, 0) for k, v in upper_informers(after, "lists").items()}
    print(f"outage {outage:.1f}s (healthz during it: {health_during}); tensile's queued work done {caught_up:.1f}s "
          f"after the apiserver was back, the Deployment's pod replaced by the upper control plane after "
          f"{replaced:.1f}s; upper watches started {watches}; relists {lists}")
    assert all(v >= 1 for v in watches.values()), watches  # every upper watch resumed
    assert vn.proc.alive() and vn.healthz() == 200
    assert "Traceback" not in vn.log_tail(100000)


# --- 3. throttling and conflicts -------------------------------------------------------------------

GATE = "e2e.tensile.io/gate"
#: The longest the virtual node is paused (SIGSTOP) while a burst lands: well below its renew deadline.
PAUSE_MAX = 6.0


def tensile_writes_to_pod(log: Path, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in audit.writes(log)
            if (e.get("userAgent") or "").startswith("tensile/")
            and (e.get("objectRef") or {}).get("resource") == "pods"
            and e["objectRef"].get("namespace") == ns and e["objectRef"].get("name") == name]


def test_429s_and_409s_are_retried_and_a_burst_of_updates_is_coalesced(
    make_cluster: Callable[..., LocalCluster], make_virtual_node: Callable[..., VirtualNodeProcess], tmp_path: Path
) -> None:
    # The in-flight limits apply to everyone but system:masters, so tensile gets an identity of its own.
    token = "tok-throttled-tensile"
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f'{token},tensile-vn,tensile-vn,"tensile"\n')
    upper = make_cluster("upper", list(UPPER_NODES), apiserver_args=[
        f"--token-auth-file={tokens}", "--enable-priority-and-fairness=false",
        "--max-requests-inflight=2", "--max-mutating-requests-inflight=1"])
    k8s.RbacAuthorizationV1Api(upper.api()).create_cluster_role_binding({
        "metadata": {"name": "tensile-vn"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tensile-vn"}]})
    audit_flags, lower_audit = audit.audit_args(tmp_path / "audit", "lower")
    lower = make_cluster("lower", list(LOWER_NODES), apiserver_args=audit_flags)
    vn = make_virtual_node(upper, lower, VK,
                           upper_kubeconfig=token_kubeconfig(upper, tmp_path / "vn.kubeconfig", token))
    ns = unique("throttle")
    create_namespace(upper, ns)
    count = 40
    names = [f"p{i}" for i in range(count)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: upper.core.create_namespaced_pod(ns, pod_manifest(
            n, labels={"batch": "1"}, node_name=VK, readinessGates=[{"conditionType": GATE}])), names))

    # Writers racing tensile on the same pods: one annotates them (a new resourceVersion every time),
    # one is the gates' controller and passes every gate (conditions beside the kubelet's).
    stop, gates_stop = threading.Event(), threading.Event()
    racer_writes = [0]

    def annotate() -> None:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(k8s.ApiException):
                upper.core.patch_namespaced_pod(names[i % count], ns, {"metadata": {"annotations": {"racer": str(i)}}})
                racer_writes[0] += 1
            i += 1

    def open_gates() -> None:
        """Once a pod runs, pass its gate, and annotate it at once: tensile's Ready=True races them."""
        while not gates_stop.is_set():
            for n in names:
                pod = get_or_none(upper.core.read_namespaced_pod, n, ns)
                if pod is None or pod.status.phase != "Running" or any(
                        cd.type == GATE and cd.status == "True" for cd in pod.status.conditions or []):
                    continue
                with contextlib.suppress(k8s.ApiException):
                    upper.core.patch_namespaced_pod_status(n, ns, {"status": {"conditions": [
                        {"type": GATE, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
                    for i in range(5):
                        upper.core.patch_namespaced_pod(n, ns, {"metadata": {"annotations": {"gate-racer": str(i)}}})
                        racer_writes[0] += 1
            gates_stop.wait(0.2)

    def ready_running() -> bool:
        pods = upper.core.list_namespaced_pod(ns, label_selector="batch=1").items
        copies = {p.metadata.name: p for p in owned_lower_pods(lower, ns)}
        return len(pods) == count and all(
            p.status.phase == "Running"
            and any(cd.type == "Ready" and cd.status == "True" for cd in p.status.conditions or [])
            and p.metadata.name in copies
            and copies[p.metadata.name].metadata.annotations[c.UPPER_UID_ANNOTATION] == p.metadata.uid
            for p in pods) and len(copies) == count

    racers = [threading.Thread(target=annotate, daemon=True) for _ in range(2)]
    gates = threading.Thread(target=open_gates, daemon=True)
    for t in (*racers, gates):
        t.start()
    try:
        time.sleep(15)  # racing all along while the pods are copied and their status written up
        stop.set()
        try:
            wait_for(ready_running, 180, interval=1, what="every pod Running and Ready with one copy")
        except TimeoutError:
            for p in upper.core.list_namespaced_pod(ns, label_selector="batch=1").items:
                conds = {cd.type: cd.status for cd in p.status.conditions or []}
                if p.status.phase != "Running" or conds.get("Ready") != "True":
                    print(f"not ready: {p.metadata.name} {p.status.phase} {conds}")
            raise
    finally:
        stop.set()
        gates_stop.set()
        for t in (*racers, gates):
            t.join(30)
    converged = time.monotonic() - started
    samples = vn.metrics()
    codes = api_codes(samples)
    throttled = {labels["verb"]: value for name, labels, value in samples.series
                 if name == "tensile_api_requests_total" and labels.get("cluster") == "upper"
                 and labels.get("code") == "429"}
    retries = {labels["verb"]: value for name, labels, value in samples.series
               if name == "tensile_api_retries_total" and labels.get("cluster") == "upper"}
    lease_retries = samples.total("tensile_api_retries_total", cluster="upper-leader-election")
    print(f"{count} pods Running and Ready with one copy each after {converged:.1f}s; the racers wrote "
          f"{racer_writes[0]} times; upper API answers by code {codes}; 429s by verb {throttled}; "
          f"retried after Retry-After {retries}; Lease client answers {api_codes(samples, 'upper-leader-election')}, "
          f"{lease_retries:g} retried; Lease lost {samples.total('tensile_leader_losses_total'):g} times")

    # A burst of updates to one pod: the keyed queue folds them; the copy ends with the last labels.
    # Here the apiserver admits about 15 patches a second and tensile copies one in about 10 ms, so
    # updates sent one by one are copied one by one (92 writes for 100 in a first run): nothing to
    # fold. Paused while they are sent, the node gets all 100 watch events at once when it resumes,
    # as after a stall or a slow lower cluster. The pause ends after PAUSE_MAX at the latest, well
    # below the leader renew deadline (10 s after the last renewal, sent every 2 s); patches that
    # land after it may each be copied, so they are allowed a write each.
    target = names[0]
    burst_start = datetime.datetime.now(datetime.UTC)
    burst = 100
    assert vn.proc is not None and vn.proc.pid is not None
    pid = vn.proc.pid
    lock = threading.Lock()
    late = [0]
    paused = [True]

    def resume() -> None:
        with lock:
            if paused[0]:
                os.kill(pid, signal.SIGCONT)
                paused[0] = False

    def patch(i: int) -> None:
        labels = {"burst": str(i), f"key-{i % 10}": str(i)}
        upper.core.patch_namespaced_pod(target, ns, {"metadata": {"labels": labels}})
        with lock:
            late[0] += 0 if paused[0] else 1

    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    safety = threading.Timer(PAUSE_MAX, resume)
    safety.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(patch, range(burst)))
    finally:
        safety.cancel()
        resume()
    sent = time.monotonic() - t0
    final = upper.core.read_namespaced_pod(target, ns).metadata.labels

    def copied() -> bool:
        labels = lower.core.read_namespaced_pod(target, ns).metadata.labels or {}
        return all(labels.get(k) == v for k, v in final.items())

    def idle() -> bool:
        pods_queue = vn.metrics()
        return (pods_queue.total("tensile_workqueue_depth", queue="pods") == 0
                and pods_queue.total("tensile_workqueue_busy_workers", queue="pods") == 0)

    wait_for(copied, 60, what="the last labels on the copy")
    wait_for(idle, 30, interval=0.5, what="the pods queue empty and its workers idle")
    assert copied()
    writes = [e for e in tensile_writes_to_pod(lower_audit, ns, target) if e["received"] >= burst_start]
    kinds = sorted({(e["verb"], e["objectRef"].get("subresource", "")) for e in writes})
    print(f"burst of {burst} label patches in {sent:.2f}s ({late[0]} landed after the pause ended): tensile wrote "
          f"the copy {len(writes)} times {kinds}; Lease lost {vn.metrics().total('tensile_leader_losses_total'):g} "
          "times in all")
    assert codes.get("429", 0) > 0, codes  # the apiserver did throttle tensile ...
    assert sum(retries.values()) > 0, retries  # ... which asked again after Retry-After ...
    assert codes.get("409", 0) > 0, codes  # ... and the racers did beat it to some writes
    assert vn.proc is not None and vn.proc.alive() and vn.healthz() == 200
    assert 1 <= len(writes) <= 5 + late[0], (len(writes), late[0])  # coalesced, not replayed one by one
