"""The pytest plugin as a user's project meets it: in a directory of its own, through the entry point.

A failing test prints every component's log tail; Ctrl-C in the middle of a test still stops every
process the fixtures started (each inherits a token in its environment, so leftovers can be found).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.cluster import wait_for
from e2e.clustercli import TOKEN_ENV, processes_with

pytestmark = pytest.mark.e2e


def project(tmp_path: Path, test: str) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(test)
    return tmp_path


def run_pytest(path: Path, token: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s"], cwd=path,
                            env=dict(os.environ, **{TOKEN_ENV: token}, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_failing_test_prints_the_log_tails_and_stops_everything(tmp_path: Path) -> None:
    path = project(tmp_path, "def test_fails(tensile_cluster):\n"
                             "    assert tensile_cluster.core.list_node().items\n"
                             "    assert False, 'on purpose'\n")
    proc = run_pytest(path, "fail-token")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    assert "on purpose" in out and "-----" in out and "/kube-apiserver (" in out, out
    assert processes_with("fail-token") == []


def test_ctrl_c_in_the_middle_of_a_test_stops_every_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    path = project(tmp_path, "import os, time\n\n"
                             "def test_waits(tensile_pair):\n"
                             "    open(os.environ['READY_FILE'], 'w').write(tensile_pair.virtual_node.name)\n"
                             "    time.sleep(300)\n")
    proc = run_pytest(path, "ctrl-c-token", READY_FILE=str(ready))
    try:
        wait_for(ready.exists, 120, what="the test to be running on a pair")
        assert len(processes_with("ctrl-c-token")) >= 10, "upper, lower and virtual node run"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in out, out
    deadline = time.monotonic() + 10
    while processes_with("ctrl-c-token") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with("ctrl-c-token") == []


def test_the_kind_backend_skips_with_the_reason_where_no_docker_runs(tmp_path: Path) -> None:
    from e2e.kindbackend import kind_unavailable

    reason = kind_unavailable()
    if reason is None:
        pytest.skip("kind and Docker run here: the skip this test checks cannot happen")
    path = project(tmp_path, "def test_on_kind(tensile_pair):\n    raise AssertionError('never runs')\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "--tensile-backend=kind"], cwd=path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "the kind backend cannot run here" in proc.stdout
    assert reason in proc.stdout
