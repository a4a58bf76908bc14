"""The Helm chart against real apiservers: every component's objects pass server-side validation
(``kubectl apply --dry-run=server``), the lower-cluster mode grants what it says, and a real
``helm install``/``upgrade`` keeps the generated webhook certificate until it nears expiry, then
renews it while still trusting the old CA."""

from __future__ import annotations

import base64
import datetime
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import binaries
from e2e.cluster import LocalCluster

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "chart"
NS = "tensile-system"


def run(cmd: list[str], stdin: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Tools:
    """helm and kubectl against one cluster, kubectl with its own discovery cache (CRDs come and go)."""

    def __init__(self, cluster: LocalCluster, cache: Path) -> None:
        self.helm_bin = str(binaries.helm())
        self.kubeconfig = str(cluster.kubeconfig)
        self.cache = str(cache)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return run(["kubectl", f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache}", *args], stdin)

    def helm(self, *args: str) -> str:
        return run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", *args])

    def template(self, values: dict[str, Any], *extra: str) -> str:
        return run([self.helm_bin, "template", "tensile", str(CHART), "--namespace", NS,
                    "--values", "/dev/stdin", *extra], stdin=yaml.safe_dump(values))

    def dry_run(self, manifest: str) -> list[str]:
        """Server-side dry run of every document; the objects kubectl reports, one line each."""
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        out = self.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest).splitlines()
        assert len(out) == len(docs), out
        assert all("(server dry run)" in line for line in out), out
        return out


def crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A minimal namespaced CRD that accepts any spec, standing in for cert-manager's and Prometheus Operator's."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def prepare(tools: Tools) -> None:
    tools.kubectl("create", "namespace", NS)
    crds = [crd("cert-manager.io", "Certificate", "certificates"), crd("cert-manager.io", "Issuer", "issuers"),
            crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors")]
    tools.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(crds))
    tools.kubectl("apply", "-f", str(CHART / "crds" / "clusterprofile.yaml"))
    tools.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/certificates.cert-manager.io",
                  "crd/issuers.cert-manager.io", "crd/servicemonitors.monitoring.coreos.com",
                  "crd/clusterprofiles.tensile.io")


def test_every_component_passes_server_side_validation(make_cluster: Callable[..., LocalCluster],
                                                        tmp_path: Path) -> None:
    upper = make_cluster("upper")
    lower = make_cluster("lower")
    tools = Tools(upper, tmp_path / "upper-cache")
    prepare(tools)
    off = {"webhook": {"enabled": False}}
    cases: dict[str, dict[str, Any]] = {
        "virtual nodes": {**off, "virtualNodes": [{"name": "vk-a"}, {"name": "vk-b", "args": ["--cluster-id=b"]}]},
        "webhook, generated certificate": {"webhook": {"certManager": {"enabled": False}}},
        "webhook, cert-manager": {"webhook": {"certManager": {"enabled": True}}},
        "scheduler and a second kube-scheduler": {**off, "scheduler": {"enabled": True,
                                                                        "secondScheduler": {"enabled": True}}},
        "descheduler": {**off, "descheduler": {"enabled": True, "maxEvictionsPerNode": 2}},
        "everything with ServiceMonitors": {
            "virtualNodes": [{"name": "vk-a"}], "webhook": {"certManager": {"enabled": False}},
            "scheduler": {"enabled": True, "secondScheduler": {"enabled": True}}, "descheduler": {"enabled": True},
            "serviceMonitor": {"enabled": True}},
    }
    for case, values in cases.items():
        try:
            tools.dry_run(tools.template(values))
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
    # The committed plain manifests too (lower-cluster.yaml is for the other cluster).
    for path in sorted((ROOT / "deploy" / "manifests").glob("*.yaml")):
        if path.name != "lower-cluster.yaml":
            tools.dry_run(path.read_text())
    # certManager "auto" asks the cluster: with cert-manager.io/v1 served, it is cert-manager. --validate also
    # checks every object against the apiserver's schemas.
    rendered = tools.template({}, "--validate", f"--kubeconfig={tools.kubeconfig}")
    objects = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d]
    assert ("Certificate", "tensile-webhook-tls") in objects, objects
    assert ("Secret", "tensile-webhook-tls") not in objects, objects

    # In the lower cluster: only the lower RBAC, which grants copies of pods and nothing more.
    low = Tools(lower, tmp_path / "lower-cache")
    low.kubectl("create", "namespace", NS)
    manifest = low.template({"lowerCluster": {"enabled": True}, "descheduler": {"enabled": True}})
    assert low.dry_run(manifest) == [
        "serviceaccount/tensile-lower created (server dry run)",
        "clusterrole.rbac.authorization.k8s.io/tensile-lower created (server dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/tensile-lower created (server dry run)",
        "validatingadmissionpolicy.admissionregistration.k8s.io/tensile-lower-guard created (server dry run)",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/tensile-lower-guard created (server dry run)",
    ]
    low.kubectl("apply", "-f", str(ROOT / "deploy" / "manifests" / "lower-cluster.yaml"))
    as_lower = f"--as=system:serviceaccount:{NS}:tensile-lower"
    for verb, resource, allowed in (("create", "pods", "yes"), ("delete", "secrets", "yes"),
                                    ("create", "deployments.apps", "no"), ("create", "clusterroles", "no")):
        proc = subprocess.run(["kubectl", f"--kubeconfig={low.kubeconfig}", "auth", "can-i", verb, resource,
                               "-n", "default", as_lower], capture_output=True, text=True)
        assert proc.stdout.strip() == allowed, (verb, resource, proc.stdout, proc.stderr)


