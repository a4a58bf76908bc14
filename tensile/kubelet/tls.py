"""The kubelet API's serving certificate when none is given: self-signed, as the kubelet's own.

Order of preference (see the README): ``--tls-cert-file``/``--tls-private-key-file``
signed by a CA the upper apiserver trusts (``--kubelet-certificate-authority``); a
``kubernetes.io/kubelet-serving`` certificate; and, as the last resort, this one, which
only an apiserver that does not verify kubelet certificates accepts (the default of
kube-apiserver without ``--kubelet-certificate-authority``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tensile.certs import issue, make_ca, subject_alt_names, write_cert, write_key

log = logging.getLogger("tensile.kubelet")

DAYS = 365


def self_signed(directory: Path, node_name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
    """Write ``kubelet.crt`` and ``kubelet.key`` for ``hosts`` and the node name; return their paths.

    As the kubelet does, the certificate is signed by a throw-away CA named after the node,
    whose key is never written.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = make_ca(f"{node_name}-ca", DAYS)
    sans = subject_alt_names([h for h in hosts if h], [node_name])
    cert, key = issue(ca, node_name, DAYS, server=True, sans=sans)
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    write_key(key_path, key)
    write_cert(cert_path, cert)
    log.warning("serving the kubelet API with a self-signed certificate in %s: an upper apiserver that verifies "
                "kubelet certificates (--kubelet-certificate-authority) will refuse it; give --tls-cert-file",
                directory, extra={"node": node_name})
    return cert_path, key_path
