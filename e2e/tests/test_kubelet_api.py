"""kubectl logs, exec, attach and port-forward through the virtual node's kubelet API (issue 11).

Both apiservers run with ``--kubelet-certificate-authority`` and a kubelet client
certificate, as managed clusters do: the upper one verifies the virtual node's serving
certificate, the lower one kwok's. kwok serves every fake pod's log from one CRI log
file, runs exec commands on this host and forwards ports to a local TCP echo server.

The apiserver's node proxy (``nodes/NAME/proxy``) refuses loopback node addresses
(``address not allowed``); ``pods/log``, ``pods/exec``, ``pods/attach`` and
``pods/portforward`` do not check, so ``kubectl`` reaches the virtual node on 127.0.0.1.
The kubelet port itself is called directly with the apiserver's own client certificate.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.kube_helpers import create_namespace, https_call, kubectl, pod_manifest, unique, wait_pod_running
from e2e.process import free_port
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c

pytestmark = pytest.mark.e2e

Fed = tuple[LocalCluster, LocalCluster, VirtualNodeProcess]
VK = "vk-lower"


@pytest.fixture(scope="module")
def running(federation: Fed) -> Iterator[tuple[str, str]]:
    """A namespace and a pod Running on the virtual node (its copy Running downstairs)."""
    upper, lower, _ = federation
    ns = unique("kl")
    create_namespace(upper, ns)
    name = "app"
    upper.core.create_namespaced_pod(ns, pod_manifest(name, node_name=VK))
    wait_pod_running(upper, ns, name, timeout=90)
    wait_pod_running(lower, ns, name, timeout=30)
    yield ns, name


def _kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def _kubelet(vn: VirtualNodeProcess, path: str, *, cert: tuple[str, str] | None = None,
             token: str | None = None) -> tuple[int, str]:
    return https_call(vn.kubelet_port, path, vn.upper.dir / "pki" / "kubelet-ca.crt", cert=cert, token=token)


def _apiserver_cert(cluster: LocalCluster) -> tuple[str, str]:
    d = cluster.dir / "pki"
    return str(d / "kubelet-client.crt"), str(d / "kubelet-client.key")


class _Output:
    """What a running process printed so far, read without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.text = ""

    def read(self) -> str:
        try:
            while chunk := os.read(self.fd, 65536):
                self.text += chunk.decode(errors="replace")
        except BlockingIOError:
            pass
        return self.text


def _open_streams(vn: VirtualNodeProcess) -> float:
    return vn.metrics().total("tensile_kubelet_open_streams")


def _open_fds(vn: VirtualNodeProcess) -> int:
    assert vn.proc is not None and vn.proc.pid is not None
    return len(os.listdir(f"/proc/{vn.proc.pid}/fd"))


def test_node_publishes_only_an_address_the_apiserver_can_dial(federation: Fed) -> None:
    upper, _, vn = federation
    node = wait_for(lambda: (n := upper.core.read_node(VK)).status.addresses and n, 30, what="node status written")
    assert [(a.type, a.address) for a in node.status.addresses] == [("InternalIP", "127.0.0.1")]
    assert node.status.daemon_endpoints.kubelet_endpoint.port == vn.kubelet_port


def test_kubectl_logs_prints_the_lower_pods_log_with_every_option(federation: Fed, running: tuple[str, str]) -> None:
    upper, lower, _ = federation
    ns, pod = running
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    lower.write_pod_log(["an old line"], when=old)
    lower.write_pod_log(["first", "second", "third"])
    lower.write_pod_log(["from the container before its restart"], previous=True)

    out = kubectl(upper, "logs", "-n", ns, pod)
    assert out.splitlines()[-4:] == ["an old line", "first", "second", "third"]
    assert kubectl(upper, "logs", "-n", ns, pod, "--tail=1").splitlines() == ["third"]
    assert kubectl(upper, "logs", "-n", ns, pod, "--since=10m").splitlines()[-3:] == ["first", "second", "third"]
    assert "an old line" not in kubectl(upper, "logs", "-n", ns, pod, "--since=10m")
    stamped = kubectl(upper, "logs", "-n", ns, pod, "--timestamps", "--tail=1").strip()
    when, _, line = stamped.partition(" ")
    assert line == "third" and when.startswith(str(datetime.datetime.now(datetime.UTC).year))
    assert kubectl(upper, "logs", "-n", ns, pod, "--previous").splitlines() == [
        "from the container before its restart"]
    assert kubectl(upper, "logs", "-n", ns, pod, "--limit-bytes=5", "--tail=1") == "third"[:5]


