"""Odd but legal input (issue 16, fault suite): each handled, no crash, nothing left behind.

The objects and pods here are at the edges of what the Kubernetes API accepts: a ConfigMap at the
1 MiB limit, 100 containers, names of the greatest length each kind allows and Unicode wherever the
API allows it (annotation, env, argument and ConfigMap values; names and label values are ASCII by
definition), init and native sidecar containers, an ephemeral container added with
``kubectl debug``, a pod deleted before it was ever copied, a namespace deleted with pods in it.
Every case ends the same way: the virtual node is the same process, alive, healthy and without a
logged error, and once the upper namespace is deleted nothing of tensile's is left in the lower one
(tensile never deletes lower namespaces, so those stay).

Last, ``tensile virtual-node`` given a kubeconfig that does not load or a lower "cluster" that is
not a Kubernetes API: one line on stderr, exit code 2, nothing registered upstairs. Tests run as
root, whom ``chmod 000`` does not stop: the unreadable kubeconfig is a directory instead.

They share one pair and one virtual node (``federation``), each in a namespace of its own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    events_for,
    get_or_none,
    kubectl,
    pod_manifest,
    tensile_objects,
    unique,
    wait_gone,
    wait_pod_running,
)
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"
#: Copies are collected one second after their last pod; no leader election (SIGSTOP below must
#: not cost the Lease).
FEDERATION_ARGS = ["--lower-unreachable-grace=5", "--dependency-gc-delay=1", "--leader-elect=false"]
#: The apiserver's limit on a ConfigMap's data and binaryData values together (core.MaxSecretSize).
CONFIGMAP_LIMIT = 1024 * 1024
UNICODE = "Grüße aus Zürich — 東京の設定 🚀 ñandú ✓ "


def raw(call: Any, *args: Any) -> dict[str, Any]:
    """A read as the apiserver's JSON, byte for byte (no client model in between)."""
    return dict(json.loads(call(*args, _preload_content=False).data))


def utf8_text(size: int) -> str:
    """Unicode text of exactly ``size`` UTF-8 bytes."""
    out: list[str] = []
    n = 0
    while True:
        for ch in UNICODE:
            b = len(ch.encode())
            if n + b > size:
                return "".join(out) + "." * (size - n)
            out.append(ch)
            n += b


@dataclasses.dataclass
class Case:
    """One test's namespace, and where the virtual node stood when it began."""

    ns: str
    pid: int
    log_offset: int


@pytest.fixture
def case(federation: Fed) -> Case:
    upper, _, vn = federation
    assert vn.proc is not None and vn.proc.pid is not None
    ns = unique("odd")
    create_namespace(upper, ns)
    return Case(ns, vn.proc.pid, vn.log_path.stat().st_size)


def leftovers(lower: LocalCluster, ns: str) -> set[str]:
    """tensile's objects in lower namespace ``ns``, the namespace itself aside."""
    return {o for o in tensile_objects(lower) if o.split("/")[1] == ns and not o.startswith("Namespace/")}


def logged_errors(vn: VirtualNodeProcess, offset: int) -> list[str]:
    with open(vn.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if '"level":"error"' in line or "Traceback" in line]


def assert_healthy(vn: VirtualNodeProcess, case: Case) -> None:
    assert vn.proc is not None and vn.proc.alive() and vn.proc.pid == case.pid, "the virtual node restarted"
    assert vn.healthz() == 200
    assert logged_errors(vn, case.log_offset) == []


def assert_left_clean(fed: Fed, case: Case) -> None:
    """Delete the upper namespace: every copy in the lower one goes, and the process stayed well."""
    upper, lower, vn = fed
    upper.core.delete_namespace(case.ns)
    wait_for(lambda: not leftovers(lower, case.ns), 60, what=f"no tensile object left in lower {case.ns}")
    assert_healthy(vn, case)


# --- sizes ------------------------------------------------------------------------------------------

