"""`make demo` works as the README says: the workload reaches Running on both sides."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_the_sample_workload_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "e2e.demo", "--no-wait"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ,
                                                       "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "all Running" in out
    assert "lower: node=lower-ssd nodeSelector={'disktype': 'ssd'}" in out
    assert "configmap/shop-config" in out and "secret/shop-db" in out
    assert "pvc/shop-data(Bound)" in out and "service/shop" in out
    # kubectl logs, exec and top upstairs, answered by the lower cluster through the kubelet API.
    assert "shop listening on :8080" in out
    assert "hello from the lower cluster" in out
    top = out[out.index("top pod -n demo"):]
    assert re.search(r"shop-\S+\s+1[0-9]{2}m\s+48Mi", top), top
