"""What the virtual node offers: the lower cluster's free capacity as one node.

capacity    = sum of ``allocatable`` over Ready, schedulable lower nodes
allocatable = capacity - requests of lower pods tensile did not create

Pods tensile created are left out of the subtraction because the upper
scheduler already accounts for them as pods bound to the virtual node;
counting them twice would halve the node. Every resource is clamped at zero
(Tensile Kube's issue #91: a node registered with ``-20Gi`` is rejected).

Pod requests follow the Kubernetes rules (``resourcehelper.PodRequests``):
the larger of (sum of app containers + restartable "sidecar" init
containers) and (each classic init container plus the sidecars started
before it), plus ``spec.overhead``; a running pod whose status reports
resized ``allocatedResources`` is not modelled (requests are used).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

from tensile import quantity
from tensile.quantity import ResourceList

JSON = dict[str, Any]

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
#: Keys under which :func:`shrink_pod` keeps parsed requests, exact and in scheduler units (not API fields).
_REQUESTS = "_requests"
_UNITS = "_units"


def node_is_usable(node: JSON) -> bool:
    """Ready and schedulable: the lower scheduler may place pods there."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and taint.get("key") in (
            "node.kubernetes.io/unschedulable", "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
        ):
            return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def container_requests(container: JSON) -> ResourceList:
    resources = container.get("resources") or {}
    requests = quantity.parse_list(resources.get("requests"))
    # A limit with no request defaults the request to the limit.
    for name, value in quantity.parse_list(resources.get("limits")).items():
        requests.setdefault(name, value)
    return requests


def pod_requests(pod: JSON) -> ResourceList:
    spec = pod.get("spec") or {}
    app: ResourceList = {}
    for c in spec.get("containers") or []:
        app = quantity.add(app, container_requests(c))
    sidecars: ResourceList = {}
    init_peak: ResourceList = {}
    for c in spec.get("initContainers") or []:
        req = container_requests(c)
        if c.get("restartPolicy") == "Always":
            sidecars = quantity.add(sidecars, req)
            init_peak = quantity.maximum(init_peak, sidecars)
        else:
            init_peak = quantity.maximum(init_peak, quantity.add(req, sidecars))
    total = quantity.maximum(quantity.add(app, sidecars), init_peak)
    total = quantity.add(total, quantity.parse_list(spec.get("overhead")))
    total["pods"] = total.get("pods", Fraction(0)) + 1
    return total


def requests_of(pod: JSON) -> ResourceList:
    """The pod's requests, parsed once by :func:`shrink_pod` when the cache stored it."""
    cached = pod.get(_REQUESTS)
    return cached if cached is not None else pod_requests(pod)


def request_units_of(pod: JSON) -> dict[str, int]:
    """The pod's requests in scheduler units (:func:`tensile.quantity.units`), cached like :func:`requests_of`."""
    cached = pod.get(_UNITS)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    return {r: quantity.units(r, v) for r, v in requests_of(pod).items()}


def pod_is_active(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def compute(
    nodes: Iterable[JSON],
    pods: Iterable[JSON],
    created_by_us: Callable[[JSON], bool],
) -> tuple[ResourceList, ResourceList]:
    """Return (capacity, allocatable) of the virtual node, never negative: a full pass over ``pods``."""
    used: dict[str, ResourceList] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and pod_is_active(pod) and not created_by_us(pod):
            quantity.add_into(used.setdefault(node_name, {}), requests_of(pod))
    return compute_from(nodes, used)


def compute_from(nodes: Iterable[JSON], used: Mapping[str, ResourceList]) -> tuple[ResourceList, ResourceList]:
    """:func:`compute` from the requests of the pods tensile did not create, summed per lower node
    (:class:`tensile.usage.Usage` keeps them): O(nodes), whatever the number of pods."""
    capacity: ResourceList = {}
    taken: ResourceList = {}
    for node in nodes:
        if not node_is_usable(node):
            continue
        quantity.add_into(capacity, quantity.parse_list((node.get("status") or {}).get("allocatable")))
        on_node = used.get((node.get("metadata") or {}).get("name", ""))
        if on_node:
            quantity.add_into(taken, on_node)
    allocatable = {k: max(Fraction(0), v - taken.get(k, Fraction(0))) for k, v in capacity.items()}
    capacity = {k: max(Fraction(0), v) for k, v in capacity.items()}
    return capacity, allocatable


def node_labels_majority(nodes: Iterable[JSON], label: str, default: str) -> str:
    """The most common value of ``label`` among usable lower nodes (e.g. arch, os)."""
    counts = Counter(
        ((n.get("metadata") or {}).get("labels") or {}).get(label) for n in nodes if node_is_usable(n)
    )
    counts.pop(None, None)
    return str(counts.most_common(1)[0][0]) if counts else default


def shrink_pod(pod: JSON) -> JSON:
    """Keep only what capacity needs, so a 10k-pod lower cache stays small.

    Requests are parsed here, once per watch event, instead of on every
    capacity computation (1 s per pass at 10k pods otherwise).
    """
    meta = pod.get("metadata") or {}
    requests = pod_requests(pod)
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "labels": meta.get("labels") or {}},
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {"phase": (pod.get("status") or {}).get("phase")},
        _REQUESTS: requests,
        _UNITS: {r: quantity.units(r, v) for r, v in requests.items()},
    }
