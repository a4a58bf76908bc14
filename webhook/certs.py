"""Self-signed PKI for the admission webhook.

kube-apiserver only calls a webhook over HTTPS, checks the serving certificate against the
``caBundle`` in the MutatingWebhookConfiguration, and ignores the CN: the certificate must carry a
SAN for the exact address it dials (an IP SAN for ``https://127.0.0.1:PORT``, a DNS SAN for
``SERVICE.NAMESPACE.svc``). This module writes such a CA and serving pair with the ``cryptography``
package, so installing the webhook needs no openssl, cfssl or cert-manager.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPaths", "generate", "subject_alt_names"]

_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class CertPaths:
    """The four files :func:`generate` writes."""

    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def subject_alt_names(hosts: Sequence[str], dns: Sequence[str]) -> list[x509.GeneralName]:
    """IP SANs for the ``hosts`` that are IP addresses, DNS SANs for the other hosts and ``dns``."""
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for value in [*hosts, *dns]:
        value = value.strip()
        if not value or value in seen:
            continue
        seen.add(value)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            sans.append(x509.DNSName(value))
    return sans


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a private key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)  # the file may have existed with a wider mode
        file.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate(directory: str | os.PathLike[str], hosts: Sequence[str], dns: Sequence[str], days: int = 365) -> CertPaths:
    """Write ``ca.crt``, ``ca.key``, ``tls.crt`` and ``tls.key`` into ``directory``.

    The serving certificate is signed by the new CA and valid for ``days`` days for every host and
    DNS name given. Key files are mode 0600. Raises ``ValueError`` when no SAN is given or ``days``
    is not positive.
    """
    sans = subject_alt_names(hosts, dns)
    if not sans:
        raise ValueError("give at least one --host or --dns for the serving certificate")
    if days <= 0:
        raise ValueError("days must be positive")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tensile-webhook-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    first = sans[0]
    common_name = str(first.value)[:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = CertPaths(out / "ca.crt", out / "ca.key", out / "tls.crt", out / "tls.key")
    _write(paths.ca_key, _key_pem(ca_key), 0o600)
    _write(paths.tls_key, _key_pem(key), 0o600)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths.tls_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths
