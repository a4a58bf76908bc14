"""Avoidance records: which virtual nodes the pods of one owner must avoid, and until when. Pure.

When the descheduler evicts a controller-owned pod from a virtual node that could not
start it, the replacement must not land there again for the cooldown. The record is a
ConfigMap in the pod's namespace, one per owner (``tensile-avoid-<owner uid>``), labelled
:data:`RECORD_LABEL` so a webhook can follow all of them with one filtered watch, and owned
by the owner, so it goes when the owner goes. Its ``avoid`` key maps a virtual node to the
RFC 3339 time its avoidance expires. The webhook (and a bare pod's recreation) turn it
into a required ``kubernetes.io/hostname NotIn [...]`` node-affinity requirement, added to
every term of the pod's own required node affinity, so nothing the pod asked for is lost.

Its ``present`` key maps each avoided node to the UIDs of the owner's pods that were already
bound there when the avoidance began. Those pods did not "come back" to the node: they are the
pod being moved and its siblings, and the descheduler may still move them (after a restart that
interrupted a move between the record and the eviction, too). A pod of the owner not listed is a
replacement that landed on the node again, and is left alone for the cooldown.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from tensile import conventions as c
from tensile import timestamps

JSON = dict[str, Any]

RECORD_LABEL = c.PREFIX + "avoidance"
RECORD_PREFIX = "tensile-avoid-"
AVOID_KEY = "avoid"
OWNER_KEY = "owner"
PRESENT_KEY = "present"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def record_name(owner_uid: str) -> str:
    return (RECORD_PREFIX + owner_uid)[:253]


def parse(record: JSON | None) -> dict[str, datetime.datetime]:
    """Virtual node -> expiry; entries that do not parse are dropped, never fatal."""
    raw = ((record or {}).get("data") or {}).get(AVOID_KEY)
    try:
        entries = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    if not isinstance(entries, dict):
        return {}
    out = {}
    for node, expiry in entries.items():
        when = timestamps.parse(expiry)
        if isinstance(node, str) and node and when is not None:
            out[node] = when
    return out


def active(record: JSON | None, now: datetime.datetime) -> list[str]:
    """The virtual nodes still avoided at ``now``, sorted."""
    return sorted(node for node, expiry in parse(record).items() if expiry > now)


def with_node(record: JSON | None, node: str, until: datetime.datetime, now: datetime.datetime) -> dict[str, str]:
    """The ``avoid`` entries after adding ``node`` until ``until``; expired ones are dropped."""
    entries = {n: e for n, e in parse(record).items() if e > now}
    entries[node] = max(until, entries.get(node, until))
    return {n: timestamps.rfc3339(e) for n, e in sorted(entries.items())}


def present(record: JSON | None, node: str) -> frozenset[str]:
    """UIDs of the owner's pods already on ``node`` when its avoidance began (none when unknown)."""
    raw = ((record or {}).get("data") or {}).get(PRESENT_KEY)
    try:
        entries = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return frozenset()
    uids = entries.get(node) if isinstance(entries, dict) else None
    return frozenset(u for u in uids if isinstance(u, str) and u) if isinstance(uids, list) else frozenset()


def with_present(record: JSON | None, node: str, uids: Iterable[str], now: datetime.datetime) -> dict[str, list[str]]:
    """The ``present`` entries when a pod is moved away from ``node`` and ``uids`` are the owner's pods there.

    Only the start of an avoidance records them: while it lasts, the list stays as it was, since a
    pod that arrived in between (a replacement of a pod moved earlier) came back and must not be
    listed. Nodes no longer avoided are dropped.
    """
    avoided = set(active(record, now))
    entries = {n: sorted(present(record, n)) for n in avoided}
    entries = {n: u for n, u in entries.items() if u}
    if node not in avoided:
        entries[node] = sorted({u for u in uids if u})
    return dict(sorted(entries.items()))


def manifest(namespace: str, owner: Mapping[str, Any], entries: Mapping[str, str],
             present_uids: Mapping[str, list[str]] | None = None) -> JSON:
    """The record ConfigMap for the controller ``owner`` (an ownerReference of the pod)."""
    uid = str(owner.get("uid", ""))
    data = {AVOID_KEY: json.dumps(dict(entries), sort_keys=True),
            OWNER_KEY: f"{owner.get('kind', '')}/{owner.get('name', '')}"}
    if present_uids is not None:
        data[PRESENT_KEY] = json.dumps(dict(present_uids), sort_keys=True)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": record_name(uid), "namespace": namespace,
            "labels": {RECORD_LABEL: "true", c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE},
            "ownerReferences": [{k: owner[k] for k in ("apiVersion", "kind", "name", "uid") if k in owner}],
        },
        "data": data,
    }


def is_avoidance(requirement: Any) -> bool:
    """A ``kubernetes.io/hostname NotIn [...]`` requirement: it excludes nodes by name, virtual ones
    included, so it means the same upstairs and downstairs and the webhook keeps it upstairs."""
    return (isinstance(requirement, dict) and requirement.get("key") == c.HOSTNAME_LABEL
            and requirement.get("operator") == "NotIn")


def _requirement(nodes: list[str]) -> JSON:
    return {"key": c.HOSTNAME_LABEL, "operator": "NotIn", "values": nodes}


def _covers(term: JSON, nodes: Iterable[str]) -> bool:
    want = set(nodes)
    for expr in term.get("matchExpressions") or []:
        if (isinstance(expr, dict) and expr.get("key") == c.HOSTNAME_LABEL and expr.get("operator") == "NotIn"
                and want <= set(expr.get("values") or [])):
            return True
    return False


def avoiding(spec: JSON, nodes: Iterable[str]) -> JSON:
    """``spec`` whose required node affinity also excludes ``nodes``: a new dict, ``spec`` untouched.

    The requirement is added to every existing term (terms are ORed, so each must exclude the
    nodes); a pod without required node affinity gets one term. Preferred terms, pod
    (anti-)affinity and everything else are kept as they are. Already covered: unchanged.
    """
    wanted = sorted(set(nodes))
    if not wanted:
        return spec
    out = copy.deepcopy(spec)
    affinity = out.setdefault("affinity", {}) or {}
    out["affinity"] = affinity
    node_affinity = affinity.setdefault("nodeAffinity", {}) or {}
    affinity["nodeAffinity"] = node_affinity
    required = node_affinity.get(REQUIRED) or {}
    terms = [t for t in required.get("nodeSelectorTerms") or [] if isinstance(t, dict)]
    if not terms:
        terms = [{}]
    for term in terms:
        if not _covers(term, wanted):
            term["matchExpressions"] = [*(term.get("matchExpressions") or []), _requirement(wanted)]
    node_affinity[REQUIRED] = {**required, "nodeSelectorTerms": terms}
    return out
