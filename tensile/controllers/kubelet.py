"""The kubelet API's view of this node's pods, from the controllers' caches.

:class:`tensile.kubelet.server.KubeletServer` needs only a few questions answered (which
upper pods are on this node, which lower copy is whose); this adapter answers them from
the informers the pod controller already keeps, so serving logs or stats costs no API
call beyond the relayed one.
"""

from __future__ import annotations

from tensile import conventions as c
from tensile.controllers.context import Context
from tensile.kube.client import JSON
from tensile.kube.informer import meta_of


class ContextPods:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.node_name = ctx.config.node_name
        self.copy_selector = ctx.owner.selector

    def pod(self, namespace: str, name: str) -> JSON | None:
        pod = self.ctx.upper_pods.get(f"{namespace}/{name}")
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return None
        return pod

    def pods(self) -> list[JSON]:
        return [p for p in self.ctx.upper_pods.items() if (p.get("spec") or {}).get("nodeName") == self.node_name]

    def upper_of(self, lower_namespace: str, name: str) -> JSON | None:
        """The upper pod whose copy is lower ``lower_namespace/name``, if it is on this node."""
        lower = self.ctx.lower_pods.get(f"{lower_namespace}/{name}")
        if lower is None:
            return None
        upper_ns, _, upper_name = self.ctx.upper_key(lower).partition("/")
        upper = self.pod(upper_ns, upper_name)
        uid = (meta_of(lower).get("annotations") or {}).get(c.UPPER_UID_ANNOTATION)
        return upper if upper is not None and meta_of(upper).get("uid") == uid else None

    def copy_of(self, upper: JSON) -> JSON | None:
        meta = meta_of(upper)
        lower = self.ctx.lower_pods.get(self.ctx.lower_key(f"{meta.get('namespace')}/{meta.get('name')}"))
        if lower is None or (meta_of(lower).get("annotations") or {}).get(c.UPPER_UID_ANNOTATION) != meta.get("uid"):
            return None
        return lower
