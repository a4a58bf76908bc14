"""The kubelet API server against a stand-in lower apiserver: routes, auth, relays, stats, fuzzing.

The stand-in speaks raw HTTP/1.1 on a socket, as an apiserver does for upgrades: a 101 and
then whatever bytes the stream protocol carries (here they are echoed).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio.client import Configuration

from tensile.certs import issue, make_ca, write_cert, write_key
from tensile.kube.client import JSON, Kube
from tensile.kubelet import auth, tls
from tensile.kubelet.server import KubeletServer, ServingOptions
from tests.fakes import FakeKube

UPPER_POD = {"metadata": {"name": "web", "namespace": "ns", "uid": "u1"}, "spec": {"nodeName": "vk", "containers": [
    {"name": "app", "image": "nginx"}]}, "status": {"phase": "Running", "startTime": "2026-12-02T11:00:00Z"}}
LONELY_POD = {"metadata": {"name": "lonely", "namespace": "ns", "uid": "u2"}, "spec": {"nodeName": "vk"},
              "status": {"phase": "Pending"}}


class Pods:
    node_name = "vk"
    copy_selector = "tensile.io/virtual-node=vk"

    def __init__(self) -> None:
        self.upper = {("ns", "web"): UPPER_POD, ("ns", "lonely"): LONELY_POD}

    def pod(self, namespace: str, name: str) -> JSON | None:
        return self.upper.get((namespace, name))

    def pods(self) -> list[JSON]:
        return list(self.upper.values())

    def copy_of(self, upper: JSON) -> JSON | None:
        return {"metadata": {"name": "web", "namespace": "ns"}} if upper["metadata"]["name"] == "web" else None

    def upper_of(self, lower_namespace: str, name: str) -> JSON | None:
        return self.pod(lower_namespace, name)


class FakeLower:
    """A lower apiserver: pods/log, upgraded pods/exec|attach|portforward (echo), PodMetrics."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.follow_closed = asyncio.Event()
        self.metrics: list[JSON] | None = None
        self.refuse = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @staticmethod
    def _reply(status: str, body: bytes, content_type: str = "application/json") -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            self.requests.append((method, target, headers))
            path, _, query = target.partition("?")
            if path.endswith("/log"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                             b"line 1\nline 2\n")
                await writer.drain()
                if "follow=true" in query:
                    await reader.read()  # until the relay hangs up
                    self.follow_closed.set()
            elif path.rsplit("/", 1)[-1] in ("exec", "attach", "portforward"):
                if self.refuse:
                    writer.write(self._reply("403 Forbidden", b'{"kind":"Status","message":"no exec here"}'))
                elif "upgrade" in headers.get("connection", "").lower():
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                                 b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
                    while data := await reader.read(65536):
                        writer.write(data)
                        await writer.drain()
                else:
                    writer.write(self._reply("400 Bad Request", b'{"message":"Upgrade request required"}'))
            elif path.startswith("/apis/metrics.k8s.io"):
                if self.metrics is None:
                    writer.write(self._reply("404 Not Found", b'{"kind":"Status","message":"the server could not '
                                                               b'find the requested resource"}'))
                else:
                    writer.write(self._reply("200 OK", orjson.dumps({"items": self.metrics})))
            else:
                writer.write(self._reply("404 Not Found", b"{}"))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _upper() -> FakeKube:
    upper = FakeKube("upper")

    def token(_: str, body: Any) -> JSON:
        name = {"good": "alice", "weak": "bob"}.get(body["spec"]["token"])
        return {"status": {"authenticated": name is not None, "user": {"username": name or ""}}}

    def access(_: str, body: Any) -> JSON:
        spec = body["spec"]
        allowed = spec["user"] == "alice" or "system:masters" in spec["groups"]
        return {"status": {"allowed": allowed}}

    upper.answer("POST", auth.TOKEN_REVIEWS, token)
    upper.answer("POST", auth.ACCESS_REVIEWS, access)
    return upper


