"""The image (deploy/Dockerfile) builds and runs every subcommand's help as the chart runs it: user
65532 on a read-only root filesystem. Needs a Docker engine; where none answers, it skips and says why."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.docker_backend import docker_unavailable

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    problem = docker_unavailable()
    if problem:
        pytest.skip(f"the image test needs a Docker engine: {problem}")
    tag = f"tensile-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["docker", "build", "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, f"docker build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    yield tag
    subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, timeout=120)


def run(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    # As the chart runs it: a numeric non-root user on a read-only root (help needs no writable /tmp either).
    return subprocess.run(["docker", "run", "--rm", "--read-only", "--user", "65532", image, *args],
                          capture_output=True, text=True, timeout=300)


def test_the_image_runs_tensile_read_only_as_65532(image: str) -> None:
    result = run(image, "--help")
    assert result.returncode == 0, result.stderr
    assert "virtual-node" in result.stdout and "webhook" in result.stdout
    for subcommand in ("virtual-node", "webhook", "scheduler", "descheduler"):
        result = run(image, subcommand, "--help")
        assert result.returncode == 0, f"{subcommand}: {result.stderr}"
    assert "--nodename" in run(image, "virtual-node", "--help").stdout
    user = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}",
                           image], capture_output=True, text=True, timeout=60)
    assert user.stdout.strip() == '65532:65532 ["tensile"]'
