"""The kubelet-serving CertificateSigningRequest: its content, its outcome, renewal and the loop."""

from __future__ import annotations

import asyncio
import base64
import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from tensile import conventions as c
from tensile.certs import make_ca
from tensile.kubelet import csr
from tests.fakes import FakeKube

NOW = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)


def test_the_request_is_what_the_kubelet_serving_signer_accepts() -> None:
    _, pem = csr.request("vk-a", ["10.0.0.5", ""])
    req = x509.load_pem_x509_csr(pem)
    assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:vk-a"
    assert [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["vk-a"]
    body = csr.manifest("n", "vk-a", pem, 3600)
    assert body["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
    assert body["spec"]["usages"] == ["digital signature", "server auth"]
    assert body["spec"]["expirationSeconds"] == 3600
    assert body["metadata"]["labels"] == {c.OWNER_NODE_LABEL: "vk-a"}
    assert base64.b64decode(body["spec"]["request"]) == pem


def test_outcomes_pending_issued_denied() -> None:
    assert csr.outcome({}) == (None, None)
    assert csr.outcome({"status": {"certificate": base64.b64encode(b"PEM").decode()}}) == (b"PEM", None)
    denied = {"status": {"conditions": [{"type": "Denied", "status": "True", "reason": "AdminDenied",
                                         "message": "not this node"}], "certificate": "eA=="}}
    assert csr.outcome(denied) == (None, "Denied: AdminDenied not this node")
    assert csr.outcome({"status": {"conditions": [{"type": "Approved", "status": "True"}]}}) == (None, None)
    assert csr.outcome({"status": {"certificate": "%%%"}})[1] is not None


def _sign(request_pem: bytes, days: int = 10) -> bytes:
    ca_cert, ca_key = make_ca("kubelet-ca", 30)
    req = x509.load_pem_x509_csr(request_pem)
    cert = (x509.CertificateBuilder().subject_name(req.subject).issuer_name(ca_cert.subject)
            .public_key(req.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=days))
            .sign(ca_key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def test_renewal_is_due_at_80_percent_of_the_lifetime() -> None:
    _, pem = csr.request("vk", [])
    cert = _sign(pem, days=10)
    assert csr.renew_after(cert, NOW) == 8 * 86400
    assert csr.renew_after(cert, NOW + datetime.timedelta(days=9)) == 0
    assert csr.renew_after(b"garbage", NOW) == 0


async def test_the_loop_asks_waits_for_approval_writes_the_pair_and_reloads(tmp_path: Path) -> None:
    upper = FakeKube("upper")
    created: list[dict[str, Any]] = []
    state = {"polls": 0}

    def create(_: str, body: Any) -> dict[str, Any]:
        created.append(body)
        return body

    def get(_: str, __: Any) -> dict[str, Any]:
        state["polls"] += 1
        if state["polls"] < 2:
            return {"status": {}}  # pending approval
        pem = base64.b64decode(created[-1]["spec"]["request"])
        return {"status": {"certificate": base64.b64encode(_sign(pem)).decode()}}

    upper.answer("POST", csr.CSR_PATH, create)
    upper.answer("GET", csr.CSR_PATH, get)
    reloaded: list[bool] = []
    certs = csr.ServingCertificates(upper, "vk", ["127.0.0.1"], tmp_path / "tls.crt",  # type: ignore[arg-type]
                                    tmp_path / "tls.key", on_issued=lambda: reloaded.append(True))
    csr.POLL, saved = 0.01, csr.POLL
    try:
        task = asyncio.create_task(certs.run())
        for _ in range(200):
            if reloaded:
                break
            await asyncio.sleep(0.01)
        task.cancel()
    finally:
        csr.POLL = saved
    assert reloaded == [True] and certs.issued and not certs.pending
    assert len(created) == 1
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=system:node:vk,O=system:nodes"
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600


async def test_a_denied_request_is_reported_not_retried_at_once(tmp_path: Path) -> None:
    upper = FakeKube("upper")
    upper.answer("POST", csr.CSR_PATH, lambda _, body: body)
    upper.answer("GET", csr.CSR_PATH, {"status": {"conditions": [{"type": "Denied", "status": "True",
                                                                  "reason": "AdminDenied"}]}})
    certs = csr.ServingCertificates(upper, "vk", [], tmp_path / "c", tmp_path / "k",  # type: ignore[arg-type]
                                    on_issued=lambda: None)
    assert await certs._obtain() == "Denied: AdminDenied"
    assert not (tmp_path / "c").exists() and not certs.issued
