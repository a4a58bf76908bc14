"""The virtual node's Deployment, as the Helm chart (deploy/chart) renders it. Pure: no I/O.

``tensile join`` installs or prints a virtual node without Helm; built here, it is the very
Deployment a chart install of the same node would make (tests/test_chart.py renders the chart and
compares, minus the labels only Helm sets), so users can move between the two without a rollout
that changes anything but ownership. The names assume the chart's release is called ``tensile``.
"""

from __future__ import annotations

import copy
from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]

#: The chart's object-name prefix for release ``tensile``.
FULLNAME = "tensile"
#: The chart's appVersion, and the image its default values run.
VERSION = "0.1.0"
DEFAULT_IMAGE = f"tensile:{VERSION}"
#: Where the lower kubeconfig Secret is mounted.
LOWER_KUBECONFIG_DIR = "/etc/tensile/lower"
KUBELET_PORT = 10250
METRICS_PORT = 10255
#: The in-cluster CA, which signs the upper apiserver's kubelet client certificate on kubeadm and kind.
CLIENT_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
#: The chart's ``virtualNode.resources``.
DEFAULT_RESOURCES: JSON = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
#: Non-root (the image's user), no privilege, the runtime's seccomp profile; writes go to /tmp only.
POD_SECURITY_CONTEXT: JSON = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                              "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT: JSON = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}


def deployment_name(node: str) -> str:
    return f"{FULLNAME}-virtual-node-{node}"


def service_account(node: str) -> str:
    """Each virtual node runs as its own ServiceAccount, so the ``resourceNames`` of its roles (its own
    Node, Leases and profile) narrow what it may touch; a shared one would hold every node's rights."""
    return _account(node)


def _account(node: str) -> str:  # the parameter of virtual_node_deployment shadows service_account()
    return f"{FULLNAME}-{node}"


def lower_kubeconfig_secret(node: str) -> str:
    """The Secret holding the lower cluster's kubeconfig (key ``kubeconfig``) by default."""
    return f"{FULLNAME}-{node}-lower-kubeconfig"


def selector_labels(node: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tensile", "app.kubernetes.io/instance": FULLNAME,
            "app.kubernetes.io/component": "virtual-node", c.OWNER_NODE_LABEL: node}


def probes(port: str) -> JSON:
    """Liveness on ``/healthz`` (a dead or wedged loop), readiness on ``/readyz`` (caches synced)."""
    return {
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 3},
    }


def virtual_node_deployment(name: str, namespace: str, image: str, args: list[str] | None = None,
                            replicas: int = 2, secret: str | None = None, *,
                            secret_key: str = "kubeconfig", resources: JSON | None = None,
                            pull_policy: str = "IfNotPresent", service_account: str | None = None) -> JSON:
    """The Deployment of virtual node ``name`` in ``namespace``: ``replicas`` leader-elected replicas of
    ``tensile virtual-node`` running ``image``, with ``args`` appended to the chart's flags.

    ``secret`` (default :func:`lower_kubeconfig_secret`) holds the lower kubeconfig under
    ``secret_key``; ``resources`` defaults to :data:`DEFAULT_RESOURCES` (``{}``: none); ``service_account``
    to :func:`service_account`.
    """
    labels = selector_labels(name)
    container: JSON = {
        "name": "virtual-node",
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": ["virtual-node", f"--nodename={name}", f"--client-kubeconfig={LOWER_KUBECONFIG_DIR}/kubeconfig",
                 "--leader-elect=true", f"--kubelet-port={KUBELET_PORT}", f"--metrics-addr=:{METRICS_PORT}",
                 f"--client-ca-file={CLIENT_CA_FILE}", *(args or [])],
        # The kubelet API's advertised address (--node-ip's default) is the pod's own.
        "env": [{"name": "VKUBELET_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "kubelet", "containerPort": KUBELET_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        **probes("metrics"),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "lower-kubeconfig", "mountPath": LOWER_KUBECONFIG_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],  # an emptyDir, the only writable place
    }
    resources = DEFAULT_RESOURCES if resources is None else resources
    if resources:
        container["resources"] = resources
    # A deep copy: callers may edit the result without touching this module's constants.
    return copy.deepcopy({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(name), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": service_account or _account(name),
                    "securityContext": POD_SECURITY_CONTEXT,
                    "containers": [container],
                    "volumes": [
                        {"name": "lower-kubeconfig",
                         "secret": {"secretName": secret or lower_kubeconfig_secret(name),
                                    "items": [{"key": secret_key, "path": "kubeconfig"}]}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    })
