"""The real aiohttp webhook server over TLS on 127.0.0.1, with certificates from webhook.certs."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from tensile.conventions import (
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)
from webhook import signing
from webhook.certs import CertPaths, generate
from webhook.server import ServerOptions, metrics, mutate_options, reloader, signing_key, start

TIMEOUT = aiohttp.ClientTimeout(total=20)
REPO = Path(__file__).resolve().parents[1]


def admission_review(uid: str = "uid-1") -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "default",
            "object": {
                "metadata": {"name": "p", "namespace": "default", "labels": {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE}},
                "spec": {"containers": [{"name": "c"}], "nodeSelector": {"zone": "x"}},
            },
        },
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate(tmp_path_factory.mktemp("certs"), ["127.0.0.1"], ["localhost", "tensile-webhook.tensile.svc"])


@pytest.fixture
async def server(certs: CertPaths) -> AsyncIterator[int]:
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0, bind_address="127.0.0.1")
    runner, port = await asyncio.wait_for(start(options), 10)
    try:
        yield port
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)


@pytest.fixture
async def client(certs: CertPaths) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as session:
        yield session


# --- certificates --------------------------------------------------------------------------------------


def test_serving_cert_has_ip_and_dns_sans(certs: CertPaths) -> None:
    cert = x509.load_pem_x509_certificate(certs.tls_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "tensile-webhook.tensile.svc"]
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_key_files_are_private(certs: CertPaths) -> None:
    assert stat.S_IMODE(certs.tls_key.stat().st_mode) == 0o600
    assert {p.name for p in certs.ca_cert.parent.iterdir()} == {"ca.crt", "tls.crt", "tls.key"}


def test_host_names_become_dns_sans_and_ipv6_hosts_ip_sans(tmp_path: Path) -> None:
    paths = generate(tmp_path, ["::1", "webhook.local"], [], days=1)
    sans = (
        x509.load_pem_x509_certificate(paths.tls_cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    assert sans.get_values_for_type(x509.DNSName) == ["webhook.local"]


def test_generate_without_sans_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--host"):
        generate(tmp_path, [], [])


def test_regenerating_tightens_existing_key_mode(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("old")
    (tmp_path / "tls.key").chmod(0o644)
    generate(tmp_path, ["127.0.0.1"], [])
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


# --- the server ----------------------------------------------------------------------------------------


async def test_healthz_and_readyz(server: int, client: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz"):
        async with client.get(f"https://127.0.0.1:{server}{path}") as response:
            assert response.status == 200


async def test_dns_san_verifies_too(server: int, client: aiohttp.ClientSession) -> None:
    async with client.get(f"https://localhost:{server}/healthz") as response:
        assert response.status == 200


async def test_mutate_returns_a_patch(server: int, client: aiohttp.ClientSession) -> None:
    async with client.post(f"https://127.0.0.1:{server}/mutate", json=admission_review()) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["response"]["uid"] == "uid-1"
    assert body["response"]["allowed"] is True
    patch = json.loads(base64.b64decode(body["response"]["patch"]))
    assert {op["path"] for op in patch} >= {"/metadata/annotations", "/spec/nodeSelector", "/spec/tolerations"}


async def _signed_annotations(port: int, client: aiohttp.ClientSession) -> dict[str, str]:
    async with client.post(f"https://127.0.0.1:{port}/mutate", json=admission_review()) as response:
        body = await response.json()
    patch = json.loads(base64.b64decode(body["response"]["patch"]))
    (annotations,) = [op["value"] for op in patch if op["path"] == "/metadata/annotations"]
    assert isinstance(annotations, dict)
    return annotations


def _verifies(key: bytes, annotations: dict[str, str]) -> bool:
    value, signature = annotations[CLUSTER_SELECTOR_ANNOTATION], annotations[CLUSTER_SELECTOR_SIGNATURE_ANNOTATION]
    return signing.verify(key, "default", value, signature)


async def test_signing_key_is_derived_from_the_serving_key(
    server: int, client: aiohttp.ClientSession, certs: CertPaths
) -> None:
    annotations = await _signed_annotations(server, client)
    assert _verifies(signing.derive_key(certs.tls_key.read_bytes()), annotations)
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key)
    assert signing_key(options) == signing.derive_key(certs.tls_key.read_bytes())
    assert signing_key(options) != certs.tls_key.read_bytes()


async def test_signing_key_file_overrides_the_serving_key(
    certs: CertPaths, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret = tmp_path / "signing"
    secret.write_bytes(b"s" * 64)
    options = ServerOptions(
        tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0, bind_address="127.0.0.1",
        signing_key_file=secret,
    )
    runner, port = await asyncio.wait_for(start(options), 10)
    try:
        annotations = await _signed_annotations(port, client)
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
    assert _verifies(signing.derive_key(b"s" * 64), annotations)
    assert not _verifies(signing.derive_key(certs.tls_key.read_bytes()), annotations)


async def test_bad_review_returns_400(server: int, client: aiohttp.ClientSession) -> None:
    async with client.post(f"https://127.0.0.1:{server}/mutate", data=b"{oops") as response:
        assert response.status == 400
        assert (await response.json())["code"] == 400


async def test_oversized_body_returns_413_and_server_keeps_serving(server: int, client: aiohttp.ClientSession) -> None:
    too_big = b"x" * (ServerOptions.max_body_bytes + 1)
    async with client.post(f"https://127.0.0.1:{server}/mutate", data=too_big) as response:
        assert response.status == 413
    async with client.post(f"https://127.0.0.1:{server}/mutate", json=admission_review("uid-2")) as response:
        assert response.status == 200
        assert (await response.json())["response"]["uid"] == "uid-2"


async def test_get_on_mutate_is_not_allowed(server: int, client: aiohttp.ClientSession) -> None:
    async with client.get(f"https://127.0.0.1:{server}/mutate") as response:
        assert response.status == 405


async def test_plain_http_is_refused(server: int, client: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as plain:
        with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
            async with plain.get(f"http://127.0.0.1:{server}/healthz") as response:
                await response.read()
    async with client.get(f"https://127.0.0.1:{server}/healthz") as response:
        assert response.status == 200


async def test_client_with_another_ca_is_refused(server: int, tmp_path: Path) -> None:
    other = generate(tmp_path, ["127.0.0.1"], [])
    context = ssl.create_default_context(cafile=str(other.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{server}/healthz")


async def test_cleanup_finishes_and_port_is_released(certs: CertPaths) -> None:
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0, bind_address="127.0.0.1")
    runner, port = await asyncio.wait_for(start(options), 10)
    await asyncio.wait_for(runner.cleanup(), 15)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


# --- the command, end to end -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_and_stops_gracefully_on_sigterm(certs: CertPaths) -> None:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "webhook.cli",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--metrics-addr",
        f"127.0.0.1:{_free_port()}",  # never the default :8080, so runs can overlap
        "--tls-cert-file",
        str(certs.tls_cert),
        "--tls-key-file",
        str(certs.tls_key),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate(timeout=10)
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert tls.recv(64).startswith(b"HTTP/1.1 200")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


# --- certificate rotation -----------------------------------------------------------------------------


async def _served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    assert isinstance(der, bytes)
    return der


async def test_a_rotated_serving_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    first = generate(tmp_path, ["127.0.0.1"], [], days=1)
    options = ServerOptions(tls_cert_file=first.tls_cert, tls_key_file=first.tls_key, port=0,
                            bind_address="127.0.0.1")
    runner, port = await asyncio.wait_for(start(options), 10)
    try:
        before = await _served_certificate(port)
        rotator = reloader(runner)
        assert rotator.check() is False  # nothing changed yet
        old_key = mutate_options(runner).signing_key
        generate(tmp_path, ["127.0.0.1"], [], days=2)  # cert-manager renews in place
        assert rotator.check() is True
        after = await _served_certificate(port)
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert(first.tls_cert.read_text())
        assert mutate_options(runner).signing_key != old_key  # the signing key follows the serving key
        # A half-written pair is not loaded; the current one keeps serving.
        first.tls_key.write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
        assert rotator.check() is False
        assert await _served_certificate(port) == after
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)


# --- callers: only the apiserver, when a client CA is configured ------------------------------------------------


def _client_cert(directory: Path, ca: tuple[object, object], cn: str, file: str) -> tuple[str, str]:
    from tensile.certs import issue, write_cert, write_key

    cert, key = issue(ca, cn, 1, client=True)  # type: ignore[arg-type]
    write_cert(directory / f"{file}.crt", cert)
    write_key(directory / f"{file}.key", key)
    return str(directory / f"{file}.crt"), str(directory / f"{file}.key")


async def _status(port: int, certs: CertPaths, path: str, cert: tuple[str, str] | None) -> int:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    if cert is not None:
        context.load_cert_chain(*cert)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT) as session:
        if path == "/mutate":
            async with session.post(f"https://127.0.0.1:{port}{path}", json=admission_review()) as response:
                return response.status
        async with session.get(f"https://127.0.0.1:{port}{path}") as response:
            return response.status


async def test_with_a_client_ca_only_the_named_client_may_mutate_and_the_probes_stay_open(
    certs: CertPaths, tmp_path: Path
) -> None:
    from tensile.certs import make_ca, write_cert

    ca = make_ca("apiserver-client-ca", 1)
    write_cert(tmp_path / "client-ca.crt", ca[0])
    apiserver = _client_cert(tmp_path, ca, "kube-apiserver-webhook-client", "apiserver")
    someone = _client_cert(tmp_path, ca, "someone", "someone")
    stranger = _client_cert(tmp_path, make_ca("another-ca", 1), "kube-apiserver-webhook-client", "stranger")
    options = ServerOptions(tls_cert_file=certs.tls_cert, tls_key_file=certs.tls_key, port=0,
                            bind_address="127.0.0.1", client_ca_file=tmp_path / "client-ca.crt",
                            client_allowed_names=frozenset({"kube-apiserver-webhook-client"}))
    runner, port = await asyncio.wait_for(start(options), 10)
    try:
        assert await _status(port, certs, "/mutate", apiserver) == 200
        assert await _status(port, certs, "/mutate", None) == 401  # anonymous
        assert await _status(port, certs, "/mutate", someone) == 403  # signed by the CA, not the apiserver
        with pytest.raises(aiohttp.ClientError):  # a certificate the CA did not sign fails the handshake
            await _status(port, certs, "/mutate", stranger)
        assert await _status(port, certs, "/healthz", None) == 200
        assert await _status(port, certs, "/readyz", None) == 200
        refused = metrics(runner).requests.labels("unknown", "refused")._value.get()
        assert refused == 2
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)


def test_caller_refusal_reads_the_verified_certificate() -> None:
    from webhook.server import caller_refusal

    apiserver = {"subject": ((("commonName", "kube-apiserver-webhook-client"),),)}
    assert caller_refusal(None, False, frozenset()) is None  # no client CA: everyone, as before
    assert caller_refusal({}, True, frozenset())[0] == 401  # type: ignore[index]
    assert caller_refusal(None, True, frozenset())[0] == 401  # type: ignore[index]
    assert caller_refusal(apiserver, True, frozenset()) is None  # any name the CA signed
    assert caller_refusal(apiserver, True, frozenset({"kube-apiserver-webhook-client"})) is None
    status, message = caller_refusal(apiserver, True, frozenset({"other"}))  # type: ignore[misc]
    assert status == 403 and "kube-apiserver-webhook-client" in message
