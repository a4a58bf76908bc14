"""The Helm chart (deploy/chart) and the plain manifests rendered from it, against tensile's own
sources: the RBAC rules, the webhook registration, the scheduler config, the CLI's flags and
``tensile.manifests``. Needs the helm binary ``make binaries`` builds; without it these fail."""

from __future__ import annotations

import base64
import datetime
import difflib
import importlib.util
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from e2e import binaries, versions
from scheduler.config import scheduler_config
from tensile import clusterprofile, manifests, rbac
from tensile.cli import build_parser
from webhook.install import ServiceRef, update_policy, update_policy_binding, webhook_configuration

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "chart"
NS = "tensile-system"
#: Labels only Helm sets; tensile.manifests leaves them out.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
EVERYTHING: dict[str, Any] = {
    "virtualNodes": [{"name": "vk-a"}, {"name": "vk-b", "replicas": 1, "args": ["--cluster-id=b"]}],
    "webhook": {"enabled": True, "certManager": {"enabled": False}},
    "scheduler": {"enabled": True, "secondScheduler": {"enabled": True}},
    "descheduler": {"enabled": True, "maxEvictionsTotal": 5, "dryRun": True},
    "serviceMonitor": {"enabled": True},
}

Docs = list[dict[str, Any]]


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def helm() -> str:
    # Builds it (as `make binaries` does) when missing; fails, never skips, when that is impossible.
    return str(binaries.helm())


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Callable[..., Docs]:
    def run(values: dict[str, Any] | None = None, *extra: str) -> Docs:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values or {}))
        proc = subprocess.run([helm, "template", "tensile", str(CHART), "--namespace", NS, "--values", str(path),
                               *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]
    return run


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def without_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    labels = obj["metadata"]["labels"]
    obj["metadata"]["labels"] = {k: v for k, v in labels.items() if k not in HELM_LABELS}
    return obj


def test_helm_lint_is_clean_for_every_values_file(helm: str) -> None:
    for values in [None, *sorted((ROOT / "deploy" / "values").glob("*.yaml"))]:
        cmd = [helm, "lint", "--strict", str(CHART), "--namespace", NS]
        if values is not None:
            cmd += ["--values", str(values)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_the_committed_manifests_and_chart_files_are_a_fresh_render(helm: str) -> None:
    stale = []
    for path, text in _render_module().expected(helm).items():
        current = path.read_text() if path.exists() else ""
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "fresh",
                                                n=1))
            stale.append(diff[:3000])
    assert not stale, "run `make manifests`:\n" + "\n".join(stale)


def test_rbac_rules_file_is_tensile_rbac_chart_rules() -> None:
    assert yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text()) == rbac.chart_rules()


def test_chart_crd_is_the_clusterprofile_crd() -> None:
    for path in (CHART / "crds" / "clusterprofile.yaml", ROOT / "deploy" / "manifests" / "crds.yaml"):
        assert yaml.safe_load(path.read_text()) == clusterprofile.crd()


def test_no_private_key_is_committed() -> None:
    for path in [*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "deploy").rglob("*.txt")]:
        text = path.read_text()
        assert "PRIVATE KEY" not in text and "tls.key:" not in text.replace("tls.key: {{", ""), path
    webhook = [d for d in yaml.safe_load_all((ROOT / "deploy/manifests/webhook.yaml").read_text()) if d]
    assert not [d for d in webhook if d["kind"] == "Secret"]


