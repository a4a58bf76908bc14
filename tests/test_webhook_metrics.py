"""The webhook's metrics, its plain-HTTP ops server and its per-decision log lines."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tensile.conventions import VIRTUAL_POD_LABEL, VIRTUAL_POD_VALUE
from tensile.kube.metrics import convention_problems, new_registry
from tensile.logs import V
from webhook import server
from webhook.certs import CertPaths, generate
from webhook.metrics import WebhookMetrics, operation_label
from webhook.server import ServerOptions, create_app, metrics, ops_server, reloader, serve, start

TIMEOUT = aiohttp.ClientTimeout(total=20)


def review(uid: str = "uid-1", operation: str = "CREATE", opted_in: bool = True, name: str = "p") -> dict[str, Any]:
    labels = {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE} if opted_in else {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": "default",
            "name": name,
            "object": {
                "metadata": {"name": name, "namespace": "default", "labels": labels},
                "spec": {"containers": [{"name": "c", "env": [{"name": "TOKEN", "value": "s3cret"}]}],
                         "nodeSelector": {"zone": "x"}},
            },
        },
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate(tmp_path_factory.mktemp("certs"), ["127.0.0.1"], [])


@pytest.fixture
async def client_and_registry(certs: CertPaths) -> AsyncIterator[tuple[TestClient[Any, Any], CollectorRegistry]]:
    registry = new_registry()
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, max_body_bytes=64 * 1024)
    async with TestClient(TestServer(create_app(options, registry))) as client:
        yield client, registry


async def test_requests_are_counted_by_operation_and_result(
    client_and_registry: tuple[TestClient[Any, Any], CollectorRegistry]
) -> None:
    client, registry = client_and_registry
    sent = [
        (review("a"), 200), (review("b"), 200),            # mutated
        (review("c", opted_in=False), 200),                # unchanged: not opted in
        (review("d", operation="UPDATE"), 200),            # unchanged: not a create
        (review("e", operation="PATCH"), 200),             # unchanged, an operation outside the bounded set
    ]
    for body, status in sent:
        async with client.post("/mutate", json=body) as response:
            assert response.status == status
    async with client.post("/mutate", data=b"{oops") as response:  # error: not JSON
        assert response.status == 400
    async with client.post("/mutate", data=b"x" * (65 * 1024)) as response:  # error: too large
        assert response.status == 413

    total = "tensile_admission_requests_total"
    assert value(registry, total, operation="CREATE", result="mutated") == 2
    assert value(registry, total, operation="CREATE", result="unchanged") == 1
    assert value(registry, total, operation="CREATE", result="error") == 0
    assert value(registry, total, operation="UPDATE", result="unchanged") == 1
    assert value(registry, total, operation="unknown", result="unchanged") == 1
    assert value(registry, total, operation="unknown", result="error") == 2
    for operation, count in (("CREATE", 3), ("UPDATE", 1), ("unknown", 3)):
        assert value(registry, "tensile_admission_duration_seconds_count", operation=operation) == count
        assert value(registry, "tensile_admission_duration_seconds_bucket", operation=operation, le="+Inf") == count
        assert value(registry, "tensile_admission_duration_seconds_sum", operation=operation) > 0
    assert value(registry, "tensile_admission_in_flight_requests") == 0
    assert convention_problems(registry) == []


def test_operations_are_a_bounded_set() -> None:
    assert [operation_label(op) for op in ("CREATE", "UPDATE", "DELETE", "CONNECT")] == [
        "CREATE", "UPDATE", "DELETE", "CONNECT"]
    assert {operation_label(op) for op in ("", "create", "PATCH", "x" * 300)} == {"unknown"}


def test_metrics_follow_the_conventions_and_exist_before_the_first_request() -> None:
    registry = new_registry()
    WebhookMetrics(registry)
    assert convention_problems(registry) == []
    for result in ("mutated", "unchanged", "error"):
        assert registry.get_sample_value("tensile_admission_requests_total",
                                         {"operation": "CREATE", "result": result}) == 0
    for result in ("success", "error"):
        assert registry.get_sample_value("tensile_webhook_certificate_reloads_total", {"result": result}) == 0


async def test_create_app_without_a_registry_keeps_its_own() -> None:
    first, second = create_app(), create_app()  # no duplicate-registration error between apps
    assert metrics(first).registry is not metrics(second).registry
    async with TestClient(TestServer(first)) as client, client.post("/mutate", json=review()) as response:
        assert response.status == 200
    registry = metrics(first).registry
    assert value(registry, "tensile_admission_requests_total", operation="CREATE", result="mutated") == 1
    assert value(metrics(second).registry, "tensile_admission_requests_total", operation="CREATE",
                 result="mutated") == 0


async def test_one_log_line_per_decision_at_v4_without_the_pod(
    client_and_registry: tuple[TestClient[Any, Any], CollectorRegistry], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = client_and_registry
    caplog.set_level(V(4), logger=server.LOGGER_NAME)
    async with client.post("/mutate", json=review("uid-7", name="web-0")) as response:
        assert response.status == 200
    async with client.post("/mutate", data=b"[]") as response:
        assert response.status == 400
    decided, bad = [r for r in caplog.records if r.name == server.LOGGER_NAME and r.getMessage().startswith(
        "admission")]
    assert decided.levelno == V(4)
    fields = {k: getattr(decided, k) for k in ("namespace", "pod", "uid", "decision", "operation")}
    assert fields == {"namespace": "default", "pod": "web-0", "uid": "uid-7", "decision": "patched",
                      "operation": "CREATE"}
    assert bad.levelno == logging.WARNING  # an answer that is not a review is worth a line at any verbosity
    for record in (decided, bad):
        assert "s3cret" not in repr(vars(record)) and "containers" not in repr(vars(record))


# --- the ops server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_ops_server_serves_parseable_metrics_and_the_probes(certs: CertPaths) -> None:
    registry = new_registry()
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0, bind_address="127.0.0.1")
    runner, port = await asyncio.wait_for(start(options, registry), 10)
    ops = ops_server(runner)
    await ops.start("127.0.0.1", 0)
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as https:
            for uid in ("u1", "u2", "u3"):
                async with https.post(f"https://127.0.0.1:{port}/mutate", json=review(uid)) as response:
                    assert response.status == 200
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            status, text = await _get(http, f"http://127.0.0.1:{ops.port}/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text)}
            for status_path in ("/healthz", "/livez"):
                assert (await _get(http, f"http://127.0.0.1:{ops.port}{status_path}"))[0] == 200
            status, text = await _get(http, f"http://127.0.0.1:{ops.port}/readyz")
            assert (status, text) == (200, "ok\nserving admission reviews\n")
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
        await ops.stop()
    requests = families["tensile_admission_requests"]
    assert requests.type == "counter"
    mutated = [s for s in requests.samples if s.name == "tensile_admission_requests_total"
               and s.labels == {"operation": "CREATE", "result": "mutated"}]
    assert [s.value for s in mutated] == [3]
    duration = families["tensile_admission_duration_seconds"]
    assert duration.type == "histogram"
    assert [s.value for s in duration.samples if s.name.endswith("_count") and s.labels["operation"] == "CREATE"] == [3]
    assert "process_cpu_seconds" in families or "python_gc_objects_collected" in families  # the process registry
    expiry = families["tensile_webhook_certificate_expiration_timestamp_seconds"].samples[0].value
    cert = x509.load_pem_x509_certificate(certs.tls_cert.read_bytes())
    assert expiry == cert.not_valid_after_utc.timestamp()


async def test_serve_reports_not_ready_on_both_ports_while_draining(certs: CertPaths) -> None:
    https_port, metrics_port = _free_port(), _free_port()
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=https_port,
                            bind_address="127.0.0.1", drain_seconds=2.0, metrics_addr=("127.0.0.1", metrics_port))
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(options, new_registry(), stop))
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    ops_url, https_url = f"http://127.0.0.1:{metrics_port}", f"https://127.0.0.1:{https_port}"
    try:
        async with (aiohttp.ClientSession(timeout=TIMEOUT) as http,
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as https):
            for _ in range(100):
                try:
                    if (await _get(http, f"{ops_url}/readyz"))[0] == 200:
                        break
                except aiohttp.ClientConnectionError:
                    pass
                assert not serving.done(), serving.exception()
                await asyncio.sleep(0.05)
            assert (await _get(https, f"{https_url}/readyz"))[0] == 200
            stop.set()
            await asyncio.sleep(0.3)
            status, text = await _get(http, f"{ops_url}/readyz")
            assert status == 503 and "shutting down" in text
            assert (await _get(https, f"{https_url}/readyz"))[0] == 503
            assert (await _get(http, f"{ops_url}/healthz"))[0] == 200  # draining is not a reason to restart
            assert (await _get(http, f"{ops_url}/metrics"))[0] == 200  # scraped until the end
            await asyncio.wait_for(serving, 20)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                await _get(http, f"{ops_url}/readyz")
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


async def test_a_failing_certificate_reloader_is_restarted_and_a_wedged_one_fails_healthz(
        certs: CertPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []

    async def broken_then_wedged(self: server.CertReloader, interval: float) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")  # the supervisor starts it again
        await asyncio.sleep(3600)  # then it never comes round

    monkeypatch.setattr(server.CertReloader, "run", broken_then_wedged)
    monkeypatch.setattr(server, "RELOADER_STALL_AFTER", 1.5)
    monkeypatch.setattr("tensile.kube.supervisor.RESTART_INITIAL", 0.01)
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0, bind_address="127.0.0.1")
    runner, port = await asyncio.wait_for(start(options), 10)
    ops = ops_server(runner)
    await ops.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            await asyncio.sleep(0.3)
            assert len(runs) == 2  # failed once, started again
            assert (await _get(http, f"http://127.0.0.1:{ops.port}/healthz"))[0] == 200
            await asyncio.sleep(1.5)
            status, text = await _get(http, f"http://127.0.0.1:{ops.port}/healthz")
        assert status == 500 and "certificate reloader made no progress" in text
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as https:
            assert (await _get(https, f"https://127.0.0.1:{port}/healthz"))[0] == 500
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
        await ops.stop()


async def test_certificate_reloads_are_counted_and_the_expiry_follows(tmp_path: Path) -> None:
    first = generate(tmp_path, ["127.0.0.1"], [], days=1)
    options = ServerOptions(tls_cert_file=first.tls_cert, tls_key_file=first.tls_key, port=0,
                            bind_address="127.0.0.1")
    registry = CollectorRegistry()
    runner, _ = await asyncio.wait_for(start(options, registry), 10)
    try:
        expiry = "tensile_webhook_certificate_expiration_timestamp_seconds"
        before = value(registry, expiry)
        assert before > 0
        rotator = reloader(runner)
        assert rotator.check() is False  # nothing changed: no attempt counted
        assert value(registry, "tensile_webhook_certificate_reloads_total", result="success") == 0
        generate(tmp_path, ["127.0.0.1"], [], days=2)
        assert rotator.check() is True
        assert value(registry, "tensile_webhook_certificate_reloads_total", result="success") == 1
        assert value(registry, expiry) > before + 12 * 3600
        first.tls_key.write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
        assert rotator.check() is False
        assert value(registry, "tensile_webhook_certificate_reloads_total", result="error") == 1
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
