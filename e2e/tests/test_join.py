"""``tensile join`` and ``tensile unjoin`` on real control planes.

No container runtime exists here, so the Deployment ``join --install`` creates never runs a real
container. The test runs the virtual node as a local process with exactly what ``join`` made: the
lower kubeconfig read back from the Secret upstairs, and a token of the upper ServiceAccount that
``join`` bound to the per-node role.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from e2e.cluster import LocalCluster, wait_for
from e2e.fixtures import LOWER_NODES, UPPER_NODES
from e2e.kube_helpers import (
    create_namespace,
    kubectl,
    pod_manifest,
    service_account_kubeconfig,
    tensile_objects,
    token_kubeconfig,
    unique,
    wait_pod_running,
)
from e2e.process import free_port
from e2e.virtualnode import VirtualNodeProcess
from tensile import conventions as c
from tensile import manifests
from tensile.joinplan import Names

pytestmark = pytest.mark.e2e

NS = "tensile-system"
NAME = "vk-joined"


def tensile(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensile.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def join(upper: LocalCluster, lower_kubeconfig: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return tensile("join", "--upper-kubeconfig", upper.kubeconfig, "--lower-kubeconfig", lower_kubeconfig,
                   "--name", NAME, *extra)


def secret_kubeconfig(upper: LocalCluster, path: Path) -> Path:
    secret = upper.core.read_namespaced_secret(manifests.lower_kubeconfig_secret(NAME), NS)
    path.write_bytes(base64.b64decode(secret.data["kubeconfig"]))
    return path


def test_join_links_a_fresh_lower_cluster_and_unjoin_leaves_nothing_behind(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    assert tensile_objects(upper) == set() and tensile_objects(lower) == set()

    done = join(upper, lower.kubeconfig, "--install", "--virtual-node-flag=--namespace-mapping=suffixed",
                "--virtual-node-flag=--upper-cluster-name=up")
    assert done.returncode == 0, done.stderr
    assert "the lower token expires at" in done.stderr
    deployment = k8s.AppsV1Api(upper.api()).read_namespaced_deployment(manifests.deployment_name(NAME), NS)
    assert "--namespace-mapping=suffixed" in deployment.spec.template.spec.containers[0].args
    upper_id = upper.core.read_namespace(c.KUBE_SYSTEM).metadata.uid
    names = Names(NAME, NS, upper_id)
    lower_sa = lower.core.read_namespaced_service_account(names.lower_service_account, NS)

    # The virtual node with exactly join's credentials: the Secret's kubeconfig, the upper SA's token.
    lower_config = secret_kubeconfig(upper, tmp_path / "lower.kubeconfig")
    assert "token" in yaml.safe_load(lower_config.read_text())["users"][0]["user"]
    upper_config = service_account_kubeconfig(upper, NS, names.upper_service_account, tmp_path / "upper.kubeconfig")
    vn = VirtualNodeProcess(upper, lower, NAME, upper_kubeconfig=upper_config, lower_kubeconfig=lower_config,
                            extra_args=["--namespace-mapping=suffixed", "--upper-cluster-name=up",
                                        # where a pod of the Deployment elects its leader: its own namespace
                                        f"--leader-elect-resource-namespace={NS}"])
    try:
        vn.start()  # inside: a start that times out still stops the process
        ns = unique("joined")
        create_namespace(upper, ns)
        upper.core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
        upper.core.create_namespaced_pod(ns, pod_manifest(
            "p", node_name=NAME, volumes=[{"name": "v", "configMap": {"name": "cfg"}}]))
        wait_pod_running(upper, ns, "p", timeout=90)
        assert lower.core.read_namespaced_pod("p", f"{ns}-up").status.phase == "Running"
        assert lower.core.read_namespaced_config_map("cfg", f"{ns}-up").data == {"k": "v"}
        assert not any("forbidden" in line.lower() for line in vn.log_tail(100000).splitlines())

        # Again: the token is renewed, nothing else changes.
        old_token = yaml.safe_load(lower_config.read_text())["users"][0]["user"]["token"]
        again = join(upper, lower.kubeconfig, "--install", "--virtual-node-flag=--namespace-mapping=suffixed",
                     "--virtual-node-flag=--upper-cluster-name=up")
        assert again.returncode == 0, again.stderr
        assert " created " not in again.stderr
        assert lower.core.read_namespaced_service_account(names.lower_service_account, NS).metadata.uid == \
            lower_sa.metadata.uid
        renewed = secret_kubeconfig(upper, tmp_path / "renewed.kubeconfig")
        assert yaml.safe_load(renewed.read_text())["users"][0]["user"]["token"] != old_token
    finally:
        vn.stop()

    # The lower guard: join's credentials may not touch an object tensile did not make.
    lower.core.create_namespaced_config_map("default", {"metadata": {"name": "foreign"}, "data": {"a": "b"}})
    refused = subprocess.run(["kubectl", f"--kubeconfig={lower_config}", "-n", "default", "patch", "configmap",
                              "foreign", "-p", '{"data":{"a":"x"}}'], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "tensile may change only objects labelled" in refused.stderr
    assert lower.core.read_namespaced_config_map("foreign", "default").data == {"a": "b"}

    report = tensile("unjoin", "--upper-kubeconfig", upper.kubeconfig, "--lower-kubeconfig", lower.kubeconfig,
                     "--name", NAME)
    assert report.returncode == 0, report.stderr
    assert "copies left in the lower cluster (remove them with --purge)" in report.stdout
    assert f"pods: 1 ({ns}-up/p)" in report.stdout
    purged = tensile("unjoin", "--upper-kubeconfig", upper.kubeconfig, "--lower-kubeconfig", lower.kubeconfig,
                     "--name", NAME, "--purge")
    assert purged.returncode == 0, purged.stderr
    assert "removed these copies" in purged.stdout
    wait_for(lambda: tensile_objects(lower) == set(), 60, what="nothing of tensile's left downstairs")
    assert tensile_objects(upper) == set()
    for kind, gone in (("Node", lambda: upper.core.read_node(NAME)),
                       ("Secret", lambda: upper.core.read_namespaced_secret(names.secret, NS)),
                       ("Lease", lambda: k8s.CoordinationV1Api(upper.api()).read_namespaced_lease(
                           NAME, c.NODE_LEASE_NAMESPACE))):
        with pytest.raises(k8s.ApiException) as info:
            gone()
        assert info.value.status == 404, kind


def test_join_refuses_bad_input_with_one_line_and_leaves_nothing_half_made(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    upper = make_cluster("upper", list(UPPER_NODES))
    lower = make_cluster("lower", list(LOWER_NODES))
    other = make_cluster("other", [])

    # A kubeconfig without the rights join needs: it says which verb on which resource.
    kubectl(lower, "create", "serviceaccount", "weak", "-n", "default")
    kubectl(lower, "create", "clusterrolebinding", "weak-view", "--clusterrole=view", "--serviceaccount=default:weak")
    weak = service_account_kubeconfig(lower, "default", "weak", tmp_path / "weak.kubeconfig")
    refused = join(upper, weak)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: the lower kubeconfig (system:serviceaccount:default:weak) lacks rights")
    assert "create clusterroles.rbac.authorization.k8s.io" in refused.stderr
    assert "create serviceaccounts/token in namespace tensile-system" in refused.stderr

    # Unreachable, and not a Kubernetes API at all.
    closed = token_kubeconfig(lower, tmp_path / "closed.kubeconfig", "t", server=f"https://127.0.0.1:{free_port()}")
    unreachable = join(upper, closed)
    assert unreachable.returncode == 2 and "cannot reach the lower cluster at https://127.0.0.1:" in unreachable.stderr
    with subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as web:
        try:
            not_kube = token_kubeconfig(lower, tmp_path / "web.kubeconfig", "t", server=f"http://127.0.0.1:{port}")
            wait_for(lambda: subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True,
                                            timeout=5).returncode == 0, 20, what="a plain web server")
            answered = join(upper, not_kube)
        finally:
            web.terminate()
    assert answered.returncode == 2 and "is not a Kubernetes API server" in answered.stderr
    missing = join(upper, tmp_path / "nowhere.kubeconfig")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert tensile_objects(upper) == set() and tensile_objects(lower) == set()

    # A name joined to another lower cluster.
    assert join(upper, lower.kubeconfig).returncode == 0
    made_upper, made_lower = tensile_objects(upper), tensile_objects(lower)
    elsewhere = join(upper, other.kubeconfig)
    assert elsewhere.returncode == 2 and f"{NAME} is joined to another lower cluster" in elsewhere.stderr
    assert tensile_objects(other) == set()
    assert (tensile_objects(upper), tensile_objects(lower)) == (made_upper, made_lower)
    same = join(upper, upper.kubeconfig)
    assert same.returncode == 2 and "reach the same cluster" in same.stderr