def test_every_role_is_rendered_from_the_rules_file(render: Callable[..., Docs]) -> None:
    docs = render(EVERYTHING)
    rules = rbac.chart_rules()
    for node in ("vk-a", "vk-b"):
        name = f"tensile-virtual-node-{node}"
        assert one(docs, "ClusterRole", name)["rules"] == rbac.virtual_node_rules(node)
        lease = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == name]
        assert lease[0]["metadata"]["namespace"] == "kube-node-lease"
        assert lease[0]["rules"] == rbac.node_lease_rules(node)
        assert one(docs, "Role", f"{name}-leader-election")["rules"] == rbac.leader_election_rules(node)
    assert one(docs, "ClusterRole", "tensile-webhook")["rules"] == rules["webhook"]
    assert one(docs, "ClusterRole", "tensile-scheduler")["rules"] == rules["scheduler"]
    assert one(docs, "ClusterRole", "tensile-descheduler")["rules"] == rules["descheduler"]
    assert one(docs, "Role", "tensile-descheduler-leader-election")["rules"] == rules["deschedulerLeaderElection"]
    # Every binding names a ServiceAccount the chart makes, in the release namespace.
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        for subject in binding["subjects"]:
            assert subject["name"] in accounts and subject["namespace"] == NS, binding["metadata"]["name"]
    for d in (d for d in docs if d["kind"] == "Deployment"):
        assert d["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_lower_cluster_mode_renders_only_the_lower_rbac(render: Callable[..., Docs]) -> None:
    docs = render({**EVERYTHING, "lowerCluster": {"enabled": True}})
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("ClusterRole", "tensile-lower"), ("ClusterRoleBinding", "tensile-lower"), ("ServiceAccount", "tensile-lower"),
        ("ValidatingAdmissionPolicy", "tensile-lower-guard"),
        ("ValidatingAdmissionPolicyBinding", "tensile-lower-guard")]
    guard = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert guard == rbac.lower_guard_policy("tensile-lower")
    assert one(docs, "ClusterRole")["rules"] == rbac.chart_rules()["virtualNodeLower"]
    assert one(docs, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "tensile-lower", "namespace": NS}]
    assert one(docs, "ServiceAccount")["metadata"]["namespace"] == NS
    # A release named otherwise guards its own account.
    renamed = render({"lowerCluster": {"enabled": True}, "fullnameOverride": "acme"})
    assert [d for d in renamed if d["kind"].startswith("ValidatingAdmissionPolicy")] == \
        rbac.lower_guard_policy("acme-lower")


