"""Every component runs under credentials bound only to the chart's roles, and cannot overstep them.

Three real control planes: upper (its kube-scheduler calls the extender), lower A (whose only node
refuses every pod: a NoSchedule taint) and lower B. The chart's RBAC (``helm template`` of
deploy/chart, only its ServiceAccounts, roles and bindings) is applied upstairs; lower A gets the
chart's lower-cluster rendering, lower B what ``tensile join`` makes. Each component then runs as a
local process with a token of its own ServiceAccount and passes its main scenario: the webhook
mutates, the extender keeps a pod off vk-a, both virtual nodes copy pods and what they need, and the
descheduler moves a pod vk-a cannot start. Then ``kubectl auth can-i`` and a server-side dry run
show what each may not do.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from deploy import render
from e2e.cluster import LocalCluster, wait_for
from e2e.deschedulerproc import DeschedulerProcess
from e2e.fixtures import _start, _stop
from e2e.kube_helpers import (
    create_namespace,
    deployment_manifest,
    kubectl,
    pod_manifest,
    service_account_kubeconfig,
    unique,
)
from e2e.kwok import NodeSpec
from e2e.process import free_port
from e2e.schedulerproc import SchedulerProcess, kube_scheduler_config
from e2e.secretscan import secret_value
from e2e.tests.test_join import tensile
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c
from tensile import manifests
from tensile.joinplan import Names

pytestmark = pytest.mark.e2e

NS = "tensile-system"
FULL = {"key": "full", "value": "yes", "effect": "NoSchedule"}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
VALUES = {"virtualNodes": [{"name": "vk-a"}, {"name": "vk-b"}], "webhook": {"enabled": True,
          "certManager": {"enabled": False}}, "scheduler": {"enabled": True}, "descheduler": {"enabled": True}}


def chart_rbac(tmp: Path, values: dict[str, Any], kinds: tuple[str, ...] = RBAC_KINDS) -> str:
    """The chart's ServiceAccounts, roles and bindings for ``values``, as ``helm template`` renders them."""
    file = tmp / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    docs = yaml.safe_load_all(render.helm_template(render.helm_binary(), [file]))
    return yaml.safe_dump_all([d for d in docs if d and d["kind"] in kinds])


