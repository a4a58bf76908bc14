"""Label selectors in kubectl's syntax (``pool=a,zone in (x,y),!spot``) as node-selector requirements. Pure.

``--lower-node-selector`` takes one: the lower nodes it matches are this virtual node's pool. The
same string filters the lower node watch server-side, and :func:`requirements` turns it into the
required node-affinity terms that pin the pool's copies to its nodes.
"""

from __future__ import annotations

import re
from typing import Any

JSON = dict[str, Any]

_KEY = r"(?:[a-z0-9A-Z.\-]+/)?[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?"
_VALUE = r"(?:[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(\s*([^)]*)\)\s*$")
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """The selector does not parse; the message says which part."""


def _split(selector: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {selector!r}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise SelectorError(f"unbalanced '(' in {selector!r}")
    parts.append(current)
    return parts


def requirements(selector: str) -> list[JSON]:
    """``selector`` as NodeSelectorRequirements (all must hold); [] for an empty selector."""
    if not selector.strip():
        return []
    out: list[JSON] = []
    for part in _split(selector):
        if m := _SET.match(part):
            values = [v.strip() for v in m.group(3).split(",") if v.strip()]
            if not values or not all(_VALUE_ONLY.match(v) for v in values):
                raise SelectorError(f"{part.strip()!r}: a set needs one or more label values")
            out.append({"key": m.group(1), "operator": "In" if m.group(2) == "in" else "NotIn",
                        "values": sorted(set(values))})
        elif m := _EQUALITY.match(part):
            out.append({"key": m.group(1), "operator": "NotIn" if m.group(2) == "!=" else "In",
                        "values": [m.group(3)]})
        elif m := _EXISTS.match(part):
            out.append({"key": m.group(2), "operator": "DoesNotExist" if m.group(1) else "Exists"})
        else:
            raise SelectorError(f"{part.strip()!r} is not a label selector requirement "
                                "(key=value, key!=value, key in (a,b), key notin (a,b), key or !key)")
    return out


def matches(reqs: list[JSON], labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy every requirement (as the apiserver and the scheduler decide)."""
    for r in reqs:
        key, op = r["key"], r["operator"]
        if op == "In" and labels.get(key) not in r["values"]:
            return False
        if op == "NotIn" and key in labels and labels[key] in r["values"]:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pinned(spec: JSON, reqs: list[JSON]) -> JSON:
    """``spec`` whose required node affinity also demands ``reqs`` (ANDed into every term).

    Terms are ORed, so each term gets the requirements; a pod without terms gets one term of them.
    """
    if not reqs:
        return spec
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = list(required.get("nodeSelectorTerms") or []) or [{}]
    required["nodeSelectorTerms"] = [
        {**term, "matchExpressions": [*(term.get("matchExpressions") or []),
                                      *(r for r in reqs if r not in (term.get("matchExpressions") or []))]}
        for term in terms
    ]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    affinity["nodeAffinity"] = node_affinity
    return {**spec, "affinity": affinity}
