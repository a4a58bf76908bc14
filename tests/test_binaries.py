from pathlib import Path

import pytest

from e2e import binaries


def test_no_go_no_network_no_cache_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSILE_K8S_BIN", raising=False)
    monkeypatch.setenv("TENSILE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no go here
    monkeypatch.setattr(binaries, "network_available", lambda *a, **k: False)
    with pytest.raises(binaries.BinariesUnavailable) as err:
        binaries.ensure_binaries()
    msg = str(err.value)
    assert "TENSILE_K8S_BIN" in msg and "network" in msg and "Go toolchain" in msg
    assert "no `go` on PATH" in msg


def test_cli_prints_the_error_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TENSILE_K8S_BIN", raising=False)
    monkeypatch.setenv("TENSILE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "network_available", lambda *a, **k: False)
    assert binaries.main(["--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_tensile_k8s_bin_must_hold_all_five(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    monkeypatch.setenv("TENSILE_K8S_BIN", str(tmp_path))
    with pytest.raises(binaries.BinariesUnavailable, match="kube-apiserver"):
        binaries.ensure_binaries()


def test_scratch_module_maps_staging_modules_to_published_versions() -> None:
    upstream = "module k8s.io/kubernetes\n\ngo 1.24.0\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n" \
               "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n"
    k8s = binaries.components()[0]
    mod = binaries.scratch_go_mod(k8s, upstream)
    minor = k8s.version.split(".", 1)[1]
    assert f"require k8s.io/kubernetes {k8s.version}" in mod
    assert f"k8s.io/api => k8s.io/api v0.{minor}" in mod
    assert f"k8s.io/client-go => k8s.io/client-go v0.{minor}" in mod
    assert "go 1.24.0" in mod


def test_go_binary_names_skip_major_version_suffix() -> None:
    assert binaries.go_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert binaries.go_binary_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"
    assert binaries.go_binary_name("sigs.k8s.io/kwok/cmd/kwok") == "kwok"


def test_one_process_at_a_time_obtains_a_component(tmp_path: Path) -> None:
    """Two runs building the same component would share its build directory; the second waits, with a timeout."""
    lock = tmp_path / ".kwok.lock"
    with binaries._exclusive(lock, "kwok"):
        with pytest.raises(binaries.BinariesUnavailable, match="gave up waiting"):
            with binaries._exclusive(lock, "kwok", timeout=1.5):
                pass
    with binaries._exclusive(lock, "kwok", timeout=1.5):
        pass  # free again once released


def test_a_long_build_says_what_it_obtains_and_for_how_long(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    with caplog.at_level(logging.INFO, logger=binaries.log.name), binaries._progress("kwok v0.8.0", every=0.05):
        time.sleep(0.2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("obtaining kwok v0.8.0")
    assert any(m.startswith("still obtaining kwok v0.8.0: 0s so far") for m in messages)
    assert messages[-1].startswith("obtained kwok v0.8.0 in")
    assert binaries._duration(125) == "2m05s"
