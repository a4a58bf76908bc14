"""Security (issue 16, fault suite): Secret values stay out of logs and Events; the HTTPS ports admit
only who they must.

The suite-wide half of "no Secret value in any log or Event" runs after every e2e test
(``e2e.secretscan``, wired in ``conftest.py``). Here the virtual node runs at ``-v 10``, the highest
verbosity (every API request, path and code), while Secrets are copied, updated, refused by a
lower object tensile does not own, refused by a lower quota, and replaced because they are
immutable; then every log of this module's processes and the Events of both clusters are searched
for every value those Secrets ever held.

The webhook (``--client-ca-file``, ``--client-allowed-names``) and the virtual node's kubelet API
(``--client-ca-file``, TokenReview, SubjectAccessReview) serve TLS only. Plain HTTP on their ports
gets no HTTP answer at all: the TLS handshake fails on the first bytes and the connection is
closed. A caller with no certificate and no token gets 401 on every route that carries data (the
webhook's probes stay open for kubelets), a certificate from another CA fails the handshake, and a
known identity without the rights gets 403.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import pki, secretscan
from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import (
    create_namespace,
    events_for,
    get_or_none,
    https_call,
    pod_manifest,
    unique,
    wait_pod_running,
)
from e2e.secretscan import secret_value
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c
from tensile.certs import issue, make_ca, write_cert, write_key

pytestmark = pytest.mark.e2e

VK = "vk-lower"


class Secure:
    def __init__(self, upper: LocalCluster, lower: LocalCluster, vn: VirtualNodeProcess, webhook: WebhookProcess,
                 tmp: Path) -> None:
        self.upper, self.lower, self.vn, self.webhook, self.tmp = upper, lower, vn, webhook, tmp


@pytest.fixture(scope="module")
def secure(cluster_pair: tuple[LocalCluster, LocalCluster],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    upper, lower = cluster_pair
    with VirtualNodeProcess(upper, lower, VK, extra_args=["--v=10", "--log-format=text"]) as vn, \
            WebhookProcess(upper) as webhook:
        yield Secure(upper, lower, vn, webhook, tmp_path_factory.mktemp("security"))


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _uses(name: str, secret: str, **extra: Any) -> dict[str, Any]:
    """A pod on the virtual node that mounts ``secret`` and reads it into its environment."""
    return pod_manifest(name, node_name=VK, containers=[{
        "name": "app", "image": "nginx", "envFrom": [{"secretRef": {"name": secret}}],
        "volumeMounts": [{"name": "s", "mountPath": "/s"}]}], volumes=[{"name": "s", "secret": {"secretName": secret}}],
        **extra)


def _lower_value(lower: LocalCluster, ns: str, name: str, key: str) -> str | None:
    secret = get_or_none(lower.core.read_namespaced_secret, name, ns)
    return base64.b64decode(secret.data[key]).decode() if secret is not None and secret.data else None


def _event(cluster: LocalCluster, ns: str, name: str, reason: str) -> str:
    return "\n".join(e.message or "" for e in events_for(cluster, ns, name) if e.reason == reason)


def test_secret_values_reach_no_log_or_event_at_the_highest_verbosity_even_around_refusals(secure: Secure) -> None:
    upper, lower, vn = secure.upper, secure.lower, secure.vn
    ns = unique("sec")
    create_namespace(upper, ns)
    values = {k: secret_value(k) for k in ("password", "token", "foreign", "taken", "frozen-1", "frozen-2",
                                           "over", "password-2")}
    # A Secret copied down, mounted and read into the environment.
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": "db"}, "data": {"password": _b64(values["password"])},
                                             "stringData": {"token": values["token"]}})
    upper.core.create_namespaced_pod(ns, _uses("app", "db"))
    wait_pod_running(upper, ns, "app", timeout=90)
    assert _lower_value(lower, ns, "db", "password") == values["password"]
    # A conflict: downstairs, someone else's Secret of the same name, which tensile will not overwrite.
    lower.core.create_namespaced_secret(ns, {"metadata": {"name": "taken"}, "stringData": {"v": values["foreign"]}})
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": "taken"}, "stringData": {"v": values["taken"]}})
    upper.core.create_namespaced_pod(ns, _uses("clash", "taken"))
    # An immutable Secret, replaced upstairs with another value: the copy is replaced.
    frozen = {"metadata": {"name": "frozen"}, "immutable": True, "stringData": {"v": values["frozen-1"]}}
    upper.core.create_namespaced_secret(ns, frozen)
    upper.core.create_namespaced_pod(ns, _uses("ice", "frozen"))
    wait_pod_running(upper, ns, "ice", timeout=60)
    upper.core.delete_namespaced_secret("frozen", ns)
    upper.core.create_namespaced_secret(ns, {**frozen, "stringData": {"v": values["frozen-2"]}})
    wait_for(lambda: _lower_value(lower, ns, "frozen", "v") == values["frozen-2"], 60,
             what="the immutable copy replaced")
    # Refused by a lower quota with no room for another Secret.
    full = len(lower.core.list_namespaced_secret(ns).items)
    lower.core.create_namespaced_resource_quota(ns, {"metadata": {"name": "secrets"},
                                                     "spec": {"hard": {"count/secrets": str(full)}}})
    wait_for(lambda: lower.core.read_namespaced_resource_quota("secrets", ns).status.hard, 30, what="quota active")
    upper.core.create_namespaced_secret(ns, {"metadata": {"name": "over"}, "stringData": {"v": values["over"]}})
    upper.core.create_namespaced_pod(ns, _uses("over", "over"))
    # Changed upstairs: the copy follows.
    upper.core.patch_namespaced_secret("db", ns, {"data": {"password": _b64(values["password-2"])}})

    conflict = wait_for(lambda: _event(upper, ns, "clash", "DependencyConflict"), 60, what="the conflict Event")
    assert "not managed by this virtual node" in conflict
    refused = wait_for(lambda: _event(upper, ns, "over", "DependencyRefused"), 60, what="the quota refusal Event")
    assert "exceeded quota" in refused
    wait_for(lambda: _lower_value(lower, ns, "db", "password") == values["password-2"], 60, what="the update copied")
    assert _lower_value(lower, ns, "taken", "v") == values["foreign"]  # left alone

    # At -v 10 every request to a Secret was logged: paths and codes, the refusals too.
    log = vn.log_path.read_text()
    assert f"/namespaces/{ns}/secrets/db" in log and f"/namespaces/{ns}/secrets/frozen" in log
    assert f"POST /api/v1/namespaces/{ns}/secrets 403" in log  # the quota's refusal
    registered = {v: f"Secret of {ns}" for v in values.values()}
    hits = []
    files = {p for p in secretscan.log_files() if p.parent in (upper.dir, lower.dir)} | {vn.log_path}
    for path in sorted(files):
        for value, at in secretscan.find(path.read_bytes(), registered):
            hits.append(f"{path} at byte {at}: {value}")
    for cluster in (upper, lower):
        status, events = cluster.get_raw("/api/v1/events")
        assert status == 200
        hits += [f"an Event of {cluster.name}: {value}" for value, _ in secretscan.find(events, registered)]
    print(f"searched {len(files)} logs ({sum(p.stat().st_size for p in files) // 1024} KiB, the virtual node's "
          f"{len(log) // 1024} KiB at -v 10) and the Events of both clusters for {len(values)} values")
    assert hits == []


def _plain_http(port: int, request: bytes) -> bytes:
    """What a plain-HTTP request to a TLS port gets back before the connection ends."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass  # closed by a reset instead of a FIN: the same refusal
        return received


