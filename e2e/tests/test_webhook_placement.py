"""Placement through the webhook and back (issue: pod semantics, placement).

The webhook sets a pod's lower-node constraints aside so the upper scheduler can
place it on a virtual node; the virtual node restores them on the lower copy.
These tests run the pair with a webhook that keeps a second upper-only key
(``pool``), the way an SRE pins workloads to a pool of virtual nodes.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, kubectl, unique, wait_pod_running
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"
OPT_IN = {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}


@pytest.fixture(scope="module")
def webhook(federation: Fed) -> Iterator[WebhookProcess]:
    upper, _, _ = federation
    with WebhookProcess(upper, extra_args=[f"--ignore-selector-keys={c.CLUSTER_ID_LABEL},pool"]) as wh:
        yield wh


@pytest.fixture
def ns(federation: Fed, webhook: WebhookProcess) -> Iterator[str]:
    upper, _, _ = federation
    name = unique("place")
    create_namespace(upper, name)
    yield name


def opted_in_pod(name: str, labels: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {**OPT_IN, **(labels or {})}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}], "terminationGracePeriodSeconds": 5, **spec}}


def test_webhook_ignore_keys_are_left_upstairs_by_the_virtual_node(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    # An admin labels the virtual node; the webhook keeps `pool` so pods can pin to it.
    upper.core.patch_node(VK, {"metadata": {"labels": {"pool": "burst"}}})
    upper.core.create_namespaced_pod(ns, opted_in_pod("pinned", nodeSelector={"pool": "burst", "disktype": "ssd"}))
    up = wait_pod_running(upper, ns, "pinned", timeout=90)
    assert up.spec.node_name == VK and up.spec.node_selector.get("pool") == "burst"
    low = wait_pod_running(lower, ns, "pinned", timeout=30)
    assert low.spec.node_selector == {"disktype": "ssd"} and low.spec.node_name == "lower-a"


def test_hand_written_cluster_selector_is_replaced_and_cannot_be_edited_later(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    forged = opted_in_pod("forged", nodeSelector={"disktype": "ssd"})
    forged["metadata"]["annotations"] = {c.CLUSTER_SELECTOR_ANNOTATION: json.dumps({
        "nodeSelector": {"disktype": "hdd"},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]})}
    proc = subprocess.run(["kubectl", f"--kubeconfig={upper.kubeconfig}", "create", "-n", ns, "-f", "-"],
                          input=json.dumps(forged), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" in proc.stderr and c.CLUSTER_SELECTOR_ANNOTATION in proc.stderr
    low = wait_pod_running(lower, ns, "forged", timeout=90)
    # The copy follows what upper admission saw in the spec, not the hand-written annotation.
    assert low.spec.node_selector == {"disktype": "ssd"} and low.spec.node_name == "lower-a"
    assert all(t.key != "node-role.kubernetes.io/control-plane" for t in low.spec.tolerations or [])
    with pytest.raises(RuntimeError, match=c.CLUSTER_SELECTOR_ANNOTATION):
        kubectl(upper, "annotate", "pod", "forged", "-n", ns, "--overwrite",
                f'{c.CLUSTER_SELECTOR_ANNOTATION}={{"nodeSelector":{{"disktype":"hdd"}}}}')


def test_spreading_and_hostname_anti_affinity_are_applied_downstairs(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    labels = {"app": "spread", **OPT_IN}
    selector = {"matchLabels": {"app": "spread"}}
    upper.apps.create_namespaced_deployment(ns, {"metadata": {"name": "spread"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "app", "image": "nginx"}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                           "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": c.HOSTNAME_LABEL, "labelSelector": selector}]}}}}}})

    def running(cluster: LocalCluster) -> list[k8s.V1Pod]:
        pods = [p for p in cluster.core.list_namespaced_pod(ns, label_selector="app=spread").items
                if p.status.phase == "Running"]
        return pods if len(pods) == 2 else []

    ups = wait_for(lambda: running(upper), 90, what="both replicas Running on the virtual node")
    assert {p.spec.node_name for p in ups} == {VK}
    assert not ups[0].spec.topology_spread_constraints
    lows = wait_for(lambda: running(lower), 30, what="both copies Running downstairs")
    # The lower scheduler applied the original spreading: one replica per zone, one per node.
    assert {p.spec.node_name for p in lows} == {"lower-a", "lower-b"}
    assert lows[0].spec.topology_spread_constraints[0].topology_key == "zone"
    assert lows[0].spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution


def test_tolerations_added_after_admission_reach_the_copy(federation: Fed, ns: str) -> None:
    upper, lower, _ = federation
    upper.core.create_namespaced_pod(ns, opted_in_pod("tolerant", tolerations=[
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]))
    low = wait_pod_running(lower, ns, "tolerant", timeout=90)
    assert any(t.key == "dedicated" for t in low.spec.tolerations)
    added = {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    current = [t.to_dict() for t in upper.core.read_namespaced_pod("tolerant", ns).spec.tolerations]
    camel = [{"key": t["key"], "operator": t["operator"], "value": t["value"], "effect": t["effect"],
              "tolerationSeconds": t["toleration_seconds"]} for t in current]
    upper.core.patch_namespaced_pod("tolerant", ns, {"spec": {"tolerations": [
        {k: v for k, v in t.items() if v is not None} for t in camel] + [added]}})
    wait_for(lambda: any(t.key == "example.com/maintenance" for t in
                         lower.core.read_namespaced_pod("tolerant", ns).spec.tolerations or []), 30,
             what="added toleration on the lower copy")


class _LaterWebhook(http.server.BaseHTTPRequestHandler):
    """Another team's mutating webhook, called after tensile's: it pins pods to SSD nodes."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        selector = dict((request["object"].get("spec") or {}).get("nodeSelector") or {})
        response: dict[str, object] = {"uid": request["uid"], "allowed": True}
        if selector.get("disktype") != "ssd":
            selector["disktype"] = "ssd"
            patch = [{"op": "add", "path": "/spec/nodeSelector", "value": selector}]
            response.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def later_webhook(federation: Fed, webhook: WebhookProcess, tmp_path: Path) -> Iterator[None]:
    upper, _, _ = federation
    subprocess.run([sys.executable, "-m", "tensile.cli", "webhook", "certs", str(tmp_path), "--host", "127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LaterWebhook)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = k8s.AdmissionregistrationV1Api(upper.api())
    name = "zz-later-webhook"  # configurations are called in name order: after tensile's
    api.create_mutating_webhook_configuration({"metadata": {"name": name}, "webhooks": [{
        "name": "ssd.later.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "clientConfig": {"url": f"https://127.0.0.1:{server.server_address[1]}/mutate",
                         "caBundle": base64.b64encode((tmp_path / "ca.crt").read_bytes()).decode()},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "objectSelector": {"matchLabels": {"needs-ssd": "true"}}, "reinvocationPolicy": "Never",
        "failurePolicy": "Fail", "timeoutSeconds": 5}]})
    try:
        yield
    finally:
        api.delete_mutating_webhook_configuration(name)
        server.shutdown()
        thread.join(timeout=10)


def test_constraints_a_later_webhook_adds_are_relaxed_upstairs_and_kept_downstairs(
    federation: Fed, ns: str, later_webhook: None
) -> None:
    upper, lower, _ = federation

    def admitted() -> k8s.V1Pod | None:
        pod = upper.core.create_namespaced_pod(ns, opted_in_pod(unique("probe"), labels={"needs-ssd": "true"}),
                                               dry_run="All")
        return pod if (pod.spec.node_selector or {}).get("disktype") is None and pod.metadata.annotations else None

    wait_for(admitted, 30, interval=0.5, what="both webhooks active, tensile re-invoked after the later one")
    upper.core.create_namespaced_pod(ns, opted_in_pod("late", labels={"needs-ssd": "true"}))
    up = wait_pod_running(upper, ns, "late", timeout=90)
    assert up.spec.node_name == VK and "disktype" not in (up.spec.node_selector or {})
    low = wait_pod_running(lower, ns, "late", timeout=30)
    assert low.spec.node_selector == {"disktype": "ssd"} and low.spec.node_name == "lower-a"
