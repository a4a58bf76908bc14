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
    assert "Traceback" not in err
    progress, sep, _ = err.partition("error: ")
    assert sep, f"no error line in {err!r}"
    assert all("obtaining" in line for line in progress.splitlines()), "only progress lines come before the error"


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


def test_helm_is_built_from_its_module_with_its_version_stamped() -> None:
    from e2e import versions

    helm = binaries.component("helm")
    assert helm in binaries.components()  # so `make binaries` builds it
    assert helm.module == "helm.sh/helm/v3" and helm.packages == ("helm.sh/helm/v3/cmd/helm",)
    assert helm.version == versions.HELM and helm.binaries == ("helm",)
    assert binaries.go_binary_name(helm.packages[0]) == "helm"
    assert f"-X helm.sh/helm/v3/internal/version.version={versions.HELM}" in helm.ldflags
    # helm template's .Capabilities.KubeVersion is its client-go's, not v1.20.
    assert f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={versions.HELM_K8S_MINOR}" in helm.ldflags
    assert "helm" in binaries.OPTIONAL_BINARIES and "helm" not in binaries.ALL_BINARIES
    assert binaries.scratch_go_mod(helm, "module helm.sh/helm/v3\n\ngo 1.26.0\n").endswith(
        f"require helm.sh/helm/v3 {versions.HELM}\n")


def test_helm_release_tarball_is_flattened_to_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import tarfile

    helm = binaries.component("helm")
    monkeypatch.setattr(binaries, "_arch", lambda: "amd64")
    assert binaries._release_urls(helm) == {
        "helm.tar.gz": f"https://get.helm.sh/helm-{helm.version}-linux-amd64.tar.gz"}
    archive = tmp_path / "helm.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in (("linux-amd64/helm", b"#!/bin/sh\n"), ("linux-amd64/LICENSE", b"Apache")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out = tmp_path / "out"
    out.mkdir()
    binaries.extract_binaries(archive, helm.binaries, out)
    assert sorted(p.name for p in out.iterdir()) == ["helm"]


def test_helm_comes_from_tensile_k8s_bin_or_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    monkeypatch.setenv("TENSILE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no go: nothing may be built
    monkeypatch.setattr(binaries, "network_available", lambda *a, **k: False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("TENSILE_K8S_BIN", str(bin_dir))
    with pytest.raises(binaries.BinariesUnavailable):  # optional there, so looked for in the cache, in vain
        binaries.helm()
    cached = executable(tmp_path / "cache" / binaries.component("helm").cache_key / "helm")
    assert binaries.helm() == cached
    assert binaries.helm(allow_build=False) == cached
    own = executable(bin_dir / "helm")
    assert binaries.helm() == own
