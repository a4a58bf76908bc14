"""The harness itself, on real control planes: what later tests rely on."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client as k8s

from e2e import cluster as cluster_mod
from e2e import versions
from e2e.cluster import LocalCluster, wait_for
from e2e.kwok import NodeSpec
from e2e.process import ComponentFailed
from e2e.process import free_port as real_free_port

pytestmark = pytest.mark.e2e


def test_apiserver_is_ready_and_reports_pinned_version(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster("smoke")
    status, body = c.get_raw("/readyz")
    assert status == 200 and body == b"ok"
    status, body = c.get_raw("/version")
    assert json.loads(body)["gitVersion"] == versions.KUBERNETES
    assert c.kubeconfig.is_file()


def test_kwok_nodes_are_ready_with_given_capacity_labels_and_taints(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    c = make_cluster("nodes", [
        NodeSpec("n-small", cpu="2", memory="4Gi", pods="20", labels={"zone": "a"}),
        NodeSpec("n-gpu", cpu="16", memory="64Gi", pods="50", taints=[taint], extended={"nvidia.com/gpu": "4"}),
    ])
    small = c.core.read_node("n-small")
    assert {"cpu": "2", "memory": "4Gi", "pods": "20"}.items() <= small.status.allocatable.items()
    assert small.metadata.labels["zone"] == "a"
    assert any(x.type == "Ready" and x.status == "True" for x in small.status.conditions)
    gpu = c.core.read_node("n-gpu")
    assert gpu.status.capacity["nvidia.com/gpu"] == "4"
    assert [(t.key, t.value, t.effect) for t in gpu.spec.taints] == [("dedicated", "gpu", "NoSchedule")]


def test_deployment_reaches_three_running_pods_with_ips(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster("deploy")
    c.apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        },
    })

    def running() -> list[k8s.V1Pod]:
        pods = c.core.list_namespaced_pod("default", label_selector="app=web").items
        ok = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return ok if len(ok) == 3 else []

    pods = wait_for(running, 90, what="3 running pods")
    # kwok hands out the IPs, from the cluster's pod CIDR. It does not promise them distinct: its pool
    # raced once in CI and gave two of three pods started in the same millisecond one address.
    network = ipaddress.ip_network(c.pod_cidr, strict=False)
    assert all(ipaddress.ip_address(p.status.pod_ip) in network for p in pods)
    assert all(p.spec.node_name == "deploy-node-0" for p in pods)


def test_two_clusters_share_nothing(make_cluster: Callable[..., LocalCluster]) -> None:
    a = make_cluster("iso-a")
    b = make_cluster("iso-b")
    assert a.server != b.server and a.dir != b.dir and a.etcd_port != b.etcd_port
    a.core.create_namespaced_config_map("default", {"metadata": {"name": "only-in-a"}, "data": {"k": "v"}})
    assert a.core.read_namespaced_config_map("only-in-a", "default").data == {"k": "v"}
    with pytest.raises(k8s.ApiException) as err:
        b.core.read_namespaced_config_map("only-in-a", "default")
    assert err.value.status == 404


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once reaped.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stop_leaves_no_process_and_keeps_logs() -> None:
    c = LocalCluster("stop")
    c.start()
    pids = [p.pid for p in c.processes.values() if p.pid]
    assert len(pids) == 5
    c.stop()
    assert not [pid for pid in pids if _alive(pid)]
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        assert (c.dir / f"{name}.log").stat().st_size > 0


def test_stop_runs_even_when_the_body_fails() -> None:
    c = LocalCluster("boom")
    with pytest.raises(RuntimeError, match="test body failed"), c:
        pids = [p.pid for p in c.processes.values() if p.pid]
        raise RuntimeError("test body failed")
    assert c.failed
    assert not [pid for pid in pids if pid and _alive(pid)]


def test_taken_port_is_retried_with_another(monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real = real_free_port
    handed: list[int] = []

    def first_taken() -> Iterator[int]:
        yield taken  # etcd's client port: already in use
        while True:
            yield real()

    ports = first_taken()

    def fake_free_port() -> int:
        port = next(ports)
        handed.append(port)
        return port

    monkeypatch.setattr(cluster_mod, "free_port", fake_free_port)
    try:
        with LocalCluster("retry") as c:
            assert c.etcd_port != taken
            assert c.get_raw("/readyz")[0] == 200
            assert "address already in use" in (c.dir / "etcd.log").read_text()
    finally:
        blocker.close()
    assert handed[0] == taken


def test_component_dying_at_startup_fails_with_its_log_tail() -> None:
    c = LocalCluster("dies", apiserver_args=["--no-such-flag=1"])
    started = time.monotonic()
    with pytest.raises(ComponentFailed) as err:
        c.start()
    assert "kube-apiserver exited" in str(err.value)
    assert "no-such-flag" in str(err.value)
    assert time.monotonic() - started < cluster_mod.START_TIMEOUT
    assert not [p for p in c.processes.values() if p.alive()]


def test_custom_scheduler_configuration_is_used(make_cluster: Callable[..., LocalCluster]) -> None:
    # A second profile under another name: a pod asking for it is only scheduled if the file was used.
    c = make_cluster("sched", scheduler_config={"profiles": [
        {"schedulerName": "default-scheduler"}, {"schedulerName": "tensile-test-scheduler"}]})
    c.core.create_namespaced_pod("default", {"metadata": {"name": "custom"}, "spec": {
        "schedulerName": "tensile-test-scheduler", "containers": [{"name": "c", "image": "x"}]}})
    pod = wait_for(lambda: (p := c.core.read_namespaced_pod("custom", "default")).spec.node_name and p, 60,
                   what="pod scheduled by the custom profile")
    assert pod.spec.node_name == "sched-node-0"
    assert "tensile-test-scheduler" in (c.dir / "kube-scheduler.yaml").read_text()
