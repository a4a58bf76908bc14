"""The optional Docker (k3s via testcontainers) backend: used only where an engine runs."""

from __future__ import annotations

import pytest

from e2e.docker_backend import K3sCluster, docker_unavailable

pytestmark = pytest.mark.e2e


def test_docker_probe_gives_a_reason_or_none() -> None:
    reason = docker_unavailable()
    assert reason is None or (isinstance(reason, str) and reason)


def test_k3s_cluster_in_docker_serves_the_api() -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"Docker backend not available here: {reason}")
    with K3sCluster("docker") as c:
        assert c.core.list_namespace().items
