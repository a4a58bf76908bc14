"""``tensile webhook``: serve the admission webhook, make its certificates, register it.

Three forms share one subcommand so a deployment needs one binary:

- ``tensile webhook --port 8443 --tls-cert-file F --tls-key-file F`` serves (the default);
- ``tensile webhook certs DIR --host IP --dns NAME`` writes a CA and a serving certificate;
- ``tensile webhook install (--url URL | --service NS/NAME[:PORT]) --ca-file F`` registers it, with
  the ValidatingAdmissionPolicy that keeps its annotations from being edited afterwards.

Bad input ends with a one-line error and exit code 2, never a stack trace.

Logging takes the flags of every tensile component (``tensile.logs``): ``-v/--v/--log-level LEVEL``
(a number 0-10 like a Kubernetes component's ``-v``, or debug/info/warning/error in any case) and
``--log-format {auto,text,json}``. A bare ``-v`` still works and means ``-v 4`` (every admission
decision), as long as a flag or nothing follows it: ``-v certs DIR`` would read ``certs`` as the
level, so write ``-v 4 certs DIR`` or put ``-v`` after the sub-subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from tensile import flags, logs
from tensile.conventions import CLUSTER_ID_LABEL

__all__ = ["main", "register"]

_PROG = "tensile webhook"
#: Plain HTTP for Prometheus and probes; controller-runtime's default, away from the HTTPS --port 8443.
_METRICS_ADDR = ":8080"
#: What a bare ``-v`` means: debug lines, one per admission decision.
_BARE_V = "4"


class _UsageError(Exception):
    """A problem with the command line or its input files: exit 2."""


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is negative")
    return number


def _keys(value: str) -> frozenset[str]:
    return frozenset(key.strip() for key in value.split(",") if key.strip())


def _log_level(value: str) -> str:
    """A ``-v`` value ``tensile.logs`` accepts, normalised: ``"4"``, ``"debug"``, ``"warning"``."""
    text = value.strip().lower()
    try:
        logs.verbosity(text)
    except ValueError:
        hint = f" (a bare -v before {text} takes it as the level: write -v {_BARE_V} {text})" if text in (
            "certs", "install") else ""
        raise argparse.ArgumentTypeError(
            f"invalid level {value!r}: use a number (0-10) or debug, info, warning, error{hint}") from None
    return text


def _add_logging_flags(parser: argparse.ArgumentParser, default: Any, default_format: Any) -> None:
    """``tensile.logs.add_flags``'s flags, with a bare ``-v`` kept working (it means ``-v 4``).

    Sub-subcommands pass ``argparse.SUPPRESS`` so that a flag given before them is not reset.
    """
    parser.add_argument(
        "-v", "--v", "--log-level", "--verbose", dest="log_level", nargs="?", const=_BARE_V, type=_log_level,
        default=default, metavar="LEVEL",
        help="verbosity like a Kubernetes component's -v: 0 (default), 2, 4 (every admission decision), up to "
             f"10; or debug, info, warning, error. A bare -v means {_BARE_V}")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default=default_format,
        help="text (klog-like lines) or json (one object per line); auto (default): text on a terminal, "
             "json otherwise")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``webhook`` subcommand to the ``tensile`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhook",
        help="mutating admission webhook that lets opted-in pods schedule onto virtual nodes",
        description="Serve the mutating admission webhook (default), or generate its certificates "
        "(certs), or register it with the upper cluster (install).",
    )
    parser.set_defaults(func=_run_serve)
    serve = parser.add_argument_group("serving")
    serve.add_argument("--port", type=flags.port, default=8443,
                       help="HTTPS port the apiserver calls (default 8443; 0 picks a free one); metrics and "
                            "probes over plain HTTP are on --metrics-addr")
    serve.add_argument("--bind-address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--tls-cert-file", type=Path, help="serving certificate (PEM), required to serve")
    serve.add_argument("--tls-key-file", type=Path, help="serving key (PEM), required to serve")
    serve.add_argument(
        "--signing-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="secret (at least 32 bytes, the same for every replica) the clusterSelector signing key is "
        "derived from (default: --tls-key-file)",
    )
    serve.add_argument(
        "--client-ca-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="answer /mutate only for callers with a client certificate this CA (PEM) signed, others get 401: "
        "the apiserver presents one when its --admission-control-config-file gives webhooks a kubeconfig. "
        "Without it, anyone who reaches the port can have pods mutated and their clusterSelector signed",
    )
    serve.add_argument(
        "--client-allowed-names",
        type=_keys,
        default=frozenset(),
        metavar="NAME[,NAME...]",
        help="with --client-ca-file: the client certificate's common name must be one of these, else 403 "
        "(default: any certificate the CA signed)",
    )
    serve.add_argument(
        "--ignore-selector-keys",
        type=_keys,
        default=frozenset({CLUSTER_ID_LABEL}),
        metavar="KEY[,KEY...]",
        help=f"node-label keys kept on the upper pod because virtual nodes carry them (default {CLUSTER_ID_LABEL})",
    )
    serve.add_argument(
        "--no-virtual-node-selector",
        dest="virtual_node_selector",
        action="store_false",
        help="do not add the virtual-node nodeSelector to mutated pods",
    )
    serve.add_argument(
        "--no-unreachable-tolerations",
        dest="unreachable_tolerations",
        action="store_false",
        help="do not add NoExecute tolerations for not-ready/unreachable nodes",
    )
    serve.add_argument(
        "--unreachable-toleration-seconds",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="bound those tolerations (default: tolerate forever)",
    )
    serve.add_argument(
        "--kubeconfig",
        dest="serve_kubeconfig",
        type=Path,
        default=None,
        help="upper cluster, for --avoidance-records (default: in-cluster credentials); without that flag it is "
             "accepted for compatibility with Tensile Kube and unused",
    )
    serve.add_argument(
        "--avoidance-records",
        action="store_true",
        help="keep new pods of an owner off the virtual nodes `tensile descheduler` moved its pods away from "
             "(watches ConfigMaps labelled tensile.io/avoidance=true: needs list and watch on configmaps)",
    )
    flags.add_metrics_flag(serve, _METRICS_ADDR, "webhook")
    _add_logging_flags(parser, "0", "auto")

    commands = parser.add_subparsers(dest="webhook_command", metavar="{certs,install}")

    certs = commands.add_parser(
        "certs",
        help="write ca.crt, tls.crt, tls.key for the webhook (the CA key only with --ca-key-file)",
        description="Generate a CA and a serving certificate signed by it. IP hosts become IP SANs.",
    )
    certs.add_argument("directory", type=Path, metavar="DIR")
    certs.add_argument("--host", action="append", default=[], help="IP address or host name (repeatable)")
    certs.add_argument("--dns", action="append", default=[], help="DNS name, e.g. NAME.NAMESPACE.svc (repeatable)")
    certs.add_argument("--days", type=_non_negative, default=365, help="validity in days (default 365)")
    certs.add_argument("--ca-key-file", type=Path, default=None,
                       help="keep the CA key here, outside DIR (default: not kept; DIR is what gets mounted)")
    certs.set_defaults(func=_run_certs)
    _add_logging_flags(certs, argparse.SUPPRESS, argparse.SUPPRESS)

    install = commands.add_parser(
        "install",
        help="create or update the MutatingWebhookConfiguration and its ValidatingAdmissionPolicy",
        description="Create or update, in the upper cluster, the MutatingWebhookConfiguration and a "
        "ValidatingAdmissionPolicy (with its binding, same name) that forbids changing the clusterSelector "
        "annotations of existing pods.",
    )
    install.add_argument("--kubeconfig", type=Path, default=None, help="upper cluster (default: $KUBECONFIG)")
    target = install.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="https URL the apiserver calls, e.g. https://127.0.0.1:8443/mutate")
    target.add_argument("--service", metavar="NS/NAME[:PORT]", help="in-cluster Service the apiserver calls")
    install.add_argument("--ca-file", type=Path, required=True, help="PEM CA that signed the serving certificate")
    install.add_argument("--name", default=None, help="configuration name (default tensile-webhook)")
    install.add_argument("--failure-policy", choices=("Fail", "Ignore"), default="Fail", help="default Fail")
    install.add_argument("--timeout-seconds", type=int, default=10, help="per-call timeout, 1-30 (default 10)")
    install.add_argument("--dry-run", action="store_true", help="print the objects as a JSON List, change nothing")
    install.set_defaults(func=_run_install)
    _add_logging_flags(install, argparse.SUPPRESS, argparse.SUPPRESS)


def _setup_logging(args: argparse.Namespace) -> None:
    """Like every tensile component (tensile.logs): klog-like text on a terminal, else JSON lines."""
    logs.setup(getattr(args, "log_level", "0"), getattr(args, "log_format", "auto"))


def _fail(message: str, code: int = 2) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return code


def _readable(path: Path | None, flag: str) -> Path:
    if path is None:
        raise _UsageError(f"{flag} is required")
    if not path.is_file():
        raise _UsageError(f"{flag} {path}: no such file")
    return path


def _run_serve(args: argparse.Namespace) -> int:
    import ssl

    from webhook.mutate import MutateOptions
    from webhook.server import ServerOptions, serve, signing_key, ssl_context

    _setup_logging(args)
    try:
        cert = _readable(args.tls_cert_file, "--tls-cert-file")
        key = _readable(args.tls_key_file, "--tls-key-file")
        signing_file = None if args.signing_key_file is None else _readable(args.signing_key_file, "--signing-key-file")
        client_ca = None if args.client_ca_file is None else _readable(args.client_ca_file, "--client-ca-file")
        if args.client_allowed_names and client_ca is None:
            raise _UsageError("--client-allowed-names needs --client-ca-file")
        try:
            ssl_context(cert, key)  # fail here with a clear message rather than inside the event loop
        except (ssl.SSLError, OSError) as exc:
            raise _UsageError(f"cannot load the TLS certificate/key: {exc}") from exc
        if client_ca is not None:
            try:
                ssl_context(cert, key, client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise _UsageError(f"cannot load --client-ca-file {client_ca}: {exc}") from exc
        options = ServerOptions(
            tls_cert_file=cert,
            tls_key_file=key,
            port=args.port,
            bind_address=args.bind_address,
            signing_key_file=signing_file,
            metrics_addr=args.metrics_addr,
            avoidance_records=args.avoidance_records,
            kubeconfig=args.serve_kubeconfig,
            client_ca_file=client_ca,
            client_allowed_names=args.client_allowed_names,
            mutate=MutateOptions(
                ignore_selector_keys=args.ignore_selector_keys,
                add_virtual_node_selector=args.virtual_node_selector,
                add_unreachable_tolerations=args.unreachable_tolerations,
                unreachable_toleration_seconds=args.unreachable_toleration_seconds,
            ),
        )
        try:
            signing_key(options)
        except (ValueError, OSError) as exc:
            raise _UsageError(f"cannot derive the signing key from {signing_file or key}: {exc}") from exc
        if args.metrics_addr is not None and args.port != 0 and args.metrics_addr[1] == args.port:
            raise _UsageError(f"--metrics-addr serves plain HTTP and cannot share the HTTPS --port {args.port}")
    except _UsageError as exc:
        return _fail(str(exc))
    try:
        asyncio.run(serve(options))
    except OSError as exc:  # e.g. address already in use (the message names the address)
        return _fail(f"cannot serve: {exc}", 1)
    except KeyboardInterrupt:
        return 130
    return 0


def _run_certs(args: argparse.Namespace) -> int:
    from webhook.certs import generate

    _setup_logging(args)
    if not args.host and not args.dns:
        return _fail("give at least one --host or --dns")
    if args.days == 0:
        return _fail("--days must be positive")
    try:
        paths = generate(args.directory, args.host, args.dns, days=args.days, ca_key_file=args.ca_key_file)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    for path in (p for p in (paths.ca_cert, paths.ca_key, paths.tls_cert, paths.tls_key) if p is not None):
        print(path)
    return 0


def _run_install(args: argparse.Namespace) -> int:
    import json

    from webhook.install import DEFAULT_NAME, ensure_configurations, manifests, parse_service

    _setup_logging(args)
    name = args.name or DEFAULT_NAME
    try:
        ca_file = _readable(args.ca_file, "--ca-file")
        try:
            service = parse_service(args.service) if args.service else None
            objects = manifests(
                name,
                url=args.url,
                service=service,
                ca_bundle_pem=ca_file.read_bytes(),
                failure_policy=args.failure_policy,
                timeout_seconds=args.timeout_seconds,
            )
        except (ValueError, OSError) as exc:
            raise _UsageError(str(exc)) from exc
        if args.kubeconfig is not None and not args.dry_run:
            _readable(args.kubeconfig, "--kubeconfig")
    except _UsageError as exc:
        return _fail(str(exc))
    if args.dry_run:
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
        return 0
    try:
        actions = ensure_configurations(args.kubeconfig, objects)
    except Exception as exc:  # noqa: BLE001 - any client/config error becomes one line, not a traceback
        return _fail(f"cannot install {name}: {_one_line(exc)}", 1)
    for manifest, action in zip(objects, actions, strict=True):
        print(f"{manifest['kind'].lower()}/{manifest['metadata']['name']} {action}")
    return 0


def _one_line(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None and reason is not None:
        return f"{status} {reason}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``tensile webhook ...`` on its own (``python -m webhook.cli``)."""
    parser = argparse.ArgumentParser(prog="tensile")
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    args = parser.parse_args(["webhook", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
