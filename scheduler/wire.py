"""The kube-scheduler extender protocol, on plain dicts.

kube-scheduler POSTs ``ExtenderArgs`` (``k8s.io/kube-scheduler/extender/v1``) to ``<urlPrefix>/<verb>``
and decodes the answer with Go's ``encoding/json``. The types carry no JSON tags, so the wire names
are the Go field names, capitalised:

- ``ExtenderArgs``: ``{"Pod": v1.Pod, "Nodes": v1.NodeList | null, "NodeNames": [string] | null}``;
  ``NodeNames`` is set instead of ``Nodes`` when the extender is ``nodeCacheCapable``;
- ``ExtenderFilterResult``: ``{"Nodes", "NodeNames", "FailedNodes": {name: reason},
  "FailedAndUnresolvableNodes": {name: reason}, "Error": string}``. The answer must use the same
  form as the request: names for names, Node objects for Node objects;
- ``HostPriorityList``: ``[{"Host": name, "Score": 0..10}]``.

:func:`parse_args` turns a request body into :class:`Args` or raises :class:`BadRequest` with a
message fit for a 400: nothing a client sends can raise anything else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

JSONObject = dict[str, Any]

#: ``extenderv1.MaxExtenderPriority``.
MAX_PRIORITY = 10


class BadRequest(ValueError):
    """The body is not ``ExtenderArgs``: answered with a 400 and this message."""


@dataclasses.dataclass(frozen=True)
class Args:
    pod: JSONObject
    #: Candidate node names, in the order given.
    names: list[str]
    #: The Node objects when the scheduler sent them (not nodeCacheCapable), by name.
    nodes: dict[str, JSONObject] | None

    @property
    def by_name(self) -> bool:
        return self.nodes is None


def _object(value: Any, what: str) -> JSONObject:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def parse_args(body: bytes) -> Args:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    args = _object(raw, "ExtenderArgs")
    pod = _object(args.get("Pod"), "ExtenderArgs.Pod")
    for field in ("metadata", "spec"):
        if pod.get(field) is not None:
            _object(pod[field], f"Pod.{field}")
    names_raw = args.get("NodeNames")
    nodes_raw = args.get("Nodes")
    if names_raw is not None:
        if not isinstance(names_raw, list) or not all(isinstance(n, str) for n in names_raw):
            raise BadRequest("ExtenderArgs.NodeNames must be an array of strings")
        return Args(pod, list(names_raw), None)
    if nodes_raw is None:
        raise BadRequest("ExtenderArgs has neither NodeNames nor Nodes")
    items = _object(nodes_raw, "ExtenderArgs.Nodes").get("items") or []
    if not isinstance(items, list):
        raise BadRequest("ExtenderArgs.Nodes.items must be an array")
    nodes: dict[str, JSONObject] = {}
    for i, item in enumerate(items):
        node = _object(item, f"ExtenderArgs.Nodes.items[{i}]")
        name = _object(node.get("metadata") or {}, f"Nodes.items[{i}].metadata").get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"ExtenderArgs.Nodes.items[{i}] has no metadata.name")
        nodes[name] = node
    return Args(pod, list(nodes), nodes)


def filter_result(args: Args, passed: list[str], failed: dict[str, str], unresolvable: dict[str, str],
                  error: str = "") -> bytes:
    result: JSONObject = {"FailedNodes": failed, "FailedAndUnresolvableNodes": unresolvable, "Error": error}
    if args.nodes is None:
        result["NodeNames"], result["Nodes"] = passed, None
    else:
        result["Nodes"], result["NodeNames"] = {"items": [args.nodes[n] for n in passed]}, None
    return orjson.dumps(result)


def priority_list(scores: dict[str, int]) -> bytes:
    return orjson.dumps([{"Host": host, "Score": score} for host, score in scores.items()])