def test_every_deployment_is_probed_non_root_and_read_only(render: Callable[..., Docs]) -> None:
    deployments = [d for d in render(EVERYTHING) if d["kind"] == "Deployment"]
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "tensile-descheduler", "tensile-kube-scheduler", "tensile-scheduler", "tensile-virtual-node-vk-a",
        "tensile-virtual-node-vk-b", "tensile-webhook"]
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        where = d["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        tmp = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
        for container in pod["containers"]:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            ports = {p["name"] for p in container["ports"]}
            assert container["livenessProbe"]["httpGet"]["port"] in ports, where
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True, where
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
            assert {"name": tmp[0], "mountPath": "/tmp"} in container["volumeMounts"], where
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_tensile_containers_pass_flags_the_cli_accepts(render: Callable[..., Docs]) -> None:
    """A renamed or misspelt flag would crash-loop the pod: parse every container's args with the real CLI."""
    docs = render({**EVERYTHING, "webhook": {"enabled": True, "args": ["--unreachable-toleration-seconds=300"]}})
    seen = set()
    for d in (d for d in docs if d["kind"] == "Deployment"):
        for container in d["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("registry.k8s.io/"):
                continue
            assert container["image"] == "tensile:0.1.0"
            args = build_parser(container["args"][0]).parse_args(container["args"])
            seen.add(args.command)
            if args.command == "descheduler":
                assert args.leader_elect and args.leader_elect_resource_namespace == NS and args.dry_run
                assert args.max_evictions_total == 5 and args.interval == 10.0
            if args.command == "virtual-node":
                assert args.leader_elect and args.metrics_addr == ("0.0.0.0", 10255) and args.kubelet_port == 10250
            if args.command == "webhook":
                assert args.avoidance_records and args.unreachable_toleration_seconds == 300
                assert str(args.tls_cert_file).startswith("/etc/tensile/tls/")
            if args.command == "scheduler":
                assert args.install_crd is False
    assert seen == {"virtual-node", "webhook", "scheduler", "descheduler"}


def test_the_chart_virtual_node_is_tensile_manifests_deployment(render: Callable[..., Docs]) -> None:
    image = "tensile:0.1.0"
    docs = render({"virtualNodes": [
        {"name": "vk-a"},
        {"name": "vk-b", "replicas": 3, "args": ["--cluster-id=b", "--flat-network"],
         "lowerKubeconfigSecret": "b-kubeconfig", "lowerKubeconfigKey": "config", "resources": {}},
    ]})
    assert without_helm_labels(one(docs, "Deployment", "tensile-virtual-node-vk-a")) == \
        manifests.virtual_node_deployment("vk-a", NS, image)
    assert without_helm_labels(one(docs, "Deployment", "tensile-virtual-node-vk-b")) == \
        manifests.virtual_node_deployment("vk-b", NS, image, ["--cluster-id=b", "--flat-network"], replicas=3,
                                          secret="b-kubeconfig", secret_key="config", resources={})
    # The Service a ServiceMonitor scrapes selects that Deployment's pods.
    service = one(docs, "Service", "tensile-virtual-node-vk-a")
    pod_labels = manifests.virtual_node_deployment("vk-a", NS, image)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels


def test_tensile_manifests_deployment_is_a_fresh_copy() -> None:
    first = manifests.virtual_node_deployment("vk-a", NS, "img")
    first["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    assert manifests.virtual_node_deployment("vk-a", NS, "img")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"] == 65532


def _webhook(docs: Docs) -> dict[str, Any]:
    config = one(docs, "MutatingWebhookConfiguration", "tensile-webhook")
    assert len(config["webhooks"]) == 1
    return config


def test_the_webhook_entry_is_what_tensile_webhook_install_registers(render: Callable[..., Docs]) -> None:
    for policy in ("Fail", "Ignore"):
        docs = render({"webhook": {"certManager": {"enabled": False}, "failurePolicy": policy}})
        config = _webhook(docs)
        ca = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
        service = ServiceRef(NS, "tensile-webhook", 443)
        expected = webhook_configuration("tensile-webhook", service=service, ca_bundle_pem=ca, failure_policy=policy)
        entry, want = dict(config["webhooks"][0]), dict(expected["webhooks"][0])
        assert entry.pop("clientConfig")["service"] == want.pop("clientConfig")["service"]
        assert entry == want
    policy_doc = one(docs, "ValidatingAdmissionPolicy", "tensile-webhook")
    assert policy_doc["spec"] == update_policy("tensile-webhook")["spec"]
    assert one(docs, "ValidatingAdmissionPolicyBinding", "tensile-webhook")["spec"] == \
        update_policy_binding("tensile-webhook")["spec"]


def test_generated_certificate_serves_the_service_names_and_is_signed_by_the_ca_bundle(
        render: Callable[..., Docs]) -> None:
    docs = render({"webhook": {"certManager": {"enabled": False}, "certValidityDays": 100}})
    secret = one(docs, "Secret", "tensile-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(_webhook(docs)["webhooks"][0]["clientConfig"]["caBundle"]))
    assert ca.subject == cert.issuer
    public = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"tensile-webhook.{NS}.svc" in sans.get_values_for_type(x509.DNSName)
    # The expiry annotation the next upgrade compares with `now` is the certificate's own.
    not_after = datetime.datetime.fromisoformat(secret["metadata"]["annotations"]["tensile.io/not-after"])
    assert abs((cert.not_valid_after_utc - not_after).total_seconds()) < 120
    assert abs((not_after - datetime.datetime.now(datetime.UTC)).days - 100) <= 1
    # The signing key is its own random Secret, mounted and named on the command line.
    assert len(base64.b64decode(one(docs, "Secret", "tensile-webhook-signing-key")["data"]["key"])) == 64
    args = one(docs, "Deployment", "tensile-webhook")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--signing-key-file=/etc/tensile/signing/key" in args


def test_cert_manager_mode_injects_the_ca_and_renders_no_key(render: Callable[..., Docs]) -> None:
    for values, extra in (({"webhook": {"certManager": {"enabled": True}}}, ()),
                          ({}, ("--api-versions", "cert-manager.io/v1"))):  # auto, cert-manager served
        docs = render(values, *extra)
        config = _webhook(docs)
        assert config["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NS}/tensile-webhook-tls"}
        assert "caBundle" not in config["webhooks"][0]["clientConfig"]
        serving = one(docs, "Certificate", "tensile-webhook-tls")
        assert serving["spec"]["secretName"] == "tensile-webhook-tls"
        assert serving["spec"]["issuerRef"] == {"kind": "Issuer", "name": "tensile-webhook-ca"}
        assert f"tensile-webhook.{NS}.svc" in serving["spec"]["dnsNames"]
        assert one(docs, "Certificate", "tensile-webhook-ca")["spec"]["isCA"] is True
        assert one(docs, "Issuer", "tensile-webhook-ca")["spec"] == {"ca": {"secretName": "tensile-webhook-ca"}}
        assert one(docs, "Issuer", "tensile-webhook-selfsigned")["spec"] == {"selfSigned": {}}
        assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "tensile-webhook-tls"]
    # auto without cert-manager: generated.
    docs = render({})
    assert one(docs, "Secret", "tensile-webhook-tls") and not [d for d in docs if d["kind"] == "Certificate"]


def test_scheduler_config_is_tensile_scheduler_config_and_the_second_scheduler_runs_only_its_profile(
        render: Callable[..., Docs]) -> None:
    docs = render({"webhook": {"enabled": False}, "scheduler": {"enabled": True, "secondScheduler": {"enabled": True}}})
    data = one(docs, "ConfigMap", "tensile-scheduler-config")["data"]
    url = f"http://tensile-scheduler.{NS}.svc:8888"
    assert yaml.safe_load(data["scheduler-config.yaml"]) == scheduler_config(url, as_profile="tensile")
    second = yaml.safe_load(data["second-scheduler.yaml"])
    assert second["profiles"] == [{"schedulerName": "tensile"}]
    assert second["extenders"] == scheduler_config(url, as_profile="tensile")["extenders"]
    # Its own Lease, which the built-in system:kube-scheduler role may write (name kube-scheduler).
    assert second["leaderElection"] == {"leaderElect": True, "resourceNamespace": NS, "resourceName": "kube-scheduler"}
    kube = one(docs, "Deployment", "tensile-kube-scheduler")["spec"]["template"]["spec"]["containers"][0]
    assert kube["image"] == f"registry.k8s.io/kube-scheduler:{versions.KUBERNETES}"
    roles = {(d["kind"], d["roleRef"]["name"]) for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and d["metadata"]["name"].startswith("tensile-kube-scheduler")}
    assert roles == {("ClusterRoleBinding", "system:kube-scheduler"), ("ClusterRoleBinding", "system:volume-scheduler"),
                     ("RoleBinding", "extension-apiserver-authentication-reader")}


def test_service_monitors_select_each_component_metrics_port(render: Callable[..., Docs]) -> None:
    docs = render(EVERYTHING)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "tensile-descheduler", "tensile-scheduler", "tensile-virtual-node", "tensile-webhook"]
    services = [d for d in docs if d["kind"] == "Service"]
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        port = monitor["spec"]["endpoints"][0]["port"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert matched, monitor["metadata"]["name"]
        for service in matched:
            assert port in {p["name"] for p in service["spec"]["ports"]}
    assert not [d for d in render({}) if d["kind"] == "ServiceMonitor"]


def test_components_are_enabled_independently(render: Callable[..., Docs]) -> None:
    def components(values: dict[str, Any]) -> set[str]:
        return {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in render(values)}

    off = {"webhook": {"enabled": False}}
    assert components(off) == set()
    assert components({**off, "virtualNodes": [{"name": "x"}]}) == {"virtual-node"}
    assert components({}) == {"webhook"}
    assert components({**off, "scheduler": {"enabled": True}}) == {"scheduler"}
    assert components({**off, "descheduler": {"enabled": True}}) == {"descheduler"}


def test_each_virtual_node_runs_as_its_own_service_account(render: Callable[..., Docs], helm: str) -> None:
    """As ``tensile join`` makes it: a shared account would hold every node's resourceNames-narrowed rights."""
    docs = render({"webhook": {"enabled": False}, "virtualNodes": [{"name": "vk-a"}, {"name": "vk-b"}]})
    for node in ("vk-a", "vk-b"):
        account = manifests.service_account(node)
        assert one(docs, "ServiceAccount", account)["metadata"]["namespace"] == NS
        bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
                    and d["metadata"]["labels"]["tensile.io/virtual-node"] == node]
        assert len(bindings) == 3
        for binding in bindings:
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    proc = subprocess.run([helm, "template", "tensile", str(CHART), "--set", "virtualNodes[0].name=webhook"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "would share ServiceAccount tensile-webhook" in proc.stderr


def test_default_image_is_the_charts() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == chart["version"] == manifests.VERSION
    assert f"{values['image']['repository']}:{chart['appVersion']}" == manifests.DEFAULT_IMAGE
    assert values["scheduler"]["secondScheduler"]["image"]["tag"] == versions.KUBERNETES
