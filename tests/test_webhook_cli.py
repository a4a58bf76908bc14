"""``tensile webhook`` argument handling: the three forms and one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tensile.conventions import CLUSTER_ID_LABEL
from webhook import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tensile")
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    return parser.parse_args(["webhook", *argv])


def run(*argv: str) -> int:
    args = parse(*argv)
    code: int = args.func(args)
    return code


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tensile webhook: error: ")
    assert "\n" not in err
    assert "Traceback" not in err
    return err


def test_serving_is_the_default_form() -> None:
    args = parse("--port", "9443", "--tls-cert-file", "c", "--tls-key-file", "k")
    assert args.func is cli._run_serve
    assert args.port == 9443
    assert args.ignore_selector_keys == frozenset({CLUSTER_ID_LABEL})
    assert args.virtual_node_selector is True
    assert args.log_level == "0"
    assert args.log_format == "auto"
    assert args.metrics_addr == ("0.0.0.0", 8080)  # plain HTTP, away from the HTTPS port


def test_serving_flags() -> None:
    args = parse(
        "--ignore-selector-keys",
        f"{CLUSTER_ID_LABEL}, region",
        "--no-virtual-node-selector",
        "-v",
        "--unreachable-toleration-seconds",
        "60",
        "--kubeconfig",
        "k",
    )
    assert args.ignore_selector_keys == frozenset({CLUSTER_ID_LABEL, "region"})
    assert args.virtual_node_selector is False
    assert args.unreachable_toleration_seconds == 60
    assert args.log_level == "4"  # a bare -v still works: debug lines
    assert parse("--signing-key-file", "s").signing_key_file == Path("s")
    assert parse().signing_key_file is None


def test_serving_with_a_short_signing_key_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("certs", str(tmp_path), "--host", "127.0.0.1")
    (tmp_path / "short").write_bytes(b"too short")
    code = run(
        "--tls-cert-file",
        str(tmp_path / "tls.crt"),
        "--tls-key-file",
        str(tmp_path / "tls.key"),
        "--signing-key-file",
        str(tmp_path / "short"),
    )
    assert code == 2
    assert "signing key" in one_line_error(capsys)


def test_serving_with_a_missing_signing_key_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("certs", str(tmp_path), "--host", "127.0.0.1")
    code = run(
        "--tls-cert-file",
        str(tmp_path / "tls.crt"),
        "--tls-key-file",
        str(tmp_path / "tls.key"),
        "--signing-key-file",
        str(tmp_path / "nope"),
    )
    assert code == 2
    assert "--signing-key-file" in one_line_error(capsys)


def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--port", "99999")
    assert exit_info.value.code == 2
    assert "out of range" in capsys.readouterr().err


def test_serving_without_certificate_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--port", "0") == 2
    assert "--tls-cert-file is required" in one_line_error(capsys)


def test_serving_with_missing_files_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--tls-cert-file", str(tmp_path / "nope.crt"), "--tls-key-file", str(tmp_path / "nope.key")) == 2
    assert "no such file" in one_line_error(capsys)


def test_serving_with_a_bad_certificate_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c").write_text("junk")
    (tmp_path / "k").write_text("junk")
    assert run("--tls-cert-file", str(tmp_path / "c"), "--tls-key-file", str(tmp_path / "k")) == 2
    assert "cannot load the TLS certificate/key" in one_line_error(capsys)


def test_certs_writes_no_ca_key_into_the_mounted_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert run("certs", str(out), "--host", "127.0.0.1", "--dns", "tensile-webhook.ns.svc") == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_certs_keeps_the_ca_key_only_where_asked_and_never_beside_the_serving_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, private = tmp_path / "pki", tmp_path / "private" / "ca.key"
    assert run("certs", str(out), "--host", "127.0.0.1", "--ca-key-file", str(private)) == 0
    assert private.exists() and not (out / "ca.key").exists()
    capsys.readouterr()
    assert run("certs", str(out), "--host", "127.0.0.1", "--ca-key-file", str(out / "ca.key")) == 2
    assert "CA key" in one_line_error(capsys)


def test_certs_without_sans_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("certs", str(tmp_path)) == 2
    one_line_error(capsys)


def test_install_dry_run_prints_the_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generated = tmp_path / "pki"
    run("certs", str(generated), "--host", "127.0.0.1")
    capsys.readouterr()
    code = run(
        "install",
        "--url",
        "https://127.0.0.1:8443/mutate",
        "--ca-file",
        str(generated / "ca.crt"),
        "--failure-policy",
        "Ignore",
        "--dry-run",
    )
    assert code == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List"
    webhook, policy, binding = listed["items"]
    assert webhook["kind"] == "MutatingWebhookConfiguration"
    assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
    assert (policy["kind"], binding["kind"]) == ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    assert {item["metadata"]["name"] for item in listed["items"]} == {"tensile-webhook"}


def test_install_service_form_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generated = tmp_path / "pki"
    run("certs", str(generated), "--dns", "w.ns.svc")
    capsys.readouterr()
    assert run("install", "--service", "ns/w:9443", "--ca-file", str(generated / "ca.crt"), "--dry-run") == 0
    service = json.loads(capsys.readouterr().out)["items"][0]["webhooks"][0]["clientConfig"]["service"]
    assert service == {"namespace": "ns", "name": "w", "path": "/mutate", "port": 9443}


def test_install_requires_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("install", "--ca-file", "ca.crt")
    assert exit_info.value.code == 2


def test_install_with_missing_ca_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("install", "--url", "https://h/mutate", "--ca-file", str(tmp_path / "ca.crt")) == 2
    assert "--ca-file" in one_line_error(capsys)


def test_install_with_bad_service_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert run("install", "--service", "nope", "--ca-file", str(tmp_path / "ca.crt")) == 2
    assert "NAMESPACE/NAME" in one_line_error(capsys)


def test_install_with_http_url_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert run("install", "--url", "http://h/mutate", "--ca-file", str(tmp_path / "ca.crt")) == 2
    assert "https" in one_line_error(capsys)


def test_install_with_missing_kubeconfig_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    code = run(
        "install",
        "--url",
        "https://h/mutate",
        "--ca-file",
        str(tmp_path / "ca.crt"),
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
    )
    assert code == 2
    assert "--kubeconfig" in one_line_error(capsys)


def test_install_against_unreachable_cluster_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("not: a kubeconfig\n")
    code = run(
        "install", "--url", "https://h/mutate", "--ca-file", str(tmp_path / "ca.crt"), "--kubeconfig", str(kubeconfig)
    )
    assert code == 1
    assert "cannot install" in one_line_error(capsys)


def test_log_level_flag_after_sub_subcommand_is_accepted(tmp_path: Path) -> None:
    args = parse("certs", str(tmp_path), "--host", "127.0.0.1", "--log-level", "warning")
    assert args.log_level == "warning"
    assert parse("certs", str(tmp_path), "--log-level", "DEBUG").log_level == "debug"  # old spelling
    assert parse("certs", str(tmp_path), "-v").log_level == "4"
    assert parse("certs", str(tmp_path), "--log-format", "json").log_format == "json"


def test_v_takes_a_kubernetes_verbosity_before_and_after_sub_subcommands(tmp_path: Path) -> None:
    # -v now takes a level, like a Kubernetes component's; before a sub-subcommand it must be given one.
    assert parse("-v", "4", "certs", str(tmp_path)).log_level == "4"
    assert parse("--v=6", "certs", str(tmp_path)).log_level == "6"
    assert parse("-v", "2").log_level == "2"
    args = parse("-v", "6", "--log-format", "text", "install", "--url", "https://h/mutate", "--ca-file", "ca.crt")
    assert (args.log_level, args.log_format) == ("6", "text")  # not reset by the sub-subcommand's defaults
    assert parse("install", "--url", "https://h/mutate", "--ca-file", "ca.crt", "--v", "3").log_level == "3"


def test_a_bare_v_before_a_sub_subcommand_is_an_error_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("-v", "certs", str(tmp_path))
    assert exit_info.value.code == 2
    assert "-v 4 certs" in capsys.readouterr().err


def test_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--log-level", "loud")
    assert exit_info.value.code == 2
    assert "invalid level 'loud'" in capsys.readouterr().err


def test_metrics_addr(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("--metrics-addr", "127.0.0.1:9100").metrics_addr == ("127.0.0.1", 9100)
    assert parse("--metrics-addr=[::1]:9100").metrics_addr == ("::1", 9100)
    assert parse("--metrics-addr", "").metrics_addr is None
    assert parse("--metrics-addr", "0").metrics_addr is None
    with pytest.raises(SystemExit) as exit_info:
        parse("--metrics-addr", "nope")
    assert exit_info.value.code == 2
    assert "--metrics-addr" in capsys.readouterr().err


def test_metrics_addr_on_the_https_port_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("certs", str(tmp_path), "--host", "127.0.0.1")
    code = run("--port", "9443", "--metrics-addr", ":9443", "--tls-cert-file", str(tmp_path / "tls.crt"),
               "--tls-key-file", str(tmp_path / "tls.key"))
    assert code == 2
    assert "--metrics-addr" in one_line_error(capsys)


def test_client_authentication_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--client-ca-file", "ca.crt", "--client-allowed-names", "kube-apiserver-webhook-client, other")
    assert args.client_ca_file == Path("ca.crt")
    assert args.client_allowed_names == frozenset({"kube-apiserver-webhook-client", "other"})
    assert parse().client_ca_file is None and parse().client_allowed_names == frozenset()
    run("certs", str(tmp_path), "--host", "127.0.0.1")
    serving = ("--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"))
    assert run(*serving, "--client-allowed-names", "x") == 2
    assert "--client-allowed-names needs --client-ca-file" in one_line_error(capsys)
    assert run(*serving, "--client-ca-file", str(tmp_path / "nope.crt")) == 2
    assert "--client-ca-file" in one_line_error(capsys)
    (tmp_path / "junk.crt").write_text("junk")
    assert run(*serving, "--client-ca-file", str(tmp_path / "junk.crt")) == 2
    assert "cannot load --client-ca-file" in one_line_error(capsys)
