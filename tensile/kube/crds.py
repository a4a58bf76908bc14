"""Make sure a CustomResourceDefinition is served, installing it when these credentials may.

Used for tensile's own small CRDs (``ClusterProfile``) by the components that write or read them,
so ``make demo`` and a cluster admin's first run need no separate step; credentials that may not
create CRDs get a 403 whose message says what to run instead.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tensile.kube.client import JSON, Kube
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kube")

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def group_version(crd: JSON) -> str:
    spec = crd["spec"]
    served = next(v["name"] for v in spec["versions"] if v.get("served"))
    return f"{spec['group']}/{served}"


async def served(kube: Kube, gv: str) -> bool:
    """Does the apiserver serve ``group/version`` (its discovery document answers)?"""
    try:
        await kube.get(f"/apis/{gv}")
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    return True


async def ensure(kube: Kube, crd: JSON, how_to_install: str, timeout: float = 30.0) -> bool:
    """Install ``crd`` unless served; True when this call installed it. Waits until it is served.

    Raises :class:`ApiError`: 403 (with ``how_to_install`` in the message) when it is missing and
    may not be created, 504 when it is not served within ``timeout``.
    """
    gv = group_version(crd)
    if await served(kube, gv):
        return False
    installed = False
    try:
        await kube.create(CRD_PATH, crd)
        installed = True
        log.info("installed CustomResourceDefinition %s", crd["metadata"]["name"])
    except ApiError as exc:
        if exc.status == 403:
            raise ApiError(403, "Forbidden", f"the {crd['metadata']['name']} CRD is not installed and these "
                                             f"credentials may not install it: {how_to_install}") from exc
        if exc.status != 409:  # 409: created meanwhile (another replica); wait for it below
            raise
    deadline = time.monotonic() + timeout
    while not await served(kube, gv):
        if time.monotonic() > deadline:
            raise ApiError(504, "Timeout", f"the {crd['metadata']['name']} CRD was not served within {timeout:.0f}s")
        await asyncio.sleep(0.5)
    return installed