def test_configmap_at_the_1mib_limit_is_copied_byte_for_byte_and_kept_current(federation: Fed, case: Case) -> None:
    upper, lower, _ = federation
    ns = case.ns
    blob = random.Random(16).randbytes(300_000)
    text = utf8_text(CONFIGMAP_LIMIT - len(blob) - 1000)
    data = {"notes.txt": text, "small": "x" * 1000}
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "big"}, "data": data,
                                                 "binaryData": {"blob.bin": base64.b64encode(blob).decode()}})
    assert sum(len(v.encode()) for v in data.values()) + len(blob) == CONFIGMAP_LIMIT
    upper.core.create_namespaced_pod(ns, pod_manifest("reader", node_name=VK, volumes=[
        {"name": "big", "configMap": {"name": "big"}}], containers=[{"name": "app", "image": "nginx", "env": [
            {"name": "SMALL", "valueFrom": {"configMapKeyRef": {"name": "big", "key": "small"}}}],
            "volumeMounts": [{"name": "big", "mountPath": "/big"}]}]))
    wait_pod_running(lower, ns, "reader")
    wait_pod_running(upper, ns, "reader")

    def same_content() -> bool:
        up = raw(upper.core.read_namespaced_config_map, "big", ns)
        low = raw(lower.core.read_namespaced_config_map, "big", ns)
        return low["data"] == up["data"] and low["binaryData"] == up["binaryData"]

    assert same_content()
    copy = raw(lower.core.read_namespaced_config_map, "big", ns)
    assert copy["data"]["notes.txt"].encode() == text.encode()
    assert base64.b64decode(copy["binaryData"]["blob.bin"]) == blob
    assert copy["metadata"]["labels"][c.MANAGED_BY_LABEL] == c.MANAGED_BY_VALUE
    # One character changed, the size the same: the copy follows.
    upper.core.patch_namespaced_config_map("big", ns, {"data": {"notes.txt": "!" + text[1:]}})
    wait_for(same_content, 30, what="the changed 1 MiB ConfigMap copied again")
    assert_left_clean(federation, case)


#: The apiserver's limit on an object's annotations, keys and values together.
ANNOTATIONS_LIMIT = 256 * 1024


def filled_annotations() -> dict[str, str]:
    """Annotations exactly at the limit: an object that has them leaves no room for tensile's."""
    key = "example.com/filler"
    return {key: "x" * (ANNOTATIONS_LIMIT - len(key))}


def held(cluster: LocalCluster, ns: str, name: str) -> tuple[str, str] | None:
    """Why the pod's first container waits, as (reason, message); None while it does not."""
    cs = cluster.core.read_namespaced_pod(name, ns).status.container_statuses or []
    w = cs[0].state.waiting if cs and cs[0].state else None
    return (w.reason, w.message) if w else None


def test_objects_whose_annotations_fill_the_limit_hold_their_pod_with_one_clear_warning(
        federation: Fed, case: Case) -> None:
    upper, lower, _ = federation
    ns = case.ns
    # A pod whose own annotations fill the limit, and one whose ConfigMap's do: the copies cannot
    # carry tensile's annotations too, and the lower apiserver refuses them.
    filled = pod_manifest("filled", node_name=VK)
    filled["metadata"]["annotations"] = filled_annotations()
    upper.core.create_namespaced_pod(ns, filled)
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "filled", "annotations": filled_annotations()},
                                                 "data": {"k": "v"}})
    upper.core.create_namespaced_pod(ns, pod_manifest("uses-filled", node_name=VK, volumes=[
        {"name": "c", "configMap": {"name": "filled"}}]))
    for name in ("filled", "uses-filled"):
        reason, message = wait_for(functools.partial(held, upper, ns, name), 30, what=f"{name} held with a reason")
        assert reason in ("CreateContainerError", "CreateContainerConfigError") and "Too long" in message, message
    time.sleep(6)  # a recheck or two later
    for name in ("filled", "uses-filled"):
        warnings = [e for e in events_for(upper, ns, name) if e.type == "Warning"]
        assert len(warnings) == 1 and "Too long" in warnings[0].message, [(e.reason, e.message) for e in warnings]
        assert get_or_none(lower.core.read_namespaced_pod, name, ns) is None
    # Room made upstairs: the held pod runs.
    upper.core.patch_namespaced_config_map("filled", ns, {"metadata": {"annotations": {
        "example.com/filler": "short"}}})
    wait_pod_running(lower, ns, "uses-filled", timeout=60)
    assert_left_clean(federation, case)


