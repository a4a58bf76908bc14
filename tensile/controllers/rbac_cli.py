"""``tensile rbac``: print the least-privilege RBAC for one virtual node (see ``tensile.rbac``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from tensile.rbac import virtual_node_rbac


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rbac",
        help="print least-privilege RBAC for one virtual node (apply it with kubectl apply -f -)",
        description="Print the Namespace, ServiceAccount, ClusterRole, Lease Role and bindings one virtual node "
                    "needs in the upper cluster, its own Node and Lease narrowed by resourceNames.",
    )
    p.add_argument("--nodename", required=True, help="name of the virtual Node")
    p.add_argument("--namespace", default="tensile-system", help="namespace of the ServiceAccount")
    p.add_argument("--service-account", default="tensile-virtual-node", help="ServiceAccount name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    docs = virtual_node_rbac(args.nodename, args.namespace, args.service_account)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
