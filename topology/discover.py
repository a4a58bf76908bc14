"""Read the mesh off the given clusters: who they are, their virtual nodes, what went through them.

Each cluster is named by its kubeconfig's current context and identified by the UID of its
kube-system namespace, the identity every virtual node records (``tensile.io/lower-cluster`` on
the Node, ``tensile.io/upper-cluster`` on lower copies). A virtual node that predates that label is
matched by its ``clusterID`` label, which is the lower UID unless the operator chose a name.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from tensile import conventions as c
from tensile import translate
from topology.graph import Cluster, Facts, VirtualNode

JSON = dict[str, Any]


class DiscoveryError(Exception):
    """A cluster could not be read; the message names it and why."""


@dataclasses.dataclass
class Seen:
    """One cluster as read: its identity, nodes and the copies it holds for virtual nodes elsewhere."""

    kubeconfig: str
    name: str
    uid: str
    nodes: list[JSON]
    #: (upper cluster uid, virtual node name) -> copies here
    copies: Counter[tuple[str, str]]
    #: virtual node name -> upper pods bound to it here
    placed: Counter[str]


def _items(raw: Any) -> list[JSON]:
    return list(json.loads(raw.data).get("items") or [])


def read(kubeconfig: str, timeout: float = 15.0) -> Seen:
    loader: Any = kube_config  # untyped
    try:
        _, current = loader.list_kube_config_contexts(config_file=kubeconfig)
        api_client = loader.new_client_from_config(config_file=kubeconfig)
    except (OSError, kube_config.ConfigException, ValueError) as exc:
        raise DiscoveryError(f"{kubeconfig}: not a usable kubeconfig: {exc}") from exc
    name = str((current or {}).get("name") or kubeconfig)
    core: Any = client.CoreV1Api(api_client)  # returns raw responses with _preload_content=False
    try:
        ns = json.loads(core.read_namespace(c.KUBE_SYSTEM, _preload_content=False,
                                            _request_timeout=timeout).data)
        nodes = _items(core.list_node(_preload_content=False, _request_timeout=timeout))
        virtual = [n for n in nodes if translate.is_virtual_node(n)]
        placed: Counter[str] = Counter()
        for vn in virtual:
            vname = vn["metadata"]["name"]
            pods = _items(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={vname}",
                                                          _preload_content=False, _request_timeout=timeout))
            placed[vname] = sum(1 for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        copies: Counter[tuple[str, str]] = Counter()
        for pod in _items(core.list_pod_for_all_namespaces(label_selector=c.OWNER_CLUSTER_LABEL,
                                                           _preload_content=False, _request_timeout=timeout)):
            labels = (pod.get("metadata") or {}).get("labels") or {}
            copies[(str(labels.get(c.OWNER_CLUSTER_LABEL)), str(labels.get(c.OWNER_NODE_LABEL)))] += 1
    except (client.ApiException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DiscoveryError(f"{kubeconfig} (context {name}): cannot read the cluster: {reason}") from exc
    finally:
        api_client.close()
    return Seen(kubeconfig, name, str(ns["metadata"]["uid"]), nodes, copies, placed)


def _ready(node: JSON) -> bool:
    return any(cond.get("type") == "Ready" and cond.get("status") == "True"
               for cond in (node.get("status") or {}).get("conditions") or [])


def facts(seen: list[Seen]) -> Facts:
    """The graph's facts from what each cluster showed; names made unique where contexts share one."""
    out = Facts()
    names: Counter[str] = Counter(s.name for s in seen)
    by_uid = {s.uid: s for s in seen}
    used: Counter[str] = Counter()
    for s in seen:
        name = s.name
        if names[name] > 1:
            used[name] += 1
            name = f"{name}#{used[name]}"
        real = sum(1 for n in s.nodes if not translate.is_virtual_node(n))
        out.clusters.append(Cluster(s.uid, name, real))
    uids = set(by_uid)
    for s in seen:
        for node in s.nodes:
            if not translate.is_virtual_node(node):
                continue
            meta = node.get("metadata") or {}
            labels = meta.get("labels") or {}
            lower = str(labels.get(c.LOWER_CLUSTER_LABEL) or "")
            if not lower and labels.get(c.CLUSTER_ID_LABEL) in uids:
                lower = str(labels[c.CLUSTER_ID_LABEL])
            vname = str(meta.get("name"))
            target = by_uid.get(lower)
            copies = target.copies.get((s.uid, vname), 0) if target is not None else -1
            out.virtual_nodes.append(VirtualNode(vname, s.uid, lower, _ready(node), s.placed.get(vname, 0), copies))
    return out