def test_kubectl_logs_follow_streams_new_lines_and_ends_with_its_caller(federation: Fed,
                                                                       running: tuple[str, str]) -> None:
    upper, lower, vn = federation
    ns, pod = running
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={upper.kubeconfig}", "logs", "-f", "--tail=0", "-n", ns, pod],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out = _Output(proc)
        marker = unique("followed")

        def arrived() -> bool:
            # Written until seen: lines written before the follow started are not followed (--tail=0).
            lower.write_pod_log([marker])
            return proc.poll() is None and marker in out.read()

        wait_for(arrived, 30, what="a new line through kubectl logs -f")
        assert _open_streams(vn) >= 1
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # The caller went away: the relay and its lower request end too.
    wait_for(lambda: _open_streams(vn) == 0, 30, what="the follow relay closed")


def test_kubectl_exec_prints_output_passes_stdin_and_reports_the_exit_status(federation: Fed,
                                                                            running: tuple[str, str]) -> None:
    upper, lower, _ = federation
    ns, pod = running
    through = _kubectl(upper, "exec", "-n", ns, pod, "--", "sh", "-c", "echo hi; exit 3")
    direct = _kubectl(lower, "exec", "-n", ns, pod, "--", "sh", "-c", "echo hi; exit 3")
    assert through.stdout == "hi\n", through.stderr
    # kwok reports a non-zero exit as a failure status carrying "exit status 3", not as the
    # kubelet's NonZeroExitCode status (its exec wraps the ExitError), so kubectl exits 1 on
    # kwok pods even downstairs. The relay hands up exactly what the lower cluster says.
    assert "exit status 3" in through.stderr
    assert (through.returncode, through.stdout) == (direct.returncode, direct.stdout)
    assert through.returncode != 0
    # kwok does not close a command's stdin at the end of the stream: the command reads what it needs.
    result = _kubectl(upper, "exec", "-i", "-n", ns, pod, "--", "sh", "-c", "head -c 14 | tr a-z A-Z",
                      stdin="through stdin\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "THROUGH STDIN\n"


def test_kubectl_attach_streams_the_containers_output(federation: Fed, running: tuple[str, str]) -> None:
    upper, lower, vn = federation
    ns, pod = running
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={upper.kubeconfig}", "attach", "-i", "-n", ns, pod],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _open_streams(vn) >= 1, 20, what="the attach relayed")
        marker = unique("attached")
        with open(lower.debug_files.attach, "a") as f:  # kwok attaches to what the container writes next
            f.write(f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} stdout F {marker}\n")
        assert proc.stdin is not None
        proc.stdin.write(b"typed into the container\n")
        proc.stdin.flush()
        out = _Output(proc)
        wait_for(lambda: marker in out.read(), 20, what="attached output")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    wait_for(lambda: _open_streams(vn) == 0, 30, what="the attach stream closed")


def _echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_kubectl_port_forward_moves_bytes_both_ways(federation: Fed, running: tuple[str, str]) -> None:
    upper, _, vn = federation
    ns, pod = running
    local = free_port()
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={upper.kubeconfig}", "port-forward", "-n", ns, f"pod/{pod}",
                             f"{local}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        wait_for(lambda: "Forwarding from" in (proc.stdout.readline() if proc.poll() is None else "gone"), 20,
                 what="kubectl port-forward listening")
        payload = os.urandom(256 * 1024)
        assert _echo_through(local, payload) == payload
        assert _echo_through(local, b"a second connection\n") == b"a second connection\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    wait_for(lambda: _open_streams(vn) == 0, 30, what="the port-forward stream closed")


def test_streams_leave_no_socket_or_task_behind(federation: Fed, running: tuple[str, str]) -> None:
    upper, _, vn = federation
    ns, pod = running
    _kubectl(upper, "exec", "-n", ns, pod, "--", "true")
    wait_for(lambda: _open_streams(vn) == 0, 30, what="streams closed")
    baseline = _open_fds(vn)
    for i in range(10):
        result = _kubectl(upper, "exec", "-n", ns, pod, "--", "sh", "-c", f"echo {i}")
        assert result.stdout == f"{i}\n", result.stderr
    wait_for(lambda: _open_streams(vn) == 0, 30, what="streams closed")
    # Sockets of finished streams are closed (a few pooled API connections may come and go).
    wait_for(lambda: _open_fds(vn) <= baseline + 4, 30, what=f"open files back near {baseline}")
    assert vn.metrics().total("tensile_kubelet_relayed_bytes_total") > 0