def _foreign_cert(tmp: Path, cn: str) -> tuple[str, str]:
    """A client certificate for ``cn`` from a CA nobody trusts."""
    cert, key = issue(make_ca("stranger-ca", 1), cn, 1, client=True)
    write_cert(tmp / f"foreign-{cn}.crt", cert)
    write_key(tmp / f"foreign-{cn}.key", key)
    return str(tmp / f"foreign-{cn}.crt"), str(tmp / f"foreign-{cn}.key")


def _review(ns: str) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE", "namespace": ns,
        "object": {"metadata": {"name": "p", "namespace": ns, "labels": {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}},
                   "spec": {"containers": [{"name": "c", "image": "x"}],
                            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}},
    }).encode()


def test_the_webhook_refuses_plain_http_and_answers_only_the_apiserver(secure: Secure) -> None:
    upper, webhook = secure.upper, secure.webhook
    port, ca = webhook.port, webhook.dir / "ca.crt"
    for request in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"):
        answer = _plain_http(port, request)
        print(f"plain HTTP to the webhook's port: {answer[:16]!r} ({len(answer)} bytes), then the connection closed")
        assert b"HTTP/" not in answer, answer  # no HTTP answer, not even a 400: the connection just ends
    review = _review("default")
    status, body = https_call(port, "/mutate", ca, body=review)
    assert status == 401 and "client certificate" in body  # anonymous: would have been a signed clusterSelector
    admin = str(upper.dir / "pki" / "admin.crt"), str(upper.dir / "pki" / "admin.key")
    status, body = https_call(port, "/mutate", ca, cert=admin, body=review)
    assert status == 403 and "tensile-admin" in body  # the cluster's CA signed it, but it is not the apiserver
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        https_call(port, "/mutate", ca, cert=_foreign_cert(secure.tmp, pki.WEBHOOK_CLIENT_CN), body=review)
    assert https_call(port, "/healthz", ca) == (200, "ok")  # probes stay open
    # The apiserver itself is let in: an opted-in pod is mutated.
    pod = upper.core.create_namespaced_pod("default", {
        "metadata": {"generateName": "probe-", "labels": {c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}, dry_run="All")
    assert c.CLUSTER_SELECTOR_ANNOTATION in pod.metadata.annotations
    assert webhook.metrics().total("tensile_admission_requests_total", result="refused") == 2


KUBELET_ROUTES = ("/containerLogs/{ns}/app/app", "/containerLogs/{ns}/app/app?follow=true",
                  "/exec/{ns}/app/app?command=cat&command=/etc/hostname&output=1", "/attach/{ns}/app/app?output=1",
                  "/portForward/{ns}/app", "/run/{ns}/app/app", "/stats/summary", "/stats", "/metrics/resource",
                  "/pods", "/runningpods/", "/healthz")


def test_the_kubelet_api_refuses_plain_http_and_anonymous_callers_on_every_route(secure: Secure) -> None:
    upper, vn = secure.upper, secure.vn
    ns = unique("kl")
    create_namespace(upper, ns)
    upper.core.create_namespaced_pod(ns, pod_manifest("app", node_name=VK))
    wait_pod_running(upper, ns, "app", timeout=90)
    port, ca = vn.kubelet_port, upper.dir / "pki" / "kubelet-ca.crt"
    answer = _plain_http(port, f"GET /containerLogs/{ns}/app/app HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    print(f"plain HTTP to the kubelet port: {answer[:16]!r} ({len(answer)} bytes), then the connection closed")
    assert b"HTTP/" not in answer, answer
    anonymous = {route: https_call(port, route.format(ns=ns), ca)[0] for route in KUBELET_ROUTES}
    assert anonymous == dict.fromkeys(KUBELET_ROUTES, 401)
    assert https_call(port, f"/containerLogs/{ns}/app/app", ca, token="not-a-token")[0] == 401  # TokenReview says no
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        https_call(port, "/pods", ca, cert=_foreign_cert(secure.tmp, "kube-apiserver-kubelet-client"))
    # A real identity without rights on this Node: 403 (SubjectAccessReview), for data and commands alike.
    upper.core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    token = wait_for(lambda: upper.core.create_namespaced_service_account_token(
        "nobody", ns, {"spec": {"expirationSeconds": 600}}).status.token, 30, what="a token")
    for route in ("/exec/{ns}/app/app?command=ls&output=1", "/stats/summary", "/containerLogs/{ns}/app/app"):
        status, body = https_call(port, route.format(ns=ns), ca, token=token)
        assert status == 403 and "nodes/" in body, (route, status, body)
    # The apiserver's own client certificate is let in.
    apiserver = str(upper.dir / "pki" / "kubelet-client.crt"), str(upper.dir / "pki" / "kubelet-client.key")
    status, body = https_call(port, "/pods", ca, cert=apiserver)
    assert status == 200 and '"app"' in body
    assert k8s.CoreV1Api(upper.api()).read_node(VK).status.daemon_endpoints.kubelet_endpoint.port == port
