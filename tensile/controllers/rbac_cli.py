"""``tensile rbac``: print least-privilege RBAC (see ``tensile.rbac``).

``--nodename`` prints one virtual node's upper-cluster RBAC, ``--lower`` the lower cluster's
(ServiceAccount, ClusterRole, binding and the guard policy), and ``--chart-rules`` every role's rules
as the Helm chart reads them (``deploy/chart/files/rbac-rules.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from tensile.rbac import LOWER_SERVICE_ACCOUNT_PREFIX, chart_rules, lower_rbac, virtual_node_rbac


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rbac",
        help="print least-privilege RBAC (apply it with kubectl apply -f -)",
        description="Print the Namespace, ServiceAccount, ClusterRole, Lease Role and bindings one virtual node "
                    "needs in the upper cluster, its own Node and Lease narrowed by resourceNames; with --lower, "
                    "what it needs in the lower cluster; with --chart-rules, every component's rules.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--nodename", help="name of the virtual Node (upper-cluster RBAC)")
    what.add_argument("--lower", action="store_true",
                      help="lower-cluster RBAC: ServiceAccount, ClusterRole, binding, and the policy that lets "
                           "tensile change only its own objects")
    what.add_argument("--chart-rules", action="store_true", help="every role's rules, as the Helm chart reads them")
    p.add_argument("--namespace", default="tensile-system", help="namespace of the ServiceAccount")
    p.add_argument("--service-account", default=None,
                   help=f"ServiceAccount name (default tensile-virtual-node; {LOWER_SERVICE_ACCOUNT_PREFIX} with "
                        "--lower)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.chart_rules:
        sys.stdout.write(yaml.safe_dump(chart_rules(), sort_keys=False))
        return 0
    if args.lower:
        sa = args.service_account or LOWER_SERVICE_ACCOUNT_PREFIX
        if not sa.startswith(LOWER_SERVICE_ACCOUNT_PREFIX):
            print(f"error: a lower ServiceAccount's name must start with {LOWER_SERVICE_ACCOUNT_PREFIX} "
                  "(the guard policy matches that prefix)", file=sys.stderr)
            return 2
        docs = lower_rbac(args.namespace, sa)
    else:
        docs = virtual_node_rbac(args.nodename, args.namespace, args.service_account or "tensile-virtual-node")
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
