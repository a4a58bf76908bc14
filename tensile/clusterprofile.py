"""The ``ClusterProfile`` object: where a virtual node publishes its capacity profile upstairs.

Why a custom resource, not a ConfigMap or a Node annotation:

- a Node annotation rides every Node watch event and, without ``nodeCacheCapable``, every
  extender request: 100 virtual nodes with 60 KiB profiles would make each Filter call carry
  6 MB, and every Node watcher (kube-scheduler, controllers) would decode them;
- a ConfigMap lives in a namespace the extender must be told about, and ``kubectl get`` shows
  only its name;
- a cluster-scoped ``ClusterProfile`` named after the virtual node is one watch for the extender,
  one RBAC rule, garbage-collected with its Node (owner reference), and ``kubectl get
  clusterprofiles`` prints the nodes, groups and largest free CPU and memory of every lower
  cluster.

The profile is in ``status`` (it is an observation; nobody writes a ``spec``). The schema keeps
the profile's inner structure open (``x-kubernetes-preserve-unknown-fields``) so a newer virtual
node can add fields an older extender ignores; ``formatVersion`` guards incompatible changes.

Pure: manifests as dicts.
"""

from __future__ import annotations

from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]

API_VERSION = f"{c.PROFILE_GROUP}/{c.PROFILE_VERSION}"
CRD_NAME = f"{c.PROFILE_PLURAL}.{c.PROFILE_GROUP}"
#: Written by the virtual node in ``status``, beside the profile itself.
VIRTUAL_NODE_FIELD = "virtualNode"
CLUSTER_ID_FIELD = "clusterID"
HEARTBEAT_FIELD = "heartbeatTime"


def collection_path() -> str:
    return f"/apis/{API_VERSION}/{c.PROFILE_PLURAL}"


def object_path(name: str) -> str:
    return f"{collection_path()}/{name}"


def crd() -> JSON:
    """The CustomResourceDefinition (``tensile scheduler crd`` prints it)."""
    open_object: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    columns = [
        {"name": "Cluster", "type": "string", "jsonPath": f".status.{CLUSTER_ID_FIELD}"},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes",
         "description": "Ready, schedulable lower nodes"},
        {"name": "Groups", "type": "integer", "jsonPath": ".status.summary.groups",
         "description": "Node groups (scheduling signatures)"},
        {"name": "Largest-CPU", "type": "string", "jsonPath": ".status.summary.largestFreeCPU",
         "description": "Most CPU free on one lower node"},
        {"name": "Largest-Memory", "type": "string", "jsonPath": ".status.summary.largestFreeMemory",
         "description": "Most memory free on one lower node"},
        {"name": "Heartbeat", "type": "date", "jsonPath": f".status.{HEARTBEAT_FIELD}"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}},
        "spec": {
            "group": c.PROFILE_GROUP,
            "scope": "Cluster",
            "names": {"plural": c.PROFILE_PLURAL, "singular": c.PROFILE_KIND.lower(), "kind": c.PROFILE_KIND,
                      "shortNames": [c.PROFILE_SHORT_NAME]},
            "versions": [{
                "name": c.PROFILE_VERSION, "served": True, "storage": True,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "The capacity profile of the lower cluster behind a tensile virtual node, "
                                   "named after it. Written by the virtual node, read by `tensile scheduler`.",
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "status": open_object,
                    },
                }},
            }],
        },
    }


def manifest(node_name: str, node_uid: str, cluster_id: str, status: JSON) -> JSON:
    """The ClusterProfile of virtual node ``node_name``, owned by its Node so it goes with it."""
    meta: JSON = {"name": node_name, "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE,
                                                c.OWNER_NODE_LABEL: node_name}}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    return {"apiVersion": API_VERSION, "kind": c.PROFILE_KIND, "metadata": meta,
            "status": {**status, VIRTUAL_NODE_FIELD: node_name, CLUSTER_ID_FIELD: cluster_id}}
