"""Requests of the lower cluster's active pods, summed per lower node and kept up to date.

The node's allocatable (:func:`tensile.capacity.compute_from`) and the capacity profile
(:func:`tensile.profile.build_from`) both need, per lower node, the requests of the pods on it.
Summing every pod again on each change costs O(pods) per pass: 5,000 pods, a pass every couple of
seconds, during a burst in which every pod changes. :class:`Usage` is fed the pod cache's events
instead and keeps the sums, so a pass costs O(nodes).

Each pod's contribution is remembered by its key and taken back before the new one is added, so
the sums stay exact whatever the events (a delete for a pod never seen, a relist, a resync that
repeats an object) and never go negative. Amounts are the exact ``Fraction`` requests for the
node's allocatable and scheduler units for the profile, as the full passes compute them.

Pure: plain dicts in, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tensile import capacity, quantity
from tensile.quantity import ResourceList

JSON = dict[str, Any]


class Usage:
    """Per lower node: the requests of all active pods (units) and of the ones tensile did not create (exact)."""

    def __init__(self, created_by_us: Callable[[JSON], bool]) -> None:
        self.created_by_us = created_by_us
        #: node -> resource -> scheduler units, every active pod (the profile's "used").
        self.units: dict[str, dict[str, int]] = {}
        #: node -> resource -> exact amount, active pods tensile did not create (the allocatable's).
        self.foreign: dict[str, ResourceList] = {}
        #: node -> how many pods each map above holds there, to drop a node's entry at zero.
        self._counts: dict[str, list[int]] = {}
        #: pod key -> (node, units, exact requests or None when it is ours): what was added.
        self._added: dict[str, tuple[str, Mapping[str, int], ResourceList | None]] = {}

    def __len__(self) -> int:
        return len(self._added)

    def handler(self, source: str) -> Callable[[JSON | None, JSON | None], None]:
        """:meth:`on_pod` for the informer named ``source``."""
        return lambda old, new: self.on_pod(old, new, source)

    def on_pod(self, old: JSON | None, new: JSON | None, source: str = "") -> None:
        """An informer handler: ``(None, pod)`` add, ``(pod, pod)`` update, ``(pod, None)`` delete.

        Pods come from several caches (tensile's copies, everyone else's pods), each with its own
        watch. A pod whose labels move it from one to the other may be added by one before the other
        deletes it: contributions are kept by cache, so the late delete takes back only its own.
        """
        pod = new if new is not None else old
        if pod is None:
            return
        key = f"{source}:{_key(pod)}"
        self._take_back(key)
        if new is None:
            return
        node = (new.get("spec") or {}).get("nodeName")
        if not node or not capacity.pod_is_active(new):
            return
        requests = None if self.created_by_us(new) else capacity.requests_of(new)
        units = capacity.request_units_of(new)
        self._added[key] = (node, units, requests)
        counts = self._counts.setdefault(node, [0, 0])
        on_node = self.units.setdefault(node, {})
        for resource, amount in units.items():
            on_node[resource] = on_node.get(resource, 0) + amount
        counts[0] += 1
        if requests is not None:
            quantity.add_into(self.foreign.setdefault(node, {}), requests)
            counts[1] += 1

    def _take_back(self, key: str) -> None:
        added = self._added.pop(key, None)
        if added is None:
            return
        node, units, requests = added
        counts = self._counts[node]
        on_node = self.units[node]
        for resource, amount in units.items():
            on_node[resource] -= amount
        counts[0] -= 1
        if requests is not None:
            foreign = self.foreign[node]
            for resource, value in requests.items():
                foreign[resource] -= value
            counts[1] -= 1
            if counts[1] == 0:
                del self.foreign[node]
        if counts[0] == 0:
            del self.units[node], self._counts[node]


def _key(pod: JSON) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"

