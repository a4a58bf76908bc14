"""Origin chains: which clusters a pod came through, so no pod goes round a ring of clusters. Pure.

Every lower copy records the clusters it came through, oldest first, as kube-system UIDs: the
chain of the pod it copies (none for a pod a user created) plus the upper cluster and the lower
cluster. Every virtual node says which cluster it leads to (``tensile.io/lower-cluster``). A
virtual node whose cluster is in a pod's chain is never a place for that pod: the virtual node
refuses to copy it, the webhook keeps it off such nodes with a required node-affinity term, and
the scheduler extender filters them out with the reason. A ring A -> B -> C -> A is then safe:
a pod from A may go to B and on to C, but never back to A or B.
"""

from __future__ import annotations

from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]
#: A label value (the node-affinity term names the chain's UIDs as values) is at most 63 characters
#: and a UID 36; no real mesh is deeper than this, and a longer chain is cut to its newest entries.
MAX_LENGTH = 32


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` when ``obj`` is a JSON object; None for anything else (malformed input never raises)."""
    return obj.get(key) if isinstance(obj, dict) else None


def chain_of(pod: JSON) -> list[str]:
    """The pod's origin chain; [] for a pod a user created (or one whose annotation is garbage)."""
    raw = _field(_field(_field(pod, "metadata"), "annotations"), c.ORIGIN_CHAIN_ANNOTATION)
    if not isinstance(raw, str):
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]


def extended(chain: list[str], upper_cluster: str, lower_cluster: str) -> list[str]:
    """The chain of a copy made from a pod with ``chain``, in ``upper_cluster``, into ``lower_cluster``."""
    out = list(chain)
    for cluster in (upper_cluster, lower_cluster):
        if cluster and (not out or out[-1] != cluster):
            out.append(cluster)
    return out[-MAX_LENGTH:]


def encode(chain: list[str]) -> str:
    return ",".join(chain)


def lower_cluster_of(node: JSON) -> str:
    """The cluster a virtual node leads to; "" for a real node or a virtual node that does not say."""
    value = _field(_field(_field(node, "metadata"), "labels"), c.LOWER_CLUSTER_LABEL)
    return value if isinstance(value, str) else ""


def loop_reason(pod: JSON, node: JSON) -> str | None:
    """Why ``pod`` must not go to ``node``: it would go back to a cluster it came through. None: it may."""
    return refusal(pod, str(_field(_field(node, "metadata"), "name") or ""), lower_cluster_of(node))


def refusal(pod: JSON, node_name: str, target: str) -> str | None:
    """:func:`loop_reason` for virtual node ``node_name`` leading to cluster ``target`` ("": nowhere known)."""
    chain = chain_of(pod)
    if not target or target not in chain:
        return None
    return (f"virtual node {node_name} leads to cluster {target}, which the pod already came through "
            f"(origin chain {' > '.join(chain)}); placing it there would send it round a loop")


def affinity_requirement(chain: list[str]) -> JSON:
    """The node-selector requirement that keeps a pod with ``chain`` off every virtual node leading into it."""
    return {"key": c.LOWER_CLUSTER_LABEL, "operator": "NotIn", "values": sorted(set(chain))}


def is_loop_requirement(requirement: JSON) -> bool:
    return bool(requirement.get("key") == c.LOWER_CLUSTER_LABEL and requirement.get("operator") == "NotIn")
