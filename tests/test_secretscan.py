"""The suite-wide Secret-leak check (e2e.secretscan): what it looks for, and where, incrementally."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import process, secretscan


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    saved = (dict(secretscan.VALUES), dict(secretscan._OFFSETS), set(process.LOGS))
    secretscan.VALUES.clear()
    secretscan._OFFSETS.clear()
    process.LOGS.clear()
    yield
    secretscan.VALUES.clear()
    secretscan.VALUES.update(saved[0])
    secretscan._OFFSETS.clear()
    secretscan._OFFSETS.update(saved[1])
    process.LOGS.clear()
    process.LOGS.update(saved[2])


def test_a_made_value_is_recognisable_unique_and_registered() -> None:
    a, b = secretscan.secret_value("db"), secretscan.secret_value("db")
    assert a != b and a.startswith("tensile-secret-db-") and {a, b} <= set(secretscan.VALUES)


def test_harvest_takes_long_values_and_long_runs_but_not_certificates_or_short_values() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\n" + "A" * 64 + "\n" + "B" * 20 + "\n-----END PRIVATE KEY-----\n"
    kubeconfig = "users:\n- name: x\n  user:\n    token: " + "t0k" * 15 + "\n"
    items = [{"metadata": {"namespace": "ns", "name": "s"}, "data": {
        "password": secretscan.b64("correct-horse-battery"), "short": secretscan.b64("hunter2"),
        "tls.key": secretscan.b64(pem), "tls.crt": secretscan.b64("C" * 80), "ca.crt": secretscan.b64("D" * 80),
        "namespace": secretscan.b64("a-namespace-with-a-long-name"), "kubeconfig": secretscan.b64(kubeconfig),
        "binary": "//79/A==", "broken": "not base64!"}}]
    assert secretscan.harvest(items, "upper") == 3
    assert set(secretscan.VALUES) == {"correct-horse-battery", "A" * 64, "t0k" * 15}
    assert secretscan.VALUES["A" * 64] == "Secret upper/ns/s key tls.key"
    assert secretscan.harvest(items, "upper") == 0


def test_a_value_is_found_as_written_and_json_escaped() -> None:
    value = 'tensile-secret-"quoted"\\slash'
    values = {value: "t"}
    assert secretscan.find(b"x " + value.encode() + b" y", values) == [(value, 2)]
    assert secretscan.find(b"msg=" + json.dumps(value).encode(), values) == [(value, 5)]
    assert secretscan.find(b"nothing here", values) == []


def test_logs_are_scanned_incrementally_with_their_neighbours_and_hits_name_the_line(tmp_path: Path) -> None:
    log, audit = tmp_path / "virtual-node.log", tmp_path / "audit-upper.log"
    log.write_text("start\n")
    audit.write_text("")
    (tmp_path / "sub").mkdir()
    process.LOGS.add(log)
    value = secretscan.secret_value("scan")
    assert secretscan.scan_logs() == []
    with open(log, "a") as f:
        f.write("line 2\n" + f"oops {value}\n")
    (problem,) = secretscan.scan_logs()
    assert problem.startswith(f"{log}:3: the value of ") and value in problem
    assert secretscan.scan_logs() == []  # read once
    audit.write_text(json.dumps({"msg": value}) + "\n")
    (problem,) = secretscan.scan_logs()
    assert problem.startswith(f"{audit}:1:")
    harvested = "H" * 40
    secretscan.harvest([{"metadata": {}, "data": {"k": secretscan.b64(harvested)}}], "c")
    with open(log, "a") as f:
        f.write("token " + harvested + "\n")
    (problem,) = secretscan.scan_logs()
    assert "HHHHHH…(40 characters)" in problem and harvested not in problem  # a real secret is not printed
