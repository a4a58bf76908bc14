"""Node shapes as users write them: ``3x cpu=8,memory=32Gi,labels=zone=a;disk=ssd``. Pure.

``[Nx] KEY=VALUE[,KEY=VALUE...]``, where KEY is ``cpu``, ``memory``, ``pods``, ``arch``,
``labels`` (``k=v`` pairs joined by ``;``), ``taints`` (``key=value:Effect`` joined by ``;``) or an
extended resource name with a ``/`` (``nvidia.com/gpu=4``). A count alone (``2x``) is that many
nodes of the default shape. Names are ``<cluster>-<index>``, counted across every spec given.
"""

from __future__ import annotations

import re

from e2e.kwok import NodeSpec

_COUNT = re.compile(r"^\s*(\d+)\s*x\s*(.*)$")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DEFAULT_UPPER_NODES = "1x cpu=4,memory=8Gi"
DEFAULT_LOWER_NODES = "2x cpu=8,memory=32Gi"


class NodeSpecError(ValueError):
    """A node spec that does not parse; the message names the part."""


def _pairs(value: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in value.split(";"))):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise NodeSpecError(f"{what} {item!r}: expected key=value")
        out[key] = val
    return out


def _taints(value: str) -> list[dict[str, str]]:
    taints = []
    for key, rest in _pairs(value, "taint").items():
        val, sep, effect = rest.rpartition(":")
        if not sep or effect not in EFFECTS:
            raise NodeSpecError(f"taint {key}={rest!r}: expected key=value:Effect, Effect one of {', '.join(EFFECTS)}")
        taints.append({"key": key, "value": val, "effect": effect})
    return taints


def parse(spec: str, cluster: str, first_index: int = 0) -> list[NodeSpec]:
    """The nodes ``spec`` describes for ``cluster``, named from ``<cluster>-<first_index>`` on."""
    count, body = 1, spec
    if m := _COUNT.match(spec):
        count, body = int(m.group(1)), m.group(2)
        if count < 1:
            raise NodeSpecError(f"{spec!r}: the count must be at least 1")
    fields: dict[str, object] = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise NodeSpecError(f"{item!r} in {spec!r}: expected key=value")
        if key in ("cpu", "memory", "pods", "arch"):
            fields[key] = value
        elif key == "labels":
            fields["labels"] = _pairs(value, "label")
        elif key == "taints":
            fields["taints"] = _taints(value)
        elif "/" in key:
            extended = fields.setdefault("extended", {})
            assert isinstance(extended, dict)
            extended[key] = value
        else:
            raise NodeSpecError(f"unknown key {key!r} in {spec!r} (cpu, memory, pods, arch, labels, taints, "
                                "or an extended resource such as nvidia.com/gpu)")
    return [NodeSpec(f"{cluster}-{first_index + i}", **fields) for i in range(count)]  # type: ignore[arg-type]


def parse_all(specs: list[str], cluster: str, default: str) -> list[NodeSpec]:
    """Every node of ``specs`` (``default`` when none is given), numbered across them."""
    nodes: list[NodeSpec] = []
    for spec in specs or [default]:
        nodes += parse(spec, cluster, len(nodes))
    return nodes