def test_pod_with_100_containers_runs_and_shows_every_container_status(federation: Fed, case: Case) -> None:
    upper, lower, _ = federation
    ns = case.ns
    names = [f"c{i:03d}" for i in range(100)]
    upper.core.create_namespaced_pod(ns, pod_manifest("wide", node_name=VK, containers=[
        {"name": n, "image": f"registry.example/app-{n}:1", "resources": {"requests": {"cpu": "1m"}}}
        for n in names]))
    low = wait_pod_running(lower, ns, "wide")
    assert [ctr.name for ctr in low.spec.containers] == names

    def all_ready() -> k8s.V1Pod | None:
        pod = upper.core.read_namespaced_pod("wide", ns)
        statuses = pod.status.container_statuses or []
        return pod if pod.status.phase == "Running" and len(statuses) == 100 and all(
            s.ready for s in statuses) else None

    pod = wait_for(all_ready, 60, what="all 100 container statuses ready upstairs")
    assert sorted(s.name for s in pod.status.container_statuses) == names
    assert {s.name: s.image for s in pod.status.container_statuses} == {
        n: f"registry.example/app-{n}:1" for n in names}
    assert_left_clean(federation, case)


# --- names and Unicode --------------------------------------------------------------------------------

def longest_namespace() -> str:
    base = unique("long")
    return f"{base}-{'n' * (62 - len(base))}"