def _secret(tools: Tools, name: str) -> dict[str, Any]:
    secret: dict[str, Any] = yaml.safe_load(tools.kubectl("get", "secret", "-n", NS, name, "-o", "yaml"))
    return secret


def _ca_bundle(tools: Tools) -> list[str]:
    config = yaml.safe_load(tools.kubectl("get", "mutatingwebhookconfiguration", "tensile-webhook", "-o", "yaml"))
    pem = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    return [block.strip() + "\n-----END CERTIFICATE-----" for block in pem.split("-----END CERTIFICATE-----")
            if block.strip()]


def test_helm_upgrade_keeps_the_generated_certificate_until_it_nears_expiry(
        make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    upper = make_cluster("upper")
    tools = Tools(upper, tmp_path / "cache")
    release = ["tensile", str(CHART), "--namespace", NS, "--set", "webhook.certManager.enabled=false",
               "--set", "webhook.certRenewBeforeDays=30"]
    notes = tools.helm("install", *release, "--create-namespace")
    assert "Its certificate was generated by the chart (Secret tensile-webhook-tls, valid 365 days)" in notes, notes
    first = _secret(tools, "tensile-webhook-tls")
    key = _secret(tools, "tensile-webhook-signing-key")["data"]["key"]
    ca1 = base64.b64decode(first["data"]["ca.crt"]).decode().strip()
    assert _ca_bundle(tools) == [ca1]

    tools.helm("upgrade", *release)
    assert _secret(tools, "tensile-webhook-tls")["data"] == first["data"], "a valid certificate was replaced"
    assert _ca_bundle(tools) == [ca1]
    assert _secret(tools, "tensile-webhook-signing-key")["data"]["key"] == key

    # Ten days left, inside the 30-day window: the next upgrade renews it and trusts both CAs meanwhile.
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tools.kubectl("annotate", "secret", "-n", NS, "tensile-webhook-tls", f"tensile.io/not-after={soon}", "--overwrite")
    tools.helm("upgrade", *release)
    renewed = _secret(tools, "tensile-webhook-tls")
    assert renewed["data"]["tls.crt"] != first["data"]["tls.crt"]
    assert renewed["metadata"]["annotations"]["tensile.io/not-after"] > soon
    ca2 = base64.b64decode(renewed["data"]["ca.crt"]).decode().strip()
    assert ca2 != ca1
    assert _ca_bundle(tools) == [ca2, ca1]
    assert _secret(tools, "tensile-webhook-signing-key")["data"]["key"] == key, "the signing key outlives rotations"

    # The upgrade after that trusts only the new CA.
    tools.helm("upgrade", *release)
    assert _secret(tools, "tensile-webhook-tls")["data"] == renewed["data"]
    assert _ca_bundle(tools) == [ca2]
