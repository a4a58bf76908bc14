"""``tensile virtual-node``: flags named like Tensile Kube's and the kubelet's."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from tensile import logs
from tensile.controllers.context import Config
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile")


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    return key, val


def kubeconfig_exists(value: str) -> bool:
    """``$KUBECONFIG`` may list several files, as for kubectl; the ones that exist are merged."""
    return any(os.path.exists(os.path.expanduser(part)) for part in value.split(os.pathsep) if part)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "virtual-node",
        help="project a lower cluster into the upper cluster as one node",
        description="Register NODENAME in the upper cluster with the lower cluster's capacity and run "
                    "the pods bound to it in the lower cluster.",
    )
    p.add_argument("--nodename", required=True, help="name of the virtual Node in the upper cluster")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="upper cluster kubeconfig (default: $KUBECONFIG, else in-cluster)")
    p.add_argument("--client-kubeconfig", required=True, help="lower cluster kubeconfig")
    p.add_argument("--cluster-id", default="", help="clusterID label value (default: lower kube-system UID)")
    p.add_argument("--node-label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                   help="extra label on the virtual Node (repeatable)")
    p.add_argument("--disable-taint", action="store_true", help="do not taint the virtual Node")
    p.add_argument("--node-ip", default=os.environ.get("VKUBELET_POD_IP", ""),
                   help="address advertised for the kubelet API (default: $VKUBELET_POD_IP or this host's)")
    p.add_argument("--kubelet-port", type=int, default=10250, help="kubelet API port advertised in the Node")
    p.add_argument("--metrics-port", type=int, default=10255, help="/healthz, /readyz, /metrics port (0: off)")
    p.add_argument("--qps", type=float, default=200.0, help="upper cluster client QPS")
    p.add_argument("--burst", type=int, default=400, help="upper cluster client burst")
    p.add_argument("--client-qps", type=float, default=200.0, help="lower cluster client QPS")
    p.add_argument("--client-burst", type=int, default=400, help="lower cluster client burst")
    p.add_argument("--lower-unreachable-grace", type=float, default=40.0, metavar="SECONDS",
                   help="how long the lower apiserver may be unreachable before the Node turns NotReady")
    p.add_argument("--flat-network", action="store_true",
                   help="pod IPs route between clusters: copy Services without selector plus the upper "
                        "EndpointSlices (Tensile Kube's mode) instead of letting the lower cluster select pods")
    p.add_argument("--node-credentials", action="store_true",
                   help="the upper credentials are a kubelet's (system:node:NODENAME under the Node authorizer and "
                        "NodeRestriction): follow only what pods refer to; no role/managed-by labels, no mirror PVs")
    p.add_argument("--pod-workers", type=int, default=8)
    p.add_argument("--dependency-gc-delay", type=float, default=10.0, metavar="SECONDS",
                   help="how long a lower ConfigMap/Secret/PVC/ServiceAccount copy stays after its last pod is gone, "
                        "so a Recreate rollout does not lose it between old and new pods (default 10)")
    p.add_argument("-v", "--log-level", default="info", help="debug, info, warning, or a number like kubectl -v")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    from tensile.controllers import runner

    config = Config(
        node_name=args.nodename,
        cluster_id=args.cluster_id,
        node_labels=dict(args.node_label),
        taint=not args.disable_taint,
        node_ip=args.node_ip,
        kubelet_port=args.kubelet_port,
        metrics_port=args.metrics_port,
        lower_unreachable_grace=args.lower_unreachable_grace,
        pod_workers=args.pod_workers,
        dependency_gc_delay=args.dependency_gc_delay,
        flat_network=args.flat_network,
        node_credentials=args.node_credentials,
    )
    if args.node_credentials and args.flat_network:
        print("tensile virtual-node: --flat-network copies EndpointSlices, which node credentials may not read",
              file=sys.stderr)
        return 2
    for f in (args.kubeconfig, args.client_kubeconfig):
        if f and not kubeconfig_exists(f):
            print(f"tensile virtual-node: kubeconfig {f} does not exist", file=sys.stderr)
            return 2
    try:
        return asyncio.run(runner.run(
            config, args.kubeconfig, args.client_kubeconfig, (args.qps, args.burst, args.client_qps, args.client_burst)
        ))
    except ApiError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("tensile virtual-node: caches did not sync in time; is each apiserver reachable?", file=sys.stderr)
        return 1
