"""Self-signed PKI for the admission webhook.

kube-apiserver only calls a webhook over HTTPS, checks the serving certificate against the
``caBundle`` in the MutatingWebhookConfiguration, and ignores the CN: the certificate must carry a
SAN for the exact address it dials (an IP SAN for ``https://127.0.0.1:PORT``, a DNS SAN for
``SERVICE.NAMESPACE.svc``). This module writes such a CA and serving pair with the ``cryptography``
package, so installing the webhook needs no openssl, cfssl or cert-manager.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from tensile.certs import issue, make_ca, subject_alt_names, write_cert, write_key

__all__ = ["CertPaths", "generate", "subject_alt_names"]


@dataclasses.dataclass(frozen=True)
class CertPaths:
    """The four files :func:`generate` writes."""

    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path


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
    ca = make_ca("tensile-webhook-ca", days)
    cert, key = issue(ca, str(sans[0].value), days, server=True, sans=sans)
    paths = CertPaths(out / "ca.crt", out / "ca.key", out / "tls.crt", out / "tls.key")
    write_key(paths.ca_key, ca[1])
    write_key(paths.tls_key, key)
    write_cert(paths.ca_cert, ca[0])
    write_cert(paths.tls_cert, cert)
    return paths
