"""pytest fixtures for tests on real local clusters.

- ``make_cluster(name, nodes=...)``: start a cluster; stopped at test end.
- ``cluster_pair``: an upper and a lower cluster (module-scoped, shared by
  the tests of one module, which isolate themselves by namespace).
- ``clusters(n)`` via ``make_cluster`` for N clusters.

When a test fails, every cluster alive at that moment has its component
log tails printed on teardown and its directory kept.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.cluster import LocalCluster
from e2e.kwok import NodeSpec
from e2e.virtualnode import VirtualNodeProcess

_LIVE: list[LocalCluster] = []
_LIVE_VNODES: list[VirtualNodeProcess] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed:
        for c in _LIVE:
            c.failed = True
        for vn in _LIVE_VNODES:
            print(f"\n----- virtual node {vn.name} ({vn.log_path}) -----\n{vn.log_tail()}", file=sys.stderr)


def _start(name: str, nodes: list[NodeSpec] | None, **kw: Any) -> LocalCluster:
    c = LocalCluster(name, nodes, **kw)
    c.start()
    _LIVE.append(c)
    return c


def _stop(c: LocalCluster) -> None:
    try:
        c.stop()
    finally:
        if c in _LIVE:
            _LIVE.remove(c)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def make(name: str, nodes: list[NodeSpec] | None = None, **kw: Any) -> LocalCluster:
        c = _start(name, nodes, **kw)
        started.append(c)
        return c

    yield make
    for c in reversed(started):
        _stop(c)


@pytest.fixture
def make_virtual_node() -> Iterator[Callable[..., VirtualNodeProcess]]:
    started: list[VirtualNodeProcess] = []

    def make(upper: LocalCluster, lower: LocalCluster, name: str = "vk-lower", leading: bool = True,
             **kw: Any) -> VirtualNodeProcess:
        """``leading=False``: only wait until ready, for a replica that may follow another."""
        vn = VirtualNodeProcess(upper, lower, name, **kw)
        vn.start(leading=leading)
        started.append(vn)
        _LIVE_VNODES.append(vn)
        return vn

    yield make
    for vn in started:
        vn.stop()
        _LIVE_VNODES.remove(vn)


LOWER_NODES = [
    NodeSpec("lower-a", cpu="8", memory="32Gi", pods="110", labels={"disktype": "ssd", "zone": "a"}),
    NodeSpec("lower-b", cpu="8", memory="32Gi", pods="110", labels={"disktype": "hdd", "zone": "b"}),
]
UPPER_NODES = [NodeSpec("upper-0", cpu="4", memory="8Gi", pods="110")]


@pytest.fixture(scope="module")
def cluster_pair() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    upper = _start("upper", list(UPPER_NODES))
    try:
        lower = _start("lower", list(LOWER_NODES))
    except BaseException:
        _stop(upper)
        raise
    try:
        yield upper, lower
    finally:
        _stop(lower)
        _stop(upper)


#: The virtual node's flags in ``federation``; a module may set its own as ``FEDERATION_ARGS``.
FEDERATION_ARGS = ["--lower-unreachable-grace=5"]


@pytest.fixture(scope="module")
def federation(request: pytest.FixtureRequest, cluster_pair: tuple[LocalCluster, LocalCluster]
               ) -> Iterator[tuple[LocalCluster, LocalCluster, VirtualNodeProcess]]:
    """The pair with a virtual node ``vk-lower`` running between them."""
    upper, lower = cluster_pair
    args = list(getattr(request.module, "FEDERATION_ARGS", FEDERATION_ARGS))
    vn = VirtualNodeProcess(upper, lower, "vk-lower", extra_args=args)
    vn.start()
    _LIVE_VNODES.append(vn)
    try:
        yield upper, lower, vn
    finally:
        vn.stop()
        _LIVE_VNODES.remove(vn)
