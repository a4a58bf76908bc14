from pathlib import Path

from tensile.controllers.cli import kubeconfig_exists


def test_a_kubeconfig_list_is_accepted_when_one_file_exists(tmp_path: Path) -> None:
    real = tmp_path / "upper.kubeconfig"
    real.write_text("apiVersion: v1\n")
    assert kubeconfig_exists(f"{tmp_path / 'missing'}:{real}")
    assert kubeconfig_exists(str(real))
    assert not kubeconfig_exists(f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert not kubeconfig_exists(":")