def _pki(d: Path) -> tuple[str, str, str]:
    ca = make_ca("clients", 1)
    write_cert(d / "client-ca.crt", ca[0])
    cert, key = issue(ca, "kube-apiserver-kubelet-client", 1, org="system:masters", client=True)
    write_cert(d / "client.crt", cert)
    write_key(d / "client.key", key)
    return str(d / "client-ca.crt"), str(d / "client.crt"), str(d / "client.key")


class Rig:
    def __init__(self, server: KubeletServer, lower: FakeLower, client_cert: tuple[str, str]) -> None:
        self.server = server
        self.lower = lower
        self.client_cert = client_cert
        self.url = f"https://127.0.0.1:{server.port}"

    def ssl(self, cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(*self.client_cert)
        return ctx


@contextlib.asynccontextmanager
async def rig(tmp: Path) -> AsyncIterator[Rig]:
    lower = FakeLower()
    await lower.start()
    client_ca, cert, key = _pki(tmp)
    serving_cert, serving_key = tls.self_signed(tmp / "serving", "vk", ["127.0.0.1"])
    config = Configuration()
    config.host = f"http://127.0.0.1:{lower.port}"
    lower_kube = Kube(config, name="lower")
    options = ServingOptions(address="127.0.0.1", port=0, cert_file=str(serving_cert), key_file=str(serving_key),
                             client_ca_file=client_ca)
    server = KubeletServer(options, Pods(), _upper(), lower_kube)  # type: ignore[arg-type]
    await server.start()
    try:
        yield Rig(server, lower, (cert, key))
    finally:
        await server.stop()
        await lower_kube.close()
        await lower.stop()


async def _get(r: Rig, path: str, *, cert: bool = False, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(r.url + path, ssl=r.ssl(cert), headers=headers) as resp:
        return resp.status, await resp.text()


async def test_callers_without_credentials_get_401_and_without_rights_403(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert (await _get(r, "/pods"))[0] == 401
        assert (await _get(r, "/pods", token="unknown"))[0] == 401
        status, body = await _get(r, "/containerLogs/ns/web/app", token="weak")
        assert status == 403 and "nodes/proxy" in body
        assert (await _get(r, "/pods", token="good"))[0] == 200
        assert (await _get(r, "/pods", cert=True))[0] == 200
        assert r.server.metrics.requests.labels("pods", "401")._value.get() == 2


async def test_logs_are_relayed_with_the_options_translated(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, body = await _get(r, "/containerLogs/ns/web/app?tailLines=2&timestamps=true&bogus=1", cert=True)
        assert (status, body) == (200, "line 1\nline 2\n")
        method, target, headers = r.lower.requests[-1]
        assert method == "GET"
        assert target == "/api/v1/namespaces/ns/pods/web/log?container=app&tailLines=2&timestamps=true"
        assert "authorization" not in headers  # the caller's credentials never go downstairs


async def test_a_follow_ends_downstairs_when_its_caller_goes_away(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        session = aiohttp.ClientSession()
        resp = await session.get(r.url + "/containerLogs/ns/web/app?follow=true", ssl=r.ssl(True))
        assert await resp.content.readexactly(len(b"line 1\nline 2\n")) == b"line 1\nline 2\n"
        assert r.server.metrics.streams.labels("containerLogs")._value.get() == 1
        resp.close()
        await session.close()
        await asyncio.wait_for(r.lower.follow_closed.wait(), 10)
        for _ in range(100):
            if r.server.metrics.streams.labels("containerLogs")._value.get() == 0:
                break
            await asyncio.sleep(0.05)
        assert r.server.metrics.streams.labels("containerLogs")._value.get() == 0


async def _upgrade(r: Rig, path: str, method: str = "POST") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", r.server.port, ssl=r.ssl(True))
    writer.write((f"{method} {path} HTTP/1.1\r\nHost: vk\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                  "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: channel.k8s.io\r\n"
                  "Content-Length: 0\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def test_exec_is_upgraded_downstairs_and_spliced_both_ways_then_closed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        tasks_before = len(asyncio.all_tasks())
        reader, writer, head = await _upgrade(r, "/exec/ns/web/app?command=sh&command=-c&command=echo+hi&input=1"
                                                 "&output=1&tty=1")
        assert head.startswith(b"HTTP/1.1 101")
        assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in head
        method, target, headers = r.lower.requests[-1]
        assert (method, target) == ("POST", "/api/v1/namespaces/ns/pods/web/exec?container=app&command=sh&command=-c"
                                            "&command=echo+hi&stdin=true&stdout=true&tty=true")
        assert headers["upgrade"] == "SPDY/3.1"
        payload = bytes(range(256)) * 512
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        assert len(r.server.streams) == 1
        writer.close()
        for _ in range(200):
            if not r.server.streams and len(asyncio.all_tasks()) <= tasks_before:
                break
            await asyncio.sleep(0.05)
        assert not r.server.streams
        assert len(asyncio.all_tasks()) <= tasks_before
        assert r.server._runner is not None and r.server._runner.server is not None
        for _ in range(100):
            if not r.server._runner.server.connections:
                break
            await asyncio.sleep(0.05)
        assert r.server._runner.server.connections == []  # aiohttp forgot the taken-over connection
        assert r.server.metrics.bytes.labels("exec", "down")._value.get() == len(payload)
        assert r.server.metrics.streams.labels("exec")._value.get() == 0


async def test_port_forward_and_attach_upgrade_the_same_way(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for path, lower_target in (
            ("/portForward/ns/web?port=8080", "/api/v1/namespaces/ns/pods/web/portforward?ports=8080"),
            ("/attach/ns/web/u1/app?output=1", "/api/v1/namespaces/ns/pods/web/attach?container=app&stdout=true"),
        ):
            reader, writer, head = await _upgrade(r, path, method="GET")
            assert head.startswith(b"HTTP/1.1 101"), head
            assert r.lower.requests[-1][1] == lower_target
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            writer.close()


async def test_a_lower_refusal_reaches_the_caller_as_it_was(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.lower.refuse = True
        reader, writer, head = await _upgrade(r, "/exec/ns/web/app?command=true&output=1")
        assert head.startswith(b"HTTP/1.1 403")
        assert b"no exec here" in await asyncio.wait_for(reader.read(4096), 10)
        writer.close()


async def test_wrong_pods_and_plain_requests_are_refused_clearly(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, body = await _get(r, "/containerLogs/ns/absent/app", cert=True)
        assert status == 404 and "not on node" in body
        status, body = await _get(r, "/containerLogs/ns/lonely/app", cert=True)
        assert status == 404 and "no copy" in body
        status, body = await _get(r, "/exec/ns/web/other-uid/app", cert=True)
        assert status == 404 and "UID" in body
        assert (await _get(r, "/exec/ns/web/app?command=ls", cert=True))[0] == 400  # no upgrade
        assert (await _get(r, "/configz", cert=True))[0] == 404


async def test_pods_running_pods_and_healthz(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, body = await _get(r, "/pods", cert=True)
        assert status == 200 and {p["metadata"]["name"] for p in orjson.loads(body)["items"]} == {"web", "lonely"}
        status, body = await _get(r, "/runningpods/", cert=True)
        assert orjson.loads(body)["items"] == [{"metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
                                                "spec": {"containers": [{"name": "app", "image": "nginx"}]},
                                                "status": {}}]
        assert await _get(r, "/healthz", cert=True) == (200, "ok")


async def test_stats_come_from_pod_metrics_or_answer_503(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, body = await _get(r, "/stats/summary", cert=True)
        assert status == 503 and "metrics.k8s.io" in body
        r.server._pod_metrics = None
        r.lower.metrics = [{"metadata": {"name": "web", "namespace": "ns"},
                            "containers": [{"name": "app", "usage": {"cpu": "250m", "memory": "1Mi"}}]},
                           {"metadata": {"name": "gone", "namespace": "ns"},
                            "containers": [{"name": "app", "usage": {"cpu": "1"}}]}]
        status, body = await _get(r, "/stats/summary", cert=True)
        summary = orjson.loads(body)
        assert status == 200 and [p["podRef"]["name"] for p in summary["pods"]] == ["web"]
        assert summary["pods"][0]["memory"]["workingSetBytes"] == 2**20
        status, text = await _get(r, "/metrics/resource", cert=True)
        assert status == 200 and 'container_memory_working_set_bytes{container="app",namespace="ns",pod="web"}' in text
        assert r.lower.requests[-1][1] == "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=tensile.io/virtual-node%3Dvk"


# --- fuzzing: whatever reaches the port, never a 500 ---------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, tuple[str, str], Rig]]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    async def main() -> None:
        async with rig(tmp_path_factory.mktemp("kubelet")) as r:
            r.lower.metrics = []
            holder["rig"] = r
            started.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(30)
    r = holder["rig"]
    yield r.server.port, r.client_cert, r
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


_token = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=20)
_segment = st.one_of(st.sampled_from(["containerLogs", "exec", "attach", "portForward", "stats", "summary", "pods",
                                      "ns", "web", "app", "u1", "metrics", "resource", "..", ".", "%2F", ""]),
                     st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#"), max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"]),
       segments=st.lists(_segment, max_size=6),
       query=st.lists(st.tuples(_token, st.text(max_size=20)), max_size=6),
       headers=st.lists(st.tuples(_token.filter(lambda h: h.lower() not in (
           "connection", "upgrade", "content-length", "transfer-encoding", "host", "expect")),
           st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)), max_size=5),
       body=st.binary(max_size=256), token=st.sampled_from([None, "good", "weak", "junk"]))
def test_fuzzed_requests_never_get_a_500(live: tuple[int, tuple[str, str], Rig], method: str, segments: list[str],
                                         query: list[tuple[str, str]], headers: list[tuple[str, str]], body: bytes,
                                         token: str | None) -> None:
    port, _, _ = live
    from urllib.parse import quote, urlencode

    path = "/" + "/".join(quote(s, safe="%") for s in segments)
    if query:
        path += "?" + urlencode(query)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        assert resp.status < 500, (method, path, resp.status)
    finally:
        conn.close()


async def test_a_rotated_serving_certificate_is_loaded_and_a_broken_one_is_not(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.server.reload_certificates() is False  # unchanged
        cert = Path(r.server.options.cert_file)
        key = Path(r.server.options.key_file)
        tls.self_signed(cert.parent, "vk-renewed", ["127.0.0.1"])

        async def served_cn() -> str:
            _, writer = await asyncio.open_connection("127.0.0.1", r.server.port, ssl=r.ssl())
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            assert der is not None
            return x509.load_der_x509_certificate(der).subject.rfc4514_string()

        assert await served_cn() == "CN=vk"
        assert r.server.reload_certificates() is True
        assert await served_cn() == "CN=vk-renewed"
        key.write_text("not a key")
        assert r.server.reload_certificates() is False
        assert await served_cn() == "CN=vk-renewed"  # the old pair keeps serving
        assert (await _get(r, "/healthz", cert=True)) == (200, "ok")


async def test_a_taken_port_or_a_bad_certificate_is_a_clear_start_up_error(tmp_path: Path) -> None:
    from tensile.kubelet.server import ServingError

    async with rig(tmp_path) as r:
        taken = ServingOptions(address="127.0.0.1", port=r.server.port, cert_file=r.server.options.cert_file,
                               key_file=r.server.options.key_file)
        with pytest.raises(ServingError, match="cannot listen"):
            await KubeletServer(taken, Pods(), _upper(), r.server.lower).start()  # type: ignore[arg-type]
        (tmp_path / "bad.crt").write_text("nope")
        bad = ServingOptions(address="127.0.0.1", port=0, cert_file=str(tmp_path / "bad.crt"),
                             key_file=r.server.options.key_file)
        with pytest.raises(ServingError, match="does not load"):
            await KubeletServer(bad, Pods(), _upper(), r.server.lower).start()  # type: ignore[arg-type]
