"""``tensile scheduler`` and the virtual node's profile flags, as a user types them."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from tensile import flags
from tensile.cli import build_parser, main
from tensile.controllers.cli import capacity_profile


def test_config_prints_a_kube_scheduler_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "config", "--url", "http://127.0.0.1:8888", "--ignorable=false",
                 "--scheduler-kubeconfig", "/etc/kubernetes/scheduler.conf"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["kind"] == "KubeSchedulerConfiguration" and config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["extenders"][0]["urlPrefix"] == "http://127.0.0.1:8888"
    assert config["extenders"][0]["ignorable"] is False
    assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.conf"


def test_config_refuses_a_bad_url_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "config", "--url", "127.0.0.1:8888"]) == 2
    assert "--url must be an http:// or https:// URL" in capsys.readouterr().err


def test_crd_prints_the_cluster_profile_definition(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "crd"]) == 0
    crd = yaml.safe_load(capsys.readouterr().out)
    assert crd["metadata"]["name"] == "clusterprofiles.tensile.io" and crd["spec"]["scope"] == "Cluster"
    columns = [col["name"] for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Cluster", "Nodes", "Groups", "Largest-CPU", "Largest-Memory", "Heartbeat"]


def test_serve_refuses_half_a_tls_pair_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "--tls-cert-file", str(tmp_path / "c.crt")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["scheduler", "--kubeconfig", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_flags_and_defaults() -> None:
    args = build_parser().parse_args(["scheduler"])
    assert (args.port, args.strategy, args.missing_profile, args.profile_max_age) == (8888, "spread", "pass", 180)
    args = build_parser().parse_args(["scheduler", "--strategy", "binpack", "--profile-max-age", "5m",
                                      "--missing-profile", "fail"])
    assert (args.strategy, args.missing_profile, args.profile_max_age) == ("binpack", "fail", 300)


def vn(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["virtual-node", "--nodename", "vk", "--client-kubeconfig", "x", *argv])


def test_virtual_node_profile_flags() -> None:
    args = vn()
    assert capacity_profile(args) and args.profile_interval == 2 and args.profile_heartbeat == 60
    assert not capacity_profile(vn("--node-credentials")) and capacity_profile(vn("--node-credentials",
                                                                                  "--capacity-profile"))
    args = vn("--extra-capacity", "cpu=8,memory=32Gi,nvidia.com/gpu=4", "--extra-capacity", "cpu=500m",
              "--profile-ignore-label", "node.example.com/id", "--capacity-profile=false", "--profile-interval", "5s")
    assert args.extra_capacity == [{"cpu": 8, "memory": 32 * 2**30, "nvidia.com/gpu": 4}, {"cpu": Fraction(1, 2)}]
    assert args.profile_ignore_label == ["node.example.com/id"] and args.capacity_profile is False
    assert args.profile_interval == 5


@pytest.mark.parametrize("text", ["cpu", "=4", "cpu=lots", "cpu=-1", "cpu=1,,"])
def test_bad_resource_lists_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        flags.resource_list(text)
