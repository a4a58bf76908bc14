"""`tensile cluster` machinery: state, finding a federation's processes by token, the plugin's shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e import clustercli, plugin


def test_every_process_with_the_token_is_found_and_stopped() -> None:
    env = dict(os.environ, **{clustercli.TOKEN_ENV: "t0k3n"})
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env,
                              start_new_session=True) for _ in range(2)]
    try:
        assert sorted(clustercli.processes_with("t0k3n")) == sorted(p.pid for p in procs)
        assert clustercli.processes_with("other") == [] and clustercli.processes_with("") == []
        assert sorted(clustercli._kill_all("t0k3n", timeout=5)) == sorted(p.pid for p in procs)
        for p in procs:
            p.wait(timeout=5)
        assert clustercli.processes_with("t0k3n") == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_state_survives_partial_writes_and_a_reused_pid_is_not_the_supervisor(tmp_path: Path) -> None:
    state = clustercli.State(tmp_path, "demo")
    state.dir.mkdir()
    assert state.read() == {} and state.pid() is None and not state.supervisor_alive()
    state.write(status="starting", token="abc")
    state.write(status="ready")
    assert state.read() == {"status": "ready", "token": "abc"}
    state.file.write_text("{not json")
    assert state.read() == {}
    state.pid_file.write_text(str(os.getpid()))  # alive, but not a supervisor
    assert not state.supervisor_alive()


class Request:
    def __init__(self, options: dict[str, Any], marker: dict[str, Any] | None) -> None:
        self.config = self
        self.node = self
        self._options, self._marker = options, marker

    def getoption(self, name: str) -> Any:
        return self._options[name]

    def get_closest_marker(self, name: str) -> Any:
        return pytest.mark.tensile(**self._marker).mark if self._marker is not None else None


OPTIONS = {"--tensile-nodes": ["2x cpu=1"], "--tensile-upper-nodes": [], "--tensile-lowers": 2,
           "--tensile-webhook": False}


def test_the_marker_wins_over_the_options() -> None:
    shape = plugin._shape(Request(OPTIONS, None))  # type: ignore[arg-type]
    assert (shape.nodes, shape.lowers, shape.webhook) == (["2x cpu=1"], 2, False)
    shape = plugin._shape(Request(OPTIONS, {"nodes": "3x cpu=8", "lowers": 3, "webhook": True}))  # type: ignore[arg-type]
    assert (shape.nodes, shape.lowers, shape.webhook) == (["3x cpu=8"], 3, True)
