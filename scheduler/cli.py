"""``tensile scheduler``: serve the extender (default), print its kube-scheduler config, or its CRD."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from tensile import clusterprofile, flags, logs

_PROG = "tensile scheduler"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scheduler",
        help="kube-scheduler extender: place pods on virtual nodes whose lower cluster has a node they fit",
        description="Serve the kube-scheduler extender (default), print the KubeSchedulerConfiguration that "
                    "wires it in (config), or print the ClusterProfile CRD (crd). The extender reads the "
                    "capacity profiles virtual nodes publish; it needs no lower-cluster credentials.",
    )
    parser.set_defaults(func=_run_serve)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="upper cluster kubeconfig (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--port", type=int, default=8888, help="port of the extender verbs and /healthz, /readyz, "
                        "/metrics (default 8888; 0 picks a free one)")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--tls-cert-file", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key-file", type=Path, help="and this key (PEM)")
    parser.add_argument("--strategy", choices=("spread", "binpack"), default="spread",
                        help="prioritize: spread (the lower node left with the most free) or binpack (the fullest); "
                             "default spread")
    parser.add_argument("--missing-profile", choices=("pass", "fail"), default="pass",
                        help="a virtual node with no usable profile (none, stale, unreadable): pass it, with a "
                             "warning and a metric, and let its lower scheduler decide (default), or fail it")
    parser.add_argument("--profile-max-age", type=flags.parse_duration, default=180.0, metavar="DURATION",
                        help="a profile not renewed for this long is stale (default 3m: three heartbeats)")
    parser.add_argument("--install-crd", nargs="?", const=True, default=True, type=flags.parse_bool,
                        metavar="BOOL", help="install the ClusterProfile CRD at start when missing (default true)")
    parser.add_argument("--max-request-bytes", type=flags.positive_int, default=64 * 2**20, metavar="N",
                        help="largest request body accepted (default 64 MiB)")
    parser.add_argument("--qps", type=float, default=50.0, help="upper client QPS (default 50)")
    parser.add_argument("--burst", type=int, default=100, help="upper client burst (default 100)")
    logs.add_flags(parser)

    commands = parser.add_subparsers(dest="scheduler_command", metavar="{config,crd}")
    config = commands.add_parser(
        "config", help="print a KubeSchedulerConfiguration (YAML) that wires kube-scheduler to the extender",
        description="Print a KubeSchedulerConfiguration for kube-scheduler --config. Without --as-profile the "
                    "extender joins the default profile; with it, a second profile NAME uses it.")
    config.add_argument("--url", required=True, help="where kube-scheduler reaches the extender, e.g. "
                        "http://127.0.0.1:8888")
    config.add_argument("--as-profile", metavar="NAME", help="a second scheduler profile NAME for pods with "
                        "schedulerName: NAME, instead of the default profile")
    config.add_argument("--weight", type=int, default=1, help="weight of the extender's scores (default 1)")
    config.add_argument("--node-cache-capable", nargs="?", const=True, default=True, type=flags.parse_bool,
                        metavar="BOOL", help="send node names, not Nodes (default true)")
    config.add_argument("--ignorable", nargs="?", const=True, default=True, type=flags.parse_bool, metavar="BOOL",
                        help="schedule without the extender while it is unreachable (default true)")
    config.add_argument("--http-timeout", default="5s", help="per-call timeout (default 5s)")
    config.add_argument("--scheduler-kubeconfig", metavar="PATH",
                        help="clientConnection.kubeconfig of kube-scheduler (its --kubeconfig flag is ignored "
                             "once a config file is given)")
    config.add_argument("--ca-file", metavar="PATH", help="CA that signed the extender's certificate (https)")
    config.set_defaults(func=_run_config)
    crd = commands.add_parser("crd", help="print the ClusterProfile CustomResourceDefinition (YAML)")
    crd.set_defaults(func=_run_crd)


def _fail(message: str, code: int = 2) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return code


def _run_config(args: argparse.Namespace) -> int:
    from scheduler.config import scheduler_config

    try:
        config = scheduler_config(args.url, as_profile=args.as_profile, weight=args.weight,
                                  node_cache_capable=args.node_cache_capable, ignorable=args.ignorable,
                                  timeout=args.http_timeout, kubeconfig=args.scheduler_kubeconfig,
                                  ca_file=args.ca_file)
    except ValueError as exc:
        return _fail(str(exc))
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0


def _run_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(yaml.safe_dump(clusterprofile.crd(), sort_keys=False))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from scheduler.extender import Missing, Policy, Strategy
    from scheduler.server import ServerOptions, serve

    try:
        logs.setup(args.log_level, args.log_format)
    except ValueError as exc:
        return _fail(str(exc))
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        return _fail("--tls-cert-file and --tls-key-file go together")
    for f in (args.tls_cert_file, args.tls_key_file):
        if f is not None and not f.is_file():
            return _fail(f"{f}: no such file")
    if args.kubeconfig and not any(os.path.exists(os.path.expanduser(p)) for p in args.kubeconfig.split(os.pathsep)):
        return _fail(f"kubeconfig {args.kubeconfig} does not exist")
    options = ServerOptions(
        port=args.port, bind_address=args.bind_address, tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file, install_crd=args.install_crd, max_request_bytes=args.max_request_bytes,
        policy=Policy(strategy=Strategy(args.strategy), missing=Missing(args.missing_profile),
                      max_age=args.profile_max_age),
    )
    try:
        return asyncio.run(serve(args.kubeconfig, options, args.qps, args.burst))
    except OSError as exc:
        return _fail(f"cannot serve: {exc}", 1)
    except KeyboardInterrupt:
        return 130
