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
    """The files :func:`generate` writes; ``ca_key`` is ``None`` when the CA key was not kept."""

    ca_cert: Path
    ca_key: Path | None
    tls_cert: Path
    tls_key: Path


def generate(directory: str | os.PathLike[str], hosts: Sequence[str], dns: Sequence[str], days: int = 365,
             ca_key_file: str | os.PathLike[str] | None = None) -> CertPaths:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` into ``directory``.

    The serving certificate is signed by a new CA and valid for ``days`` days for every host and
    DNS name given. The CA's key is never written into ``directory``: that directory is what a
    Deployment mounts (as a Secret), and a CA key there would let anyone who can read it mint
    certificates the apiserver trusts for the webhook. It is kept only at ``ca_key_file``, which
    must lie outside ``directory``; without it the key is discarded (run the command again to
    rotate, and ``install`` again with the new ``ca.crt``). Key files are mode 0600. Raises
    ``ValueError`` when no SAN is given, ``days`` is not positive, or ``ca_key_file`` is inside
    ``directory``.
    """
    sans = subject_alt_names(hosts, dns)
    if not sans:
        raise ValueError("give at least one --host or --dns for the serving certificate")
    if days <= 0:
        raise ValueError("days must be positive")
    out = Path(directory)
    ca_key = Path(ca_key_file) if ca_key_file is not None else None
    if ca_key is not None and ca_key.resolve().parent == out.resolve():
        raise ValueError("keep the CA key out of the serving directory: it is mounted where the webhook runs")
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca("tensile-webhook-ca", days)
    cert, key = issue(ca, str(sans[0].value), days, server=True, sans=sans)
    paths = CertPaths(out / "ca.crt", ca_key, out / "tls.crt", out / "tls.key")
    if ca_key is not None:
        ca_key.parent.mkdir(parents=True, exist_ok=True)
        write_key(ca_key, ca[1])
    write_key(paths.tls_key, key)
    write_cert(paths.ca_cert, ca[0])
    write_cert(paths.tls_cert, cert)
    return paths
