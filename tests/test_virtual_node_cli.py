import argparse
from pathlib import Path

import pytest

from tensile import flags
from tensile.cli import build_parser
from tensile.controllers.cli import kubeconfig_exists, leader_election


def test_a_kubeconfig_list_is_accepted_when_one_file_exists(tmp_path: Path) -> None:
    real = tmp_path / "upper.kubeconfig"
    real.write_text("apiVersion: v1\n")
    assert kubeconfig_exists(f"{tmp_path / 'missing'}:{real}")
    assert kubeconfig_exists(str(real))
    assert not kubeconfig_exists(f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert not kubeconfig_exists(":")






def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["virtual-node", "--nodename", "vk-a", "--client-kubeconfig", "x", *argv])


def test_flags_have_virtual_kubelet_and_client_go_names_and_defaults() -> None:
    args = parse()
    assert args.metrics_addr == ("0.0.0.0", 10255)
    assert args.pod_sync_workers == 8 and args.full_resync_period == 300 and args.startup_timeout == 120
    election = leader_election(args)
    assert election is not None and election.name == "vk-a" and election.namespace == "kube-system"
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (15, 10, 2)
    assert election.identity.count("_") >= 1  # host_uuid, unique per process
    args = parse("--metrics-addr", "127.0.0.1:9000", "--full-resync-period", "1m30s", "--leader-elect-lease-duration",
                 "30s", "--leader-elect-renew-deadline", "20s", "--leader-elect-resource-namespace", "tensile")
    election = leader_election(args)
    assert args.metrics_addr == ("127.0.0.1", 9000) and args.full_resync_period == 90
    assert election is not None and election.lease_duration == 30 and election.namespace == "tensile"


def test_old_flag_names_still_work_with_a_deprecation_warning(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--metrics-port", "10300", "--pod-workers", "3")
    assert args.metrics_addr == ("0.0.0.0", 10300) and args.pod_sync_workers == 3
    err = capsys.readouterr().err
    assert "Flag --metrics-port has been deprecated, use --metrics-addr instead" in err
    assert "Flag --pod-workers has been deprecated, use --pod-sync-workers instead" in err
    assert parse("--metrics-port", "0").metrics_addr is None


def test_leader_election_switches_and_refusals() -> None:
    assert leader_election(parse("--leader-elect=false")) is None
    assert leader_election(parse("--node-credentials")) is None  # a kubelet may not write other Leases
    with pytest.raises(ValueError, match="node credentials"):
        leader_election(parse("--node-credentials", "--leader-elect"))
    with pytest.raises(ValueError, match="renew-deadline"):
        leader_election(parse("--leader-elect-lease-duration", "5s", "--leader-elect-renew-deadline", "10s"))


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("7", 7),
                                               ("1.5s", 1.5)])
def test_go_durations(text: str, seconds: float) -> None:
    assert flags.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "-1s", "1s2"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        flags.parse_duration(text)


def test_bind_addresses() -> None:
    assert flags.parse_bind_address(":8080") == ("0.0.0.0", 8080)
    assert flags.parse_bind_address("[::1]:8080") == ("::1", 8080)
    assert flags.parse_bind_address("") is None and flags.parse_bind_address("0") is None
    for bad in ("8080", "host:", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            flags.parse_bind_address(bad)


def test_kubelet_api_flags_have_the_kubelets_names_and_defaults() -> None:
    from tensile.controllers.cli import serving_options

    options = serving_options(parse())
    assert options is not None
    assert (options.address, options.port) == ("0.0.0.0", 10250)
    assert options.token_webhook and not options.anonymous and options.authorization_mode == "Webhook"
    assert not options.rotate_certificates and options.cert_file == ""
    options = serving_options(parse("--kubelet-port", "10350", "--kubelet-address", "127.0.0.1", "--anonymous-auth",
                                    "--authentication-token-webhook=false", "--authorization-mode", "AlwaysAllow",
                                    "--client-ca-file", "ca.crt", "--rotate-server-certificates"))
    assert options is not None and (options.address, options.port) == ("127.0.0.1", 10350)
    assert options.anonymous and not options.token_webhook and options.authorization_mode == "AlwaysAllow"
    assert options.client_ca_file == "ca.crt" and options.rotate_certificates
    assert serving_options(parse("--kubelet-port", "0")) is None
    with pytest.raises(SystemExit):
        parse("--kubelet-port", "70000")
    with pytest.raises(SystemExit):
        parse("--authorization-mode", "RBAC")


@pytest.mark.parametrize("argv, message", [
    (["--tls-cert-file", "c"], "together"),
    (["--tls-cert-file", "c", "--tls-private-key-file", "k", "--rotate-server-certificates"], "choose one"),
    (["--client-ca-file", "/nonexistent/ca.crt"], "does not exist"),
])
def test_kubelet_api_flags_that_cannot_work_are_refused(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(*argv)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "message"), [
    ("--lower-node-selector=pool in (a", "unbalanced '('"),
    ("--upper-cluster-name=Not_A_Label", "--upper-cluster-name 'Not_A_Label' is not a DNS label"),
])
def test_a_bad_pool_selector_or_suffix_stops_with_exit_code_2(flag: str, message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--namespace-mapping=suffixed", flag, "--leader-elect=false")
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


def test_mesh_flags_default_to_todays_behaviour() -> None:
    args = parse()
    assert (args.namespace_mapping, args.upper_cluster_name, args.lower_node_selector) == ("same", "", "")
    with pytest.raises(SystemExit):
        parse("--namespace-mapping=prefixed")
