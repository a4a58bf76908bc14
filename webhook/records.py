"""The descheduler's avoidance records, as the webhook reads them: one filtered watch, a cache lookup.

With ``--avoidance-records`` the webhook follows every ConfigMap labelled
``tensile.io/avoidance=true`` (one list and watch, server-side filtered) and answers, for a
pod being created, which virtual nodes its owner must avoid. The admission path reads only
the cache. Until the cache is synced, or when the apiserver cannot be reached, pods are let
through without avoidance (the webhook never blocks pod creation on it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tensile import avoidance, timestamps
from tensile.kube.client import Kube, path
from tensile.kube.informer import Informer
from tensile.kube.supervisor import Supervisor

log = logging.getLogger("tensile.webhook")

JSON = dict[str, Any]


class AvoidanceRecords:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.informer = Informer(kube, path("configmaps"), label_selector=f"{avoidance.RECORD_LABEL}=true",
                                 name="avoidance-records")

    def start(self, supervisor: Supervisor) -> None:
        self.informer.start(supervisor)

    def avoided(self, pod: JSON, namespace: str) -> Sequence[str]:
        """The virtual nodes a new pod of this owner must avoid now; none for a bare pod."""
        for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
            if isinstance(ref, dict) and ref.get("controller") and ref.get("uid"):
                record = self.informer.get(f"{namespace}/{avoidance.record_name(str(ref['uid']))}")
                return avoidance.active(record, timestamps.utc_now())
        return ()

    async def close(self) -> None:
        await self.kube.close()
