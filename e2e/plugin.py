"""pytest fixtures for your own end-to-end tests: real local clusters, paired by tensile virtual nodes.

Registered through the ``pytest11`` entry point, so ``pip install tensile`` is enough::

    def test_bursts(tensile_pair):
        tensile_pair.upper.core.create_namespaced_pod("default", {...})   # runs in tensile_pair.lower

Fixtures (each starts its clusters once per scope and stops every process afterwards, even on
Ctrl-C, keeping the logs):

- ``tensile_cluster``: one cluster (``.kubeconfig``, ``.core``, ``.apps``, ``.add_node(...)``);
- ``tensile_pair``: an upper and a lower cluster joined by virtual node ``vk-lower``
  (``.upper``, ``.lower``, ``.virtual_node``, ``.kubeconfigs``);
- ``tensile_federation``: an upper cluster and N lower clusters ``lower-1`` .. ``lower-N``, each
  joined by ``vk-lower-I`` (``.lowers``, ``.virtual_nodes``).

Shape them with the ``tensile`` marker (``@pytest.mark.tensile(nodes=["3x cpu=8"], lowers=3,
webhook=True)``, on a test, or on a module through ``pytestmark`` for module scope) or with the
``--tensile-*`` command-line options. ``--tensile-scope`` (default ``module``) says how long the
clusters live; ``--tensile-backend kind`` runs them in kind where Docker runs, and skips with the
reason where it does not. When a test fails, the log tails of every part are printed.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import nodespec

_LIVE: list[Any] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tensile", "tensile paired clusters")
    group.addoption("--tensile-scope", default="module", choices=("function", "module", "session"),
                    help="how long the clusters of tensile_cluster/_pair/_federation live (default module)")
    group.addoption("--tensile-backend", default="local", choices=("local", "kind"),
                    help="local: control-plane processes, no Docker (default); kind: kind clusters in Docker")
    group.addoption("--tensile-nodes", action="append", default=[], metavar="SPEC",
                    help="nodes of each (lower) cluster, like '3x cpu=8,memory=32Gi,labels=zone=a'")
    group.addoption("--tensile-upper-nodes", action="append", default=[], metavar="SPEC",
                    help="nodes of the upper cluster")
    group.addoption("--tensile-lowers", type=int, default=2, metavar="N",
                    help="lower clusters of tensile_federation (default 2)")
    group.addoption("--tensile-webhook", action="store_true", help="install the tensile webhook upstairs")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tensile(nodes=None, upper_nodes=None, lowers=None, webhook=None, scheduler=None): the shape "
                   "of the clusters the tensile_* fixtures start")


def _scope(fixture_name: str, config: pytest.Config) -> str:
    return str(config.getoption("--tensile-scope"))


@dataclasses.dataclass
class _Shape:
    nodes: list[str]
    upper_nodes: list[str]
    lowers: int
    webhook: bool
    scheduler: bool


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _shape(request: pytest.FixtureRequest) -> _Shape:
    config = request.config
    marker = request.node.get_closest_marker("tensile")
    kw: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    return _Shape(
        nodes=_as_list(kw.get("nodes") or config.getoption("--tensile-nodes")),
        upper_nodes=_as_list(kw.get("upper_nodes") or config.getoption("--tensile-upper-nodes")),
        lowers=int(kw.get("lowers") or config.getoption("--tensile-lowers")),
        webhook=bool(kw.get("webhook", config.getoption("--tensile-webhook"))),
        scheduler=bool(kw.get("scheduler", False)),
    )


def _spec(request: pytest.FixtureRequest, name: str, lowers: list[str]) -> Any:
    """The federation the fixture asks for; with no ``lowers``, one cluster shaped by ``nodes``."""
    from e2e import federation

    shape = _shape(request)
    if lowers:
        upper = nodespec.parse_all(shape.upper_nodes, f"{name}-upper", nodespec.DEFAULT_UPPER_NODES)
    else:
        upper = nodespec.parse_all(shape.nodes, "node", nodespec.DEFAULT_LOWER_NODES)
    return federation.FederationSpec(
        name, upper_nodes=upper,
        lowers={lower: nodespec.parse_all(shape.nodes, lower, nodespec.DEFAULT_LOWER_NODES) for lower in lowers},
        webhook=shape.webhook, scheduler=shape.scheduler, backend=str(request.config.getoption("--tensile-backend")))


def _run(spec: Any) -> Iterator[Any]:
    """Start ``spec``, yield it, and stop it whatever happens (skipped with the reason where it cannot run)."""
    from e2e import federation
    from e2e.binaries import BinariesUnavailable

    try:
        fed = federation.Federation.start(spec)
    except federation.BackendUnavailable as exc:
        pytest.skip(str(exc))
    except BinariesUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    _LIVE.append(fed)
    try:
        yield fed
    finally:
        _LIVE.remove(fed)
        fed.stop()


@dataclasses.dataclass
class Pair:
    """An upper and a lower cluster and the virtual node between them."""

    federation: Any

    @property
    def upper(self) -> Any:
        return self.federation.upper

    @property
    def lower(self) -> Any:
        return self.federation.lowers["lower"]

    @property
    def virtual_node(self) -> Any:
        return self.federation.virtual_nodes["lower"]

    @property
    def kubeconfigs(self) -> Any:
        return self.federation.kubeconfigs()


@pytest.fixture(scope=_scope)  # type: ignore[arg-type]
def tensile_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One cluster with kwok nodes (``--tensile-nodes`` / ``@pytest.mark.tensile(nodes=...)``)."""
    for fed in _run(_spec(request, "cluster", [])):
        yield fed.upper


@pytest.fixture(scope=_scope)  # type: ignore[arg-type]
def tensile_pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """An upper and a lower cluster joined by virtual node ``vk-lower``."""
    for fed in _run(_spec(request, "pair", ["lower"])):
        yield Pair(fed)


@pytest.fixture(scope=_scope)  # type: ignore[arg-type]
def tensile_federation(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An upper cluster and N lower clusters (``--tensile-lowers``, ``tensile(lowers=N)``), each with a virtual node."""
    count = _shape(request).lowers
    yield from _run(_spec(request, "federation", [f"lower-{i}" for i in range(1, count + 1)]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and _LIVE:
        for fed in list(_LIVE):
            fed.mark_failed()
            print(f"\n{fed.log_tails()}", file=sys.stderr)


@atexit.register
def _stop_leftovers() -> None:
    """Whatever a Ctrl-C or an internal error left running is stopped as the interpreter exits."""
    for fed in list(_LIVE):
        fed.stop()
