"""``make demo``: tensile's main job end to end on this machine.

Brings up an upper and a lower cluster (real control planes, kwok nodes),
the webhook and a virtual node between them, applies a sample workload
upstairs (a Deployment with a ConfigMap, a Secret, a PVC and a Service, and
only the ``virtual-pod=true`` label to opt in), shows it reaching Running
upstairs and downstairs, shows ``kubectl logs``, ``kubectl exec`` and ``kubectl top pod``
answered through the virtual node (metrics-server runs in both clusters), then prints both
kubeconfigs and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e import kwok
from e2e.cluster import LocalCluster
from e2e.kube_helpers import create_namespace
from e2e.kwok import NodeSpec
from e2e.metricsserver import MetricsServer
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess
from tensile import conventions as c

NS = "demo"
APP = "shop"
VK = "vk-lower"


def sample_workload(upper: LocalCluster, lower: LocalCluster) -> None:
    core = upper.core
    create_namespace(upper, NS)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "shop-config"}, "data": {"theme": "dark"}})
    core.create_namespaced_secret(NS, {"metadata": {"name": "shop-db"},
                                       "data": {"password": base64.b64encode(b"s3cret").decode()}})
    for cluster, pv in ((upper, "shop-pv-upper"), (lower, "shop-pv-lower")):
        cluster.core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "demo",
            "hostPath": {"path": f"/tmp/{pv}"}}})
    core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "shop-data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "demo", "resources": {"requests": {"storage": "1Gi"}}}})
    core.create_namespaced_service(NS, {"metadata": {"name": APP}, "spec": {
        "selector": {"app": APP}, "ports": [{"port": 80, "targetPort": 8080}]}})
    labels = {"app": APP, c.VIRTUAL_POD_LABEL: c.VIRTUAL_POD_VALUE}
    upper.apps.create_namespaced_deployment(NS, {
        "metadata": {"name": APP},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels,
                         # The usage kwok simulates downstairs; `kubectl top pod` upstairs shows it.
                         "annotations": {kwok.USAGE_CPU_ANNOTATION: "120m", kwok.USAGE_MEMORY_ANNOTATION: "48Mi"}},
            "spec": {
                "nodeSelector": {"disktype": "ssd"},  # a lower-node label: the webhook sets it aside
                "containers": [{
                    "name": "shop", "image": "nginx:1.27",
                    "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "shop-db",
                                                                                    "key": "password"}}}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/shop"},
                                     {"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "config", "configMap": {"name": "shop-config"}},
                            {"name": "data", "persistentVolumeClaim": {"claimName": "shop-data"}}],
            }}}})


def _rows(cluster: LocalCluster) -> list[tuple[str, str, str, str]]:
    pods = cluster.core.list_namespaced_pod(NS, label_selector=f"app={APP}").items
    return sorted((str(p.metadata.name), p.spec.node_name or "-", p.status.phase or "-", p.status.pod_ip or "-")
                  for p in pods)


def live_view(upper: LocalCluster, lower: LocalCluster, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up, low = _rows(upper), _rows(lower)
        print(f"\n[{time.strftime('%H:%M:%S')}] upper cluster              | lower cluster")
        for i in range(max(len(up), len(low), 1)):
            left = " ".join(up[i][1:]) + f" {up[i][0]}" if i < len(up) else ""
            right = " ".join(low[i][1:]) if i < len(low) else ""
            print(f"  {left:<45} | {right}")
        if up and low and all(r[2] == "Running" for r in up + low) and len(low) == len(up):
            return True
        time.sleep(1)
    return False


def summary(upper: LocalCluster, lower: LocalCluster) -> None:
    pod = upper.core.list_namespaced_pod(NS, label_selector=f"app={APP}").items[0]
    low = lower.core.read_namespaced_pod(pod.metadata.name, NS)
    print("\nThe pod runs downstairs with its real constraints restored:")
    lower_ip = next((x.message for x in pod.status.conditions or [] if x.type == c.LOWER_POD_CONDITION), None)
    print(f"  upper: node={pod.spec.node_name} nodeSelector={pod.spec.node_selector} ip={pod.status.pod_ip}"
          f" (lower IP in condition {c.LOWER_POD_CONDITION}: {lower_ip})")
    print(f"  lower: node={low.spec.node_name} nodeSelector={low.spec.node_selector} ip={low.status.pod_ip}")
    copies = [f"configmap/{x.metadata.name}" for x in lower.core.list_namespaced_config_map(NS).items
              if (x.metadata.labels or {}).get(c.OWNER_NODE_LABEL) == VK]
    copies += [f"secret/{x.metadata.name}" for x in lower.core.list_namespaced_secret(NS).items
               if (x.metadata.labels or {}).get(c.OWNER_NODE_LABEL) == VK]
    copies += [f"pvc/{x.metadata.name}({x.status.phase})" for x in
               lower.core.list_namespaced_persistent_volume_claim(NS).items]
    copies += [f"service/{x.metadata.name}" for x in lower.core.list_namespaced_service(NS).items]
    print(f"  copied into the lower cluster: {', '.join(sorted(copies))}")


def _kubectl(cluster: LocalCluster, *args: str) -> str:
    proc = subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True,
                          timeout=30)
    return (proc.stdout + proc.stderr).rstrip()


def through_the_virtual_node(upper: LocalCluster, lower: LocalCluster, metrics_timeout: float) -> None:
    """kubectl logs, exec and top against the upper cluster, answered by the lower one."""
    if not shutil.which("kubectl"):
        print("\n(kubectl is not on PATH: skipping the logs, exec and top examples)")
        return
    pod = upper.core.list_namespaced_pod(NS, label_selector=f"app={APP}").items[0].metadata.name
    lower.write_pod_log(["shop listening on :8080", f"connected to the database as {APP}"])
    kc = f"kubectl --kubeconfig {upper.kubeconfig}"
    print("\nThrough the virtual node's kubelet API (relayed to the lower apiserver):")
    print(f"  $ {kc} logs -n {NS} {pod}")
    print("    " + _kubectl(upper, "logs", "-n", NS, pod).replace("\n", "\n    "))
    print(f"  $ {kc} exec -n {NS} {pod} -- sh -c 'echo hello from $(hostname)'")
    print("    " + _kubectl(upper, "exec", "-n", NS, pod, "--", "sh", "-c", "echo hello from the lower cluster"))
    print(f"  $ {kc} top pod -n {NS}")
    deadline = time.monotonic() + metrics_timeout
    top = ""
    while time.monotonic() < deadline:
        top = _kubectl(upper, "top", "pod", "-n", NS)
        if pod in top and " 0m " not in top:
            break
        time.sleep(3)
    print("    " + top.replace("\n", "\n    "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-wait", action="store_true", help="exit after the workload runs (for tests/CI)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for Running")
    args = parser.parse_args(argv)
    root = Path.cwd() / ".e2e-runs" / "demo"
    print("starting an upper and a lower cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok)...")
    upper = LocalCluster("upper", [NodeSpec("upper-0", cpu="4", memory="8Gi")], root=root)
    lower = LocalCluster("lower", [NodeSpec("lower-ssd", cpu="16", memory="64Gi", labels={"disktype": "ssd"}),
                                   NodeSpec("lower-hdd", cpu="16", memory="64Gi", labels={"disktype": "hdd"})],
                         root=root)
    with upper, lower:
        print(f"  upper: {upper.server}\n  lower: {lower.server}")
        metrics = [MetricsServer(cluster) for cluster in (lower, upper)]
        try:
            for server in metrics:
                server.start()
            print("metrics-server running in both clusters (kubectl top, HPA)")
        except RuntimeError as exc:
            print(f"metrics-server not started ({exc}); kubectl top will not work")
            metrics = []
        with WebhookProcess(upper), VirtualNodeProcess(upper, lower, VK) as vn:
            print(f"webhook installed; virtual node {VK} registered (log: {vn.log_path})")
            sample_workload(upper, lower)
            print(f"applied Deployment {NS}/{APP} (opted in with {c.VIRTUAL_POD_LABEL}=true) with a ConfigMap, "
                  "a Secret, a PVC and a Service")
            ok = live_view(upper, lower, args.timeout)
            if not ok:
                print("the workload did not reach Running in time; logs are in", upper.dir, lower.dir,
                      file=sys.stderr)
                upper.failed = lower.failed = True
                return 1
            summary(upper, lower)
            through_the_virtual_node(upper, lower, args.timeout if metrics else 0)
            print(f"\nall Running. Try:\n  kubectl --kubeconfig {upper.kubeconfig} get nodes,pods -A -o wide\n"
                  f"  kubectl --kubeconfig {lower.kubeconfig} get pods,cm,secret,pvc,svc -n {NS} -o wide")
            if args.no_wait:
                return 0
            print("\nPress Ctrl-C to stop the clusters.")
            stop = {"now": False}

            def on_signal(*_: Any) -> None:
                stop["now"] = True

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            while not stop["now"]:
                time.sleep(0.5)
            print("stopping...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