def test_longest_names_and_unicode_values_are_copied_exactly(federation: Fed, case: Case) -> None:
    upper, lower, _ = federation
    ns = longest_namespace()  # 63 characters, a DNS label's limit
    create_namespace(upper, ns)
    pod_name = f"{'p' * 200}.{'q' * 52}"  # 253 characters, a DNS subdomain's limit
    cm_name, secret_name, sa_name = (f"{x * 200}.{x * 52}" for x in ("c", "s", "a"))
    service_name = f"s{'v' * 62}"  # 63: a DNS-1035 label
    containers = [f"a{'x' * 62}", f"b{'y' * 62}"]  # 63 each, a DNS label
    label_key = f"{'l' * 241}.example.com/{'k' * 63}"  # a 253-character prefix and a 63-character name
    labels = {"app": "names", label_key: "v" * 63}
    annotations = {"description": UNICODE * 3, "example.com/emoji": "🚀✓🌍", "example.com/empty": ""}
    assert len(ns) == 63 and len(pod_name) == len(cm_name) == 253 and len(label_key.split("/")[0]) == 253
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": cm_name}, "data": {"greeting": UNICODE}})
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": secret_name}, "stringData": {"pw": "pässwörd✓"}})
    upper.core.create_namespaced_service_account(ns, {"metadata": {"name": sa_name}})
    upper.core.create_namespaced_service(ns, {"metadata": {"name": service_name}, "spec": {
        "selector": {"app": "names"}, "ports": [{"port": 80}]}})
    env = [{"name": "GREETING", "value": UNICODE},
           {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "pw"}}}]
    manifest = pod_manifest(pod_name, labels=labels, node_name=VK, serviceAccountName=sa_name, volumes=[
        {"name": "cfg", "configMap": {"name": cm_name}}], containers=[
        {"name": n, "image": "busybox", "args": ["echo", UNICODE], "env": env,
         "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]} for n in containers])
    manifest["metadata"]["annotations"] = annotations
    upper.core.create_namespaced_pod(ns, manifest)
    wait_pod_running(lower, ns, pod_name)
    wait_pod_running(upper, ns, pod_name)
    low = raw(lower.core.read_namespaced_pod, pod_name, ns)
    assert low["metadata"]["name"] == pod_name and low["metadata"]["namespace"] == ns
    assert {k: low["metadata"]["labels"].get(k) for k in labels} == labels
    assert {k: low["metadata"]["annotations"].get(k) for k in annotations} == annotations
    assert low["spec"]["serviceAccountName"] == sa_name
    for ctr, name in zip(low["spec"]["containers"], containers, strict=True):
        assert ctr["name"] == name and ctr["args"] == ["echo", UNICODE] and ctr["env"] == env
    assert raw(lower.core.read_namespaced_config_map, cm_name, ns)["data"] == {"greeting": UNICODE}
    assert raw(lower.core.read_namespaced_secret, secret_name, ns)["data"] == raw(
        upper.core.read_namespaced_secret, secret_name, ns)["data"]
    assert get_or_none(lower.core.read_namespaced_service_account, sa_name, ns) is not None
    wait_for(lambda: get_or_none(lower.core.read_namespaced_service, service_name, ns), 30,
             what="the 63-character Service copied")
    # The kubelet's Events name the pod; a 253-character name must not make them invalid.
    events = upper.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod_name}").items
    assert "ProviderCreateSuccess" in {e.reason for e in events}
    upper.core.delete_namespace(ns)
    wait_for(lambda: not leftovers(lower, ns), 60, what=f"no tensile object left in lower {ns}")
    assert_left_clean(federation, case)


# --- init, sidecar and ephemeral containers -----------------------------------------------------------

def test_init_and_native_sidecar_containers_are_copied_and_their_statuses_shown(federation: Fed,
                                                                               case: Case) -> None:
    upper, lower, _ = federation
    ns = case.ns
    init = [{"name": "migrate", "image": "migrate:1"},
            {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always"}]  # a native sidecar
    upper.core.create_namespaced_pod(ns, pod_manifest("sidecar", node_name=VK, initContainers=init))
    low = wait_pod_running(lower, ns, "sidecar")
    assert [(i.name, i.restart_policy) for i in low.spec.init_containers] == [("migrate", None), ("proxy", "Always")]
    wait_pod_running(upper, ns, "sidecar")
    # What a real kubelet reports: the init container done, the sidecar running and ready.
    now = "2026-01-01T00:00:00Z"
    statuses = [
        {"name": "migrate", "image": "migrate:1", "imageID": "", "ready": True, "restartCount": 0, "started": False,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}},
        {"name": "proxy", "image": "envoy:1", "imageID": "", "ready": True, "restartCount": 2, "started": True,
         "state": {"running": {"startedAt": now}}},
    ]
    lower.core.patch_namespaced_pod_status("sidecar", ns, {"status": {"initContainerStatuses": statuses}})

    def shown() -> bool:
        up = raw(upper.core.read_namespaced_pod, "sidecar", ns)
        got = {s["name"]: (s["state"], s["ready"], s["restartCount"], s.get("started"))
               for s in up["status"].get("initContainerStatuses") or []}
        return got == {s["name"]: (s["state"], s["ready"], s["restartCount"], s["started"]) for s in statuses}

    wait_for(shown, 30, what="init and sidecar statuses shown upstairs")
    assert_left_clean(federation, case)


def test_kubectl_debug_container_reaches_the_copy_and_its_status_comes_back(federation: Fed, case: Case) -> None:
    upper, lower, _ = federation
    ns = case.ns
    upper.core.create_namespaced_pod(ns, pod_manifest("debugged", node_name=VK))
    wait_pod_running(lower, ns, "debugged")
    wait_pod_running(upper, ns, "debugged")
    kubectl(upper, "debug", "-n", ns, "debugged", "--image=busybox:1.36", "--container=dbg", "--target=app",
            "--", "sh", "-c", "echo héllo 🚀")
    wait_for(lambda: [e.name for e in lower.core.read_namespaced_pod("debugged", ns).spec.ephemeral_containers or []]
             == ["dbg"], 30, what="the ephemeral container added to the copy")
    copy = raw(lower.core.read_namespaced_pod, "debugged", ns)["spec"]["ephemeralContainers"][0]
    assert copy["targetContainerName"] == "app" and copy["command"] == ["sh", "-c", "echo héllo 🚀"]
    status = {"name": "dbg", "image": "busybox:1.36", "imageID": "", "ready": False, "restartCount": 0,
              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    lower.core.patch_namespaced_pod_status("debugged", ns, {"status": {"ephemeralContainerStatuses": [status]}})
    wait_for(lambda: [(s["name"], s["state"]) for s in raw(upper.core.read_namespaced_pod, "debugged", ns)[
        "status"].get("ephemeralContainerStatuses") or []] == [("dbg", status["state"])], 30,
             what="the ephemeral container's status upstairs")
    assert_left_clean(federation, case)


# --- deletion at odd moments ----------------------------------------------------------------------------

@contextlib.contextmanager
def paused(vn: VirtualNodeProcess) -> Iterator[None]:
    """The virtual node stopped (SIGSTOP): it sees nothing until the block ends."""
    assert vn.proc is not None and vn.proc.pid is not None
    os.kill(vn.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(vn.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("grace", [5, 0], ids=["graceful", "forced"])
def test_pod_deleted_before_it_was_copied_leaves_nothing_downstairs(federation: Fed, case: Case,
                                                                    grace: int) -> None:
    upper, lower, vn = federation
    ns = case.ns
    upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"k": "v"}})
    with paused(vn):
        upper.core.create_namespaced_pod(ns, pod_manifest("ephemeral", node_name=VK, volumes=[
            {"name": "c", "configMap": {"name": "cfg"}}, {"name": "s", "secret": {"secretName": "sec"}}]))
        upper.core.delete_namespaced_pod("ephemeral", ns, grace_period_seconds=grace)
    # A kubelet confirms the deletion of a pod bound to it; the virtual node does, without a copy.
    wait_gone(upper.core.read_namespaced_pod, "ephemeral", ns, timeout=30, what="upper pod deleted")
    time.sleep(2)  # twice the collection delay: a copy made meanwhile would still be seen below
    # Nothing was made for it downstairs, not even its namespace (which tensile would never delete).
    assert get_or_none(lower.core.read_namespace, ns) is None
    assert_left_clean(federation, case)


def test_namespace_deleted_with_pods_in_it_removes_every_copy_and_finishes(federation: Fed, case: Case) -> None:
    upper, lower, vn = federation
    ns = case.ns
    storage = f"odd-{ns}"
    lower.core.create_persistent_volume({"metadata": {"name": storage}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage,
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{ns}"}}})
    try:
        upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
        upper.core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"k": "v"}})
        upper.core.create_namespaced_service_account(ns, {"metadata": {"name": "runner"}})
        upper.core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": storage,
            "resources": {"requests": {"storage": "1Gi"}}}})
        upper.core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "ports": [{"port": 80}]}})
        volumes = [{"name": "c", "configMap": {"name": "cfg"}}, {"name": "s", "secret": {"secretName": "sec"}}]
        upper.apps.create_namespaced_deployment(ns, deployment_manifest(
            "web", 3, {"app": "web"}, node_name=VK, serviceAccountName="runner", volumes=volumes))
        upper.core.create_namespaced_pod(ns, pod_manifest("db", node_name=VK, volumes=[
            *volumes, {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
        wait_for(lambda: len([p for p in lower.core.list_namespaced_pod(ns).items
                              if p.status.phase == "Running"]) == 4, 60, what="4 copies running downstairs")
        claim = wait_for(lambda: (pvc := upper.core.read_namespaced_persistent_volume_claim("data", ns))
                         .status.phase == "Bound" and pvc, 60, what="upper claim bound to its mirror")
        mirror = claim.spec.volume_name
        kinds = {o.split("/")[0] for o in leftovers(lower, ns)}
        assert kinds >= {"Pod", "ConfigMap", "Secret", "ServiceAccount", "PersistentVolumeClaim", "Service"}, kinds
        upper.core.delete_namespace(ns)
        # The upper namespace finishes: every pod in it was let go by the virtual node.
        wait_gone(upper.core.read_namespace, ns, timeout=90, what="upper namespace deleted")
        wait_for(lambda: not leftovers(lower, ns), 60, what=f"no tensile object left in lower {ns}")
        assert lower.core.list_namespaced_pod(ns).items == []
        wait_gone(upper.core.read_persistent_volume, mirror, timeout=30, what="the mirror volume deleted upstairs")
        assert_healthy(vn, case)
    finally:
        lower.core.delete_persistent_volume(storage)


# --- the command given bad input --------------------------------------------------------------------------

class HtmlServer(http.server.ThreadingHTTPServer):
    """A web server that is not Kubernetes: every GET is an HTML page."""

    def __init__(self) -> None:
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<html><body><h1>It works!</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Page)


class Closer:
    """A TCP port that accepts a connection and closes it at once."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.done = threading.Event()

    def serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.done.is_set():
                    return  # closed by ``close``
                raise
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


@contextlib.contextmanager
def not_kubernetes(kind: str) -> Iterator[str]:
    """The server URL of something that is not a Kubernetes API, serving until the block ends."""
    if kind == "html":
        web = HtmlServer()
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{web.server_address[1]}"
        finally:
            web.shutdown()
            web.server_close()
            thread.join(timeout=5)
        return
    closer = Closer()
    thread = threading.Thread(target=closer.serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{closer.port}"
    finally:
        closer.close()
        thread.join(timeout=5)


def start_virtual_node(upper_kubeconfig: Path, lower_kubeconfig: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tensile.cli", "virtual-node", "--nodename=vk-bad-input",
         f"--kubeconfig={upper_kubeconfig}", f"--client-kubeconfig={lower_kubeconfig}",
         "--metrics-addr=", "--kubelet-port=0", "--log-format=json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


#: Each bad input, and what the one line on stderr says about it.
BAD_INPUT = {
    "upper-not-yaml": "cannot load the upper kubeconfig",
    "lower-directory": "cannot load the lower kubeconfig",
    "lower-html": "(the lower cluster's server) is not a Kubernetes API server: GET /version answered something "
                  "that is not JSON",
    "lower-closes": "(the lower cluster's server) is not a Kubernetes API server: it closed the connection",
}


def test_bad_kubeconfig_or_a_lower_server_that_is_not_kubernetes_is_one_line_and_exit_2(
        cluster_pair: tuple[LocalCluster, LocalCluster], tmp_path: Path) -> None:
    upper, lower = cluster_pair
    started: dict[str, subprocess.Popen[str]] = {}
    with contextlib.ExitStack() as stack:
        for bad in BAD_INPUT:  # all at once: each is a process start-up, the same for every case
            upper_config, lower_config = upper.kubeconfig, lower.kubeconfig
            if bad == "upper-not-yaml":
                upper_config = tmp_path / "upper.kubeconfig"
                upper_config.write_text("apiVersion: v1\nclusters: [ {name: c\n")
            elif bad == "lower-directory":
                lower_config = tmp_path
            else:
                server = stack.enter_context(not_kubernetes(bad.removeprefix("lower-")))
                config = yaml.safe_load(lower.kubeconfig.read_text())
                config["clusters"][0]["cluster"]["server"] = server
                lower_config = tmp_path / f"{bad}.kubeconfig"
                lower_config.write_text(yaml.safe_dump(config))
            started[bad] = start_virtual_node(upper_config, lower_config)
        results: dict[str, tuple[int, str]] = {}
        for bad, proc in started.items():
            try:
                _, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            results[bad] = (proc.returncode, err)
    for bad, says in BAD_INPUT.items():
        code, err = results[bad]
        lines = err.splitlines()
        assert code == 2, (bad, err)
        assert len(lines) == 1 and lines[0].startswith("tensile virtual-node: ") and says in lines[0], (bad, err)
    assert get_or_none(upper.core.read_node, "vk-bad-input") is None
