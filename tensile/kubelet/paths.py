"""The kubelet API's routes, query parameters and authorization attributes. Pure.

The upper apiserver calls a node's kubelet on paths of its own (``/containerLogs``,
``/exec``, ``/attach``, ``/portForward``) with query parameters of its own (``input``,
``output``, ``error`` for exec), not with the apiserver's subresource names. This
module turns one into the other for the lower cluster's ``pods/log``, ``pods/exec``,
``pods/attach`` and ``pods/portforward`` subresources, and says which ``nodes/*``
subresource a request needs, exactly as the kubelet's own authorizer does, so RBAC
written for kubelets (``system:kubelet-api-admin``, ``nodes/proxy``, ``nodes/stats``)
means the same here.

Nothing here raises on bad input: a path that is not a kubelet route gives ``None``
and a value that is not an integer is left for the lower apiserver to refuse with its
own 400, which is relayed word for word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Final

LOGS: Final = "containerLogs"
EXEC: Final = "exec"
ATTACH: Final = "attach"
PORT_FORWARD: Final = "portForward"
#: Routes whose HTTP request is upgraded to a stream protocol (SPDY/3.1, WebSocket).
STREAMING: Final = frozenset({EXEC, ATTACH, PORT_FORWARD})
#: The lower apiserver's pod subresource for each kubelet route.
SUBRESOURCE: Final = {LOGS: "log", EXEC: "exec", ATTACH: "attach", PORT_FORWARD: "portforward"}

#: The kubelet's log query parameters; the apiserver's ``pods/log`` takes the same names.
LOG_PARAMS: Final = ("follow", "previous", "sinceSeconds", "sinceTime", "timestamps", "tailLines",
                     "limitBytes", "stream")
#: kubelet stream flags (``1`` when set) and the apiserver's names for them.
STREAM_FLAGS: Final = {"input": "stdin", "output": "stdout", "error": "stderr", "tty": "tty"}

#: HTTP method to authorization verb, as the kubelet maps them.
VERBS: Final = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One pod-scoped kubelet request: which route, pod and container."""

    route: str
    namespace: str
    pod: str
    container: str = ""
    #: The pod's UID when the path carries one (``/exec/ns/pod/UID/container``).
    uid: str = ""


def _segments(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def parse(path: str) -> Target | None:
    """The pod-scoped route ``path`` names, or None when it names none."""
    parts = _segments(path)
    if not parts or parts[0] not in SUBRESOURCE or any(p in (".", "..") for p in parts):
        return None
    route, rest = parts[0], parts[1:]
    if route == PORT_FORWARD:
        if len(rest) == 2:
            return Target(route, rest[0], rest[1])
        if len(rest) == 3:
            return Target(route, rest[0], rest[1], uid=rest[2])
        return None
    if route == LOGS:
        return Target(route, *rest) if len(rest) == 3 else None
    if len(rest) == 3:
        return Target(route, rest[0], rest[1], container=rest[2])
    if len(rest) == 4:
        return Target(route, rest[0], rest[1], uid=rest[2], container=rest[3])
    return None


Query = list[tuple[str, str]]


def _first(query: Iterable[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in query if key == name), None)


def lower_query(target: Target, query: Query) -> Query:
    """The lower subresource's query for a kubelet request's ``query``."""
    out: Query = []
    if target.container:
        out.append(("container", target.container))
    if target.route == LOGS:
        out += [(key, value) for key, value in query if key in LOG_PARAMS]
    elif target.route == PORT_FORWARD:
        out += [("ports", value) for key, value in query if key in ("port", "ports")]
    else:
        if target.route == EXEC:
            out += [("command", value) for key, value in query if key == "command"]
        for kubelet_name, api_name in STREAM_FLAGS.items():
            value = _first(query, kubelet_name) or _first(query, api_name)
            if value is not None:
                out.append((api_name, "true" if value.lower() in ("1", "true") else "false"))
    return out


def verb(method: str) -> str:
    """The authorization verb of an HTTP method; unknown methods are refused as ``unknown``."""
    return VERBS.get(method.upper(), "unknown")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def subresources(path: str) -> tuple[str, ...]:
    """The ``nodes/*`` subresources that may authorize ``path``, first match wins.

    As the kubelet does (with fine-grained authorization, on by default since 1.33):
    ``/stats`` needs ``nodes/stats``, ``/metrics`` ``nodes/metrics``, ``/logs`` ``nodes/log``;
    ``/pods`` and ``/healthz`` accept ``nodes/pods`` or ``nodes/healthz`` and fall back to
    ``nodes/proxy``; everything else (logs of containers, exec, port-forward) is ``nodes/proxy``.
    """
    clean = "/" + "/".join(_segments(path))
    for prefix, sub in (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"),
                        ("/checkpoint", "checkpoint")):
        if _under(clean, prefix):
            return (sub,)
    for prefix, sub in (("/pods", "pods"), ("/runningpods", "pods"), ("/healthz", "healthz"),
                        ("/configz", "configz")):
        if _under(clean, prefix):
            return (sub, "proxy")
    return ("proxy",)