class Federation:
    def __init__(self, upper: LocalCluster, a: LocalCluster, b: LocalCluster, parts: dict[str, Any],
                 accounts: dict[str, str]) -> None:
        self.upper, self.a, self.b, self.parts, self.accounts = upper, a, b, parts, accounts


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("least-privilege")
    port = free_port()
    started: list[Any] = []
    try:
        upper = _start("lp-upper", [NodeSpec("upper-0", cpu="4", memory="8Gi")],
                       scheduler_config=kube_scheduler_config(f"http://127.0.0.1:{port}"))
        started.append(upper)
        a = _start("lp-lower-a", [NodeSpec("a-0", cpu="16", memory="64Gi", taints=[FULL])])
        started.append(a)
        b = _start("lp-lower-b", [NodeSpec("b-0", cpu="16", memory="64Gi")])
        started.append(b)
        create_namespace(upper, NS)
        kubectl(upper, "apply", "-f", "-", stdin=chart_rbac(tmp, VALUES))
        kubectl(upper, "apply", "-f", str(render.MANIFESTS / "crds.yaml"))  # an admin installs the CRD
        # Lower A: the chart's lower-cluster rendering; its ServiceAccount's token in a kubeconfig.
        create_namespace(a, NS)
        kubectl(a, "apply", "-f", "-", stdin=chart_rbac(tmp, {"lowerCluster": {"enabled": True}}, (
            *RBAC_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")))
        lower_a = service_account_kubeconfig(a, NS, "tensile-lower", tmp / "lower-a.kubeconfig")
        # Lower B: what `tensile join` makes, read back from the Secret it stores upstairs.
        joined = tensile("join", "--upper-kubeconfig", upper.kubeconfig, "--lower-kubeconfig", b.kubeconfig,
                         "--name", "vk-b")
        assert joined.returncode == 0, joined.stderr
        secret = upper.core.read_namespaced_secret(manifests.lower_kubeconfig_secret("vk-b"), NS)
        lower_b = tmp / "lower-b.kubeconfig"
        lower_b.write_bytes(base64.b64decode(secret.data["kubeconfig"]))
        accounts = {"vk-a": manifests.service_account("vk-a"), "vk-b": manifests.service_account("vk-b"),
                    **{who: f"tensile-{who}" for who in ("webhook", "scheduler", "descheduler")}}
        config = {who: service_account_kubeconfig(upper, NS, sa, tmp / f"{who}.kubeconfig")
                  for who, sa in accounts.items()}
        parts: dict[str, Any] = {}
        parts["scheduler"] = SchedulerProcess(upper, port, kubeconfig=config["scheduler"],
                                              extra_args=["--install-crd=false"])
        parts["webhook"] = WebhookProcess(upper, extra_args=["--avoidance-records",
                                                             f"--kubeconfig={config['webhook']}"])
        for name, lower, lower_config in (("vk-a", a, lower_a), ("vk-b", b, lower_b)):
            parts[name] = VirtualNodeProcess(upper, lower, name, upper_kubeconfig=config[name],
                                             lower_kubeconfig=lower_config,
                                             extra_args=["--profile-interval=500ms",
                                                         f"--leader-elect-resource-namespace={NS}"])
        parts["descheduler"] = DeschedulerProcess(upper, "descheduler-lp", kubeconfig=config["descheduler"],
                                                  extra_args=[f"--leader-elect-resource-namespace={NS}"])
        for part in parts.values():
            started.append(part)  # first: a start that fails half-way is stopped too
            part.start()
        yield Federation(upper, a, b, parts, accounts)
    finally:
        for part in reversed(started):
            if isinstance(part, LocalCluster):
                _stop(part)
            else:
                part.stop()


def test_every_component_passes_its_main_scenario_under_the_charts_roles(federation: Federation) -> None:
    f = federation
    ns = unique("lp")
    create_namespace(f.upper, ns)
    # The extender reads vk-a's profile (written with vk-a's narrow credentials): no node there takes
    # the pod, so the webhook-mutated pod of a Deployment lands on vk-b.
    dep = deployment_manifest("web", 1, {"app": "web", c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE})
    for key in ("tolerations", "nodeSelector"):  # the webhook adds what a virtual node needs
        dep["spec"]["template"]["spec"].pop(key, None)
    k8s.AppsV1Api(f.upper.api()).create_namespaced_deployment(ns, dep)
    web = wait_for(lambda: next((p for p in f.upper.core.list_namespaced_pod(ns, label_selector="app=web").items
                                 if p.status.phase == "Running"), None), 90, what="the Deployment's pod running")
    assert c.CLUSTER_SELECTOR_ANNOTATION in web.metadata.annotations
    assert web.spec.node_name == "vk-b"
    assert f.parts["scheduler"].metrics().total("tensile_scheduler_verdicts_total", verdict="never") >= 1

    # The descheduler moves a bare pod that vk-a copied (with its ConfigMap and Secret) but lower A
    # cannot start; the extender places the recreated pod on vk-b.
    f.upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    f.upper.core.create_namespaced_secret(ns, {"metadata": {"name": "pw"}, "stringData": {"p": secret_value("lp")}})
    body = pod_manifest("lonely", node_name="vk-a", volumes=[{"name": "c", "configMap": {"name": "cfg"}},
                                                             {"name": "s", "secret": {"secretName": "pw"}}])
    f.upper.core.create_namespaced_pod(ns, body)
    wait_for(lambda: f.a.core.read_namespaced_secret("pw", ns), 60, what="the Secret copied into lower A")
    moved = wait_for(lambda: (p := f.upper.core.read_namespaced_pod("lonely", ns)).spec.node_name == "vk-b"
                     and p.status.phase == "Running" and p, 150, what="the pod moved to vk-b and running")
    assert moved.metadata.annotations[c.PREFIX + "rescheduled-from"] == "vk-a"
    assert f.b.core.read_namespaced_config_map("cfg", ns).data == {"k": "v"}
    wait_for(lambda: not f.a.core.list_namespaced_pod(ns).items, 60, what="the copy in lower A removed")

    f.upper.core.delete_namespaced_pod("lonely", ns)
    k8s.AppsV1Api(f.upper.api()).delete_namespaced_deployment("web", ns)
    wait_for(lambda: not f.b.core.list_namespaced_pod(ns).items, 90, what="lower B's copies removed")
    for name, part in f.parts.items():
        log = part.proc.log_tail(200000) if part.proc else ""
        assert " 403 " not in log and "forbidden" not in log.lower(), f"{name} was refused something:\n{log[-3000:]}"
        assert "s3cr3t-lp" not in log, name


def can(cluster: LocalCluster, account: str, *args: str) -> bool:
    proc = subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "auth", "can-i", *args,
                           f"--as=system:serviceaccount:{account}"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() == "yes"


def test_no_component_can_do_more_than_its_job(federation: Federation) -> None:
    f = federation
    sa = {who: f"{NS}:{name}" for who, name in f.accounts.items()}
    up = f.upper
    # Virtual nodes: their own Node and Lease only; pods' dependencies read, never written.
    assert can(up, sa["vk-a"], "patch", "nodes/vk-a") and not can(up, sa["vk-a"], "patch", "nodes/vk-b")
    for other in ("vk-b", "upper-0"):
        assert not can(up, sa["vk-a"], "delete", f"nodes/{other}")
    assert not can(up, sa["vk-a"], "patch", "leases/vk-b", "-n", c.NODE_LEASE_NAMESPACE)
    assert not can(up, sa["vk-a"], "update", "secrets", "-A") and not can(up, sa["vk-a"], "create", "pods", "-A")
    # The webhook, the extender and the descheduler read no Secret and touch no Node.
    for who in ("webhook", "scheduler", "descheduler"):
        assert not can(up, sa[who], "get", "secrets", "-A"), who
        assert not can(up, sa[who], "list", "secrets", "-A"), who
        assert not can(up, sa[who], "delete", "nodes/vk-a"), who
        assert not can(up, sa[who], "patch", "nodes/vk-a"), who
    assert not can(up, sa["webhook"], "create", "pods", "-A") and not can(up, sa["webhook"], "list", "pods", "-A")
    assert not can(up, sa["scheduler"], "create", "pods/binding", "-A")
    assert not can(up, sa["scheduler"], "patch", f"{c.PROFILE_PLURAL}.{c.PROFILE_GROUP}/vk-a")
    assert not can(up, sa["descheduler"], "patch", "pods/status", "-A")
    assert not can(up, sa["descheduler"], "update", "leases/vk-a", "-n", NS)
    # Downstairs: no Node is written, and nothing tensile did not make is changed (the guard policy).
    upper_id = up.core.read_namespace(c.KUBE_SYSTEM).metadata.uid
    lower_accounts = ((f.a, f"{NS}:tensile-lower"), (f.b, f"{NS}:{Names('vk-b', NS, upper_id).lower_service_account}"))
    for lower, account in lower_accounts:
        assert not can(lower, account, "delete", "nodes/a-0") and not can(lower, account, "patch", "nodes/a-0")
        assert can(lower, account, "patch", "configmaps", "-n", "default")  # RBAC alone would allow it ...
        lower.core.create_namespaced_config_map("default", {"metadata": {"generateName": "foreign-"}, "data": {}})
        foreign = lower.core.list_namespaced_config_map("default", field_selector="metadata.name!=kube-root-ca.crt")
        name = str(foreign.items[0].metadata.name)
        proc = subprocess.run(["kubectl", f"--kubeconfig={lower.kubeconfig}", f"--as=system:serviceaccount:{account}",
                               "-n", "default", "delete", "configmap", name, "--dry-run=server"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "tensile may change only objects labelled" in proc.stderr  # ... the policy not
