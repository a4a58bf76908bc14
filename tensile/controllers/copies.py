"""Create, update and delete lower copies, never touching what tensile does not own.

Every controller that puts objects into the lower cluster (dependencies,
Services, EndpointSlices) goes through ``LowerCopies`` so the ownership rule
lives in one place: a lower object without this virtual node's owner labels
is never overwritten or deleted, and the conflict is remembered with a
message the pod controller can show in a Warning Event.
"""

from __future__ import annotations

import logging
from typing import Literal

from tensile import translate
from tensile.controllers.context import GROUP_VERSIONS, Context
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.kube.client import JSON, path
from tensile.kube.errors import ApiError
from tensile.logs import fields

log = logging.getLogger("tensile.copies")

SyncResult = Literal["ok", "missing", "conflict"]
#: Fields the lower apiserver allocated that an update must carry over.
_ALLOCATED_SPEC_FIELDS = {"services": ("clusterIP", "clusterIPs")}


def _path(resource: str, ns: str, name: str | None = None) -> str:
    return path(resource, ns, name, group_version=GROUP_VERSIONS.get(resource, "v1"))


class LowerCopies:
    def __init__(self, ctx: Context, namespaces: NamespaceEnsurer) -> None:
        self.ctx = ctx
        self.namespaces = namespaces
        #: "resource/ns/name" -> message, for lower objects tensile does not own
        self.conflicts: dict[str, str] = {}

    def _log(self, msg: str, resource: str, ns: str, name: str) -> None:
        log.info(msg, extra=fields(f"{ns}/{name}", kind="object", resource=resource,
                                   cluster=self.ctx.config.cluster_id))

    async def apply(self, resource: str, desired: JSON) -> SyncResult:
        """Make the lower object match ``desired`` (a ``translate.lower_*`` result). Idempotent."""
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        # Conflicts are remembered under the upper key, which is how the pod controller asks.
        key = f"{resource}/{self.ctx.upper_key(desired)}"
        lower = self.ctx.lower_deps[resource].get(f"{ns}/{name}")
        if lower is None:
            await self.namespaces.ensure(self.ctx.upper_ns(desired))
            try:
                with self.ctx.metrics.dependency_write(resource, "create"):
                    await self.ctx.lower.create(_path(resource, ns), desired)
                self.conflicts.pop(key, None)
                self._log("created lower copy", resource, ns, name)
                return "ok"
            except ApiError as exc:
                if not exc.already_exists:
                    raise
            lower = await self.ctx.lower.get(_path(resource, ns, name))
        if not self.ctx.owner.owns(lower):
            self.conflicts[key] = (
                f"{resource} {ns}/{name} already exists in the lower cluster and is not managed by this virtual node;"
                " tensile will not overwrite it"
            )
            return "conflict"
        self.conflicts.pop(key, None)
        if not translate.needs_update(resource, desired, lower):
            return "ok"
        resize = translate.pvc_resize_patch(desired, lower) if resource == "persistentvolumeclaims" else None
        if resize is not None:
            with self.ctx.metrics.dependency_write(resource, "update"):
                await self.ctx.lower.patch(_path(resource, ns, name), resize)
            self._log("resized lower copy", resource, ns, name)
            return "ok"
        body = dict(desired)
        body["metadata"] = {**desired["metadata"], "resourceVersion": (lower.get("metadata") or {}).get(
            "resourceVersion")}
        kept = _ALLOCATED_SPEC_FIELDS.get(resource, ())
        if kept:
            lspec = lower.get("spec") or {}
            body["spec"] = {**desired["spec"], **{k: lspec[k] for k in kept if k in lspec}}
        try:
            with self.ctx.metrics.dependency_write(resource, "update"):
                await self.ctx.lower.replace(_path(resource, ns, name), body)
        except ApiError as exc:
            if exc.status == 422 and (lower.get("immutable") or desired.get("immutable")):
                # An immutable ConfigMap/Secret changed upstairs: replace the copy.
                with self.ctx.metrics.dependency_write(resource, "delete"):
                    await self.ctx.lower.delete(_path(resource, ns, name))
                with self.ctx.metrics.dependency_write(resource, "create"):
                    await self.ctx.lower.create(_path(resource, ns), desired)
            else:
                raise
        self._log("updated lower copy", resource, ns, name)
        return "ok"

    async def collect(self, resource: str, upper_ns: str, name: str) -> None:
        """Delete our lower copy of upper ``upper_ns/name``, if there is one; a foreign object is left alone."""
        ns = self.ctx.lower_ns(upper_ns)
        lower = self.ctx.lower_deps[resource].get(f"{ns}/{name}")
        if lower is None or not self.ctx.owner.owns(lower):
            return
        try:
            with self.ctx.metrics.dependency_write(resource, "delete"):
                await self.ctx.lower.delete(_path(resource, ns, name), {
                    "preconditions": {"uid": (lower.get("metadata") or {}).get("uid")}
                })
            self._log("deleted lower copy nothing needs any more", resource, ns, name)
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise
