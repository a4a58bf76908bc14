"""A kubelet API serving certificate from the upper cluster: ``kubernetes.io/kubelet-serving``.

As the kubelet with ``--rotate-server-certificates``: the virtual node asks the upper
cluster for a serving certificate with a CertificateSigningRequest (CN
``system:node:NAME``, O ``system:nodes``, SANs for its address and name), an admin
approves it (``kubectl certificate approve NAME``: no controller approves serving
certificates, since only a human or a policy can vouch that the address belongs to the
node), and kube-controller-manager signs it with the CA the apiserver's
``--kubelet-certificate-authority`` trusts. The certificate is asked for again when
80 % of its lifetime has passed. Until the first one is issued, the self-signed
certificate serves.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tensile import conventions as c
from tensile.certs import subject_alt_names, write_file, write_key
from tensile.kube.client import JSON, Kube
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kubelet")

SIGNER = "kubernetes.io/kubelet-serving"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
USAGES = ["digital signature", "server auth"]
#: Ask again once this share of the certificate's lifetime has passed.
RENEW_AT = 0.8
POLL = 5.0
RETRY_AFTER_DENIAL = 300.0


def request(node_name: str, hosts: Sequence[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A new key and the PEM certificate request the kubelet-serving signer accepts."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(subject)
           .add_extension(x509.SubjectAlternativeName(subject_alt_names([h for h in hosts if h], [node_name])),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def manifest(name: str, node_name: str, csr_pem: bytes, expiration_seconds: int | None = None) -> JSON:
    spec: JSON = {"request": base64.b64encode(csr_pem).decode(), "signerName": SIGNER, "usages": USAGES}
    if expiration_seconds:
        spec["expirationSeconds"] = expiration_seconds
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name, "labels": {c.OWNER_NODE_LABEL: node_name}}, "spec": spec}


def outcome(csr: JSON) -> tuple[bytes | None, str | None]:
    """(the issued PEM certificate, None), (None, why it was refused), or (None, None) while pending."""
    status = csr.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
            return None, f"{cond.get('type')}: {cond.get('reason', '')} {cond.get('message', '')}".strip()
    certificate = status.get("certificate")
    if certificate:
        try:
            pem = base64.b64decode(certificate, validate=True)
        except (ValueError, TypeError):
            pem = b""
        return (pem, None) if pem else (None, "Failed: the issued certificate is not base64")
    return None, None


def renew_after(pem: bytes, now: datetime.datetime) -> float:
    """Seconds until the certificate in ``pem`` should be renewed (0: now; also for an unreadable one)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return 0.0
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    due = start + (end - start) * RENEW_AT
    return max(0.0, (due - now).total_seconds())


class ServingCertificates:
    """Keeps ``cert_file``/``key_file`` holding a certificate the upper cluster signed."""

    def __init__(self, upper: Kube, node_name: str, hosts: Sequence[str], cert_file: Path, key_file: Path,
                 on_issued: Callable[[], Any]) -> None:
        self.upper = upper
        self.node_name = node_name
        self.hosts = list(hosts)
        self.cert_file = cert_file
        self.key_file = key_file
        self.on_issued = on_issued
        self.issued = False
        self.pending = ""
        self.beat = 0.0

    async def run(self) -> None:
        while True:
            self.beat = asyncio.get_running_loop().time()
            if self.issued:
                wait = renew_after(self.cert_file.read_bytes(), datetime.datetime.now(datetime.UTC))
                if wait > 0:
                    await asyncio.sleep(min(wait, 3600.0))
                    continue
            refused = await self._obtain()
            if refused:
                log.warning("serving certificate request refused (%s); asking again in %.0fs", refused,
                            RETRY_AFTER_DENIAL, extra={"node": self.node_name})
                await asyncio.sleep(RETRY_AFTER_DENIAL)

    async def _obtain(self) -> str | None:
        """One request until issued; the refusal reason otherwise."""
        key, csr_pem = request(self.node_name, self.hosts)
        name = f"tensile-serving-{self.node_name}-{secrets.token_hex(4)}"[:253]
        await self.upper.create(CSR_PATH, manifest(name, self.node_name, csr_pem))
        self.pending = name
        log.info("asked the upper cluster for a kubelet serving certificate: approve it with "
                 "`kubectl certificate approve %s`", name, extra={"node": self.node_name})
        while True:
            self.beat = asyncio.get_running_loop().time()
            try:
                csr = await self.upper.get(f"{CSR_PATH}/{name}")
            except ApiError as exc:
                if exc.not_found:
                    return "the request was deleted before it was issued"
                log.warning("reading CertificateSigningRequest %s: %s", name, exc, extra={"node": self.node_name})
                await asyncio.sleep(POLL)
                continue
            pem, refused = outcome(csr)
            if refused:
                self.pending = ""
                return refused
            if pem is not None:
                break
            await asyncio.sleep(POLL)
        write_key(self.key_file, key)
        write_file(self.cert_file, pem, 0o644)
        self.issued = True
        self.pending = ""
        self.on_issued()
        log.info("serving with the kubelet serving certificate from %s", name, extra={"node": self.node_name})
        return None
