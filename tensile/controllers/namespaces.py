"""Lower namespaces: created on first use, marked as tensile's, never deleted.

A namespace may hold pods of several virtual nodes and upper clusters, and
objects that are not tensile's, so tensile creates a missing one but never
removes it.

The answer "does it exist" comes from a watch of the lower namespaces, not
from a time-limited memo: a namespace deleted out of band is seen at once, so
every kind of copy in it (pods, ConfigMaps, Secrets, PVCs, Services) is made
again as soon as the namespace is gone, instead of after the memo expires.
"""

from __future__ import annotations

from tensile import translate
from tensile.kube.client import Kube, path
from tensile.kube.errors import ApiError
from tensile.kube.informer import Informer


class NamespaceTerminatingError(Exception):
    """The lower namespace is being deleted; copies can be made again once it is gone."""


class NamespaceEnsurer:
    def __init__(self, lower: Kube, owner: translate.Owner, namespaces: Informer) -> None:
        self.lower = lower
        self.owner = owner
        self.namespaces = namespaces

    async def ensure(self, upper_namespace: str) -> None:
        """Make sure the lower namespace of ``upper_namespace`` exists (named by the owner's mapping).

        Raises ``NamespaceTerminatingError`` while it is deleted.
        """
        name = self.owner.namespaces.lower(upper_namespace)
        current = self.namespaces.get(name)
        if current is not None:
            if (current.get("metadata") or {}).get("deletionTimestamp"):
                raise NamespaceTerminatingError(f"lower namespace {name} is being deleted; waiting until it is gone")
            return
        try:
            await self.lower.create(path("namespaces"), translate.lower_namespace(upper_namespace, self.owner))
        except ApiError as exc:
            if exc.already_exists and not is_terminating_error(exc):
                return  # the cache lags, or someone else was faster
            if is_terminating_error(exc):
                raise NamespaceTerminatingError(
                    f"lower namespace {name} is being deleted; waiting until it is gone") from exc
            raise


def is_terminating_error(exc: ApiError) -> bool:
    """The apiserver refused a write because the namespace is being deleted."""
    return exc.status in (403, 409) and ("being terminated" in exc.message or "being deleted" in exc.message)