def test_anonymous_gets_401_an_unauthorised_token_403_and_the_apiserver_200(federation: Fed,
                                                                            running: tuple[str, str]) -> None:
    upper, _, vn = federation
    ns, pod = running
    assert _kubelet(vn, "/pods")[0] == 401
    assert _kubelet(vn, f"/containerLogs/{ns}/{pod}/app")[0] == 401
    sa = unique("nobody")
    upper.core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
    token = upper.core.create_namespaced_service_account_token(
        sa, ns, {"spec": {"expirationSeconds": 600}}).status.token
    status, body = _kubelet(vn, f"/containerLogs/{ns}/{pod}/app", token=token)
    assert status == 403 and "nodes/proxy" in body
    rbac = k8s.RbacAuthorizationV1Api(upper.api())
    role = unique("node-stats")
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": [
        {"apiGroups": [""], "resources": ["nodes/pods", "nodes/proxy"], "verbs": ["get"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": role},
                                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": role},
                                      "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
    try:
        # A denial is cached for 30 s, as the kubelet's; a fresh token is a fresh question.
        token = upper.core.create_namespaced_service_account_token(
            sa, ns, {"spec": {"expirationSeconds": 601}}).status.token
        status, body = wait_for(lambda: (r := _kubelet(vn, "/pods", token=token))[0] == 200 and r, 45,
                                what="the granted token let in")
        assert pod in body
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
    status, body = _kubelet(vn, "/pods", cert=_apiserver_cert(upper))
    assert status == 200 and f'"name":"{pod}"' in body.replace(" ", "")
    assert _kubelet(vn, "/healthz", cert=_apiserver_cert(upper)) == (200, "ok")


def test_stats_answer_503_when_the_lower_cluster_has_no_metrics_api(federation: Fed) -> None:
    _, _, vn = federation
    for route in ("/stats/summary", "/metrics/resource"):
        status, body = _kubelet(vn, route, cert=_apiserver_cert(vn.upper))
        assert status == 503 and "metrics.k8s.io" in body


def test_a_self_signed_serving_certificate_is_refused_by_a_verifying_apiserver(
        federation: Fed, make_virtual_node: Any) -> None:
    upper, lower, _ = federation
    name = "vk-self-signed"
    make_virtual_node(upper, lower, name, verified_serving_cert=False)
    ns = unique("ss")
    create_namespace(upper, ns)
    upper.core.create_namespaced_pod(ns, pod_manifest("app", node_name=name))
    wait_pod_running(upper, ns, "app", timeout=90)
    result = _kubectl(upper, "logs", "-n", ns, "app")
    assert result.returncode != 0
    assert "x509" in result.stderr or "certificate" in result.stderr, result.stderr


def test_a_kubelet_serving_certificate_request_once_approved_serves_logs(
        federation: Fed, make_virtual_node: Any) -> None:
    upper, lower, _ = federation
    name = "vk-csr"
    make_virtual_node(upper, lower, name, verified_serving_cert=False, extra_args=["--rotate-server-certificates"])
    certificates = k8s.CertificatesV1Api(upper.api())
    request = wait_for(lambda: next(iter(certificates.list_certificate_signing_request(
        label_selector=f"{c.OWNER_NODE_LABEL}={name}").items), None), 30, what="the serving certificate request")
    assert request.spec.signer_name == "kubernetes.io/kubelet-serving"
    ns = unique("csr")
    create_namespace(upper, ns)
    upper.core.create_namespaced_pod(ns, pod_manifest("app", node_name=name))
    wait_pod_running(upper, ns, "app", timeout=90)
    # Self-signed until approved: the verifying apiserver refuses it.
    assert _kubectl(upper, "logs", "-n", ns, "app").returncode != 0
    lower.write_pod_log(["served with a signed certificate"])
    kubectl(upper, "certificate", "approve", request.metadata.name)
    out = wait_for(lambda: (r := _kubectl(upper, "logs", "-n", ns, "app")).returncode == 0 and r.stdout, 60,
                   what="logs once the certificate is issued")
    assert "served with a signed certificate" in out


def test_a_websocket_v4_exec_straight_to_the_kubelet_port_is_relayed(federation: Fed,
                                                                      running: tuple[str, str]) -> None:
    """Older clients speak WebSocket (v4.channel.k8s.io) to kubelets; the upgrade goes down as it came."""
    import asyncio

    import aiohttp

    _, _, vn = federation
    ns, pod = running
    ctx = ssl.create_default_context(cafile=str(vn.upper.dir / "pki" / "kubelet-ca.crt"))
    ctx.load_cert_chain(*_apiserver_cert(vn.upper))
    url = (f"https://127.0.0.1:{vn.kubelet_port}/exec/{ns}/{pod}/app?command=sh&command=-c"
           "&command=echo+over+websocket%3B+exit+3&output=1&error=1")

    async def run() -> tuple[bytes, bytes]:
        stdout, status = b"", b""
        async with aiohttp.ClientSession() as session, session.ws_connect(
                url, protocols=("v4.channel.k8s.io",), ssl=ctx, timeout=aiohttp.ClientWSTimeout(ws_close=10)) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                channel, data = msg.data[0], msg.data[1:]
                if channel == 1:
                    stdout += data
                elif channel == 3:
                    status += data
        return stdout, status

    stdout, status = asyncio.run(asyncio.wait_for(run(), 30))
    assert stdout == b"over websocket\n"
    assert b"exit status 3" in status  # kwok's failure status, relayed on the error channel
    wait_for(lambda: _open_streams(vn) == 0, 30, what="the websocket stream closed")
