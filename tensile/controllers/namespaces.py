"""Lower namespaces: created on first use, marked as tensile's, never deleted.

A namespace may hold pods of several virtual nodes and upper clusters, and
objects that are not tensile's, so tensile creates a missing one but never
removes it.
"""

from __future__ import annotations

from cachetools import TTLCache

from tensile import translate
from tensile.kube.client import Kube, path
from tensile.kube.errors import ApiError


class NamespaceEnsurer:
    def __init__(self, lower: Kube, owner: translate.Owner) -> None:
        self.lower = lower
        self.owner = owner
        self._known: TTLCache[str, bool] = TTLCache(maxsize=10000, ttl=300)

    async def ensure(self, name: str) -> None:
        if name in self._known:
            return
        try:
            await self.lower.get(path("namespaces", name=name))
        except ApiError as exc:
            if not exc.not_found:
                raise
            try:
                await self.lower.create(path("namespaces"), translate.lower_namespace(name, self.owner))
            except ApiError as create_exc:
                if not create_exc.already_exists:
                    raise
        self._known[name] = True

    def forget(self, name: str) -> None:
        self._known.pop(name, None)
