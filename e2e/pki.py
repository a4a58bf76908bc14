"""Certificates for a throwaway local control plane.

A real kube-apiserver needs a serving certificate whose SANs cover the
addresses clients dial, a client CA for the admin certificate, and a key pair
to sign service-account tokens. This module writes all of them into one
directory with the ``cryptography`` package, so the harness needs no openssl
or cfssl binary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tensile.certs import CA, issue, make_ca, subject_alt_names, write_cert, write_key

_DAYS = 30


@dataclasses.dataclass(frozen=True)
class ClusterPKI:
    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    sa_key: Path
    sa_pub: Path
    #: Signs kubelet serving certificates; the apiserver's --kubelet-certificate-authority.
    kubelet_ca_cert: Path
    kubelet_ca_key: Path
    #: kwok's serving certificate (its fake nodes' kubelet API), signed by the kubelet CA.
    kwok_cert: Path
    kwok_key: Path
    #: The aggregation layer: the apiserver proves itself to extension apiservers (metrics-server).
    front_proxy_ca_cert: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path
    #: What the apiserver presents to admission webhooks (``--admission-control-config-file``).
    webhook_client_cert: Path
    webhook_client_key: Path


#: The common name of the apiserver's client certificate toward admission webhooks.
WEBHOOK_CLIENT_CN = "kube-apiserver-webhook-client"


def paths(directory: Path) -> ClusterPKI:
    """Where :func:`write_cluster_pki` writes each file."""
    return ClusterPKI(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        apiserver_cert=directory / "apiserver.crt",
        apiserver_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        kubelet_client_cert=directory / "kubelet-client.crt",
        kubelet_client_key=directory / "kubelet-client.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        kubelet_ca_cert=directory / "kubelet-ca.crt",
        kubelet_ca_key=directory / "kubelet-ca.key",
        kwok_cert=directory / "kwok.crt",
        kwok_key=directory / "kwok.key",
        front_proxy_ca_cert=directory / "front-proxy-ca.crt",
        front_proxy_client_cert=directory / "front-proxy-client.crt",
        front_proxy_client_key=directory / "front-proxy-client.key",
        webhook_client_cert=directory / "webhook-client.crt",
        webhook_client_key=directory / "webhook-client.key",
    )


def write_cluster_pki(directory: Path, service_ip: str = "10.0.0.1") -> ClusterPKI:
    directory.mkdir(parents=True, exist_ok=True)
    p = paths(directory)
    ca = make_ca("tensile-e2e-ca", _DAYS)
    write_cert(p.ca_cert, ca[0])
    write_key(p.ca_key, ca[1])
    sans = subject_alt_names(
        ["127.0.0.1", service_ip],
        ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
         "kubernetes.default.svc.cluster.local"],
    )
    cert, key = issue(ca, "kube-apiserver", _DAYS, server=True, sans=sans)
    write_cert(p.apiserver_cert, cert)
    write_key(p.apiserver_key, key)
    cert, key = issue(ca, "tensile-admin", _DAYS, org="system:masters", client=True)
    write_cert(p.admin_cert, cert)
    write_key(p.admin_key, key)
    cert, key = issue(ca, "kube-apiserver-kubelet-client", _DAYS, org="system:masters", client=True)
    write_cert(p.kubelet_client_cert, cert)
    write_key(p.kubelet_client_key, key)
    kubelet_ca = make_ca("tensile-e2e-kubelet-ca", _DAYS)
    write_cert(p.kubelet_ca_cert, kubelet_ca[0])
    write_key(p.kubelet_ca_key, kubelet_ca[1])
    cert, key = issue(kubelet_ca, "kwok", _DAYS, server=True, sans=subject_alt_names(["127.0.0.1"], ["localhost"]))
    write_cert(p.kwok_cert, cert)
    write_key(p.kwok_key, key)
    front = make_ca("tensile-e2e-front-proxy-ca", _DAYS)
    write_cert(p.front_proxy_ca_cert, front[0])
    cert, key = issue(front, "front-proxy-client", _DAYS, client=True)
    write_cert(p.front_proxy_client_cert, cert)
    write_key(p.front_proxy_client_key, key)
    cert, key = issue(ca, WEBHOOK_CLIENT_CN, _DAYS, client=True)
    write_cert(p.webhook_client_cert, cert)
    write_key(p.webhook_client_key, key)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(p.sa_key, sa)
    p.sa_pub.write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return p


def _load_ca(cert_path: Path, key_path: Path) -> CA:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]


def write_node_credentials(p: ClusterPKI, node: str, cert_path: Path, key_path: Path) -> None:
    """A kubelet's client certificate: ``system:node:NODE`` in ``system:nodes``, which the Node
    authorizer and NodeRestriction limit to that node's own objects."""
    cert, key = issue(_load_ca(p.ca_cert, p.ca_key), f"system:node:{node}", _DAYS, org="system:nodes",
                      client=True)
    write_cert(cert_path, cert)
    write_key(key_path, key)


def write_kubelet_serving(p: ClusterPKI, node: str, hosts: list[str], cert_path: Path, key_path: Path) -> None:
    """A serving certificate for a node's kubelet API that this cluster's apiserver verifies."""
    cert, key = issue(_load_ca(p.kubelet_ca_cert, p.kubelet_ca_key), f"system:node:{node}", _DAYS,
                      org="system:nodes", server=True, sans=subject_alt_names(hosts, [node]))
    write_cert(cert_path, cert)
    write_key(key_path, key)


def write_client_credentials(p: ClusterPKI, user: str, cert_path: Path, key_path: Path,
                             groups: str | None = None) -> None:
    """A client certificate for ``user`` (in ``groups``, one organisation) of this cluster."""
    cert, key = issue(_load_ca(p.ca_cert, p.ca_key), user, _DAYS, org=groups, client=True)
    write_cert(cert_path, cert)
    write_key(key_path, key)
