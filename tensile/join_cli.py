"""``tensile join`` and ``tensile unjoin``: link a lower cluster to an upper one, and undo it (see ``tensile.join``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from tensile import flags


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _common(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("KUBECONFIG")
    p.add_argument("--upper-kubeconfig", type=_path, default=_path(default) if default else None, metavar="PATH",
                   help="the upper cluster, where the virtual node appears (default: $KUBECONFIG)")
    p.add_argument("--lower-kubeconfig", type=_path, required=True, metavar="PATH",
                   help="the lower cluster, with rights to create its ServiceAccount, role and policy")
    p.add_argument("--name", required=True, help="the virtual node's name, e.g. vk-east")
    p.add_argument("--namespace", default="tensile-system",
                   help="namespace of tensile's objects in both clusters (default tensile-system)")


def register(subparsers: Any) -> None:
    j = subparsers.add_parser(
        "join", help="link a lower cluster to the upper one through a virtual node",
        description="Create a ServiceAccount in the lower cluster bound to the lower-side role, mint a kubeconfig "
                    "for it (TokenRequest), store it as a Secret upstairs, and install (--install) or print "
                    "(--print, the default) the virtual node's RBAC and Deployment. Running it again renews the "
                    "token and changes nothing else.")
    _common(j)
    mode = j.add_mutually_exclusive_group()
    mode.add_argument("--install", action="store_true", help="apply the virtual node's RBAC and Deployment upstairs")
    mode.add_argument("--print", dest="install", action="store_false",
                      help="print them instead, for kubectl apply -f - or a GitOps repository (default)")
    j.add_argument("--lower-server", default=None, metavar="URL",
                   help="the lower apiserver as the virtual node's pod reaches it (default: the lower kubeconfig's)")
    j.add_argument("--token-duration", type=flags.parse_duration, default=365 * 24 * 3600.0, metavar="DURATION",
                   help="lifetime of the minted lower token (default 8760h; the apiserver may cap it)")
    j.add_argument("--image", default=None, help="the tensile image of the virtual node's Deployment")
    j.add_argument("--virtual-node-flag", action="append", default=[], metavar="FLAG",
                   help="an extra flag for the virtual node, e.g. --virtual-node-flag=--namespace-mapping=suffixed "
                        "(repeatable)")
    j.set_defaults(func=run_join)
    u = subparsers.add_parser(
        "unjoin", help="remove what join made in both clusters",
        description="Remove the virtual node's Deployment, RBAC, Secret, Node and Leases upstairs and its "
                    "ServiceAccount downstairs, and report the copies left in the lower cluster (--purge removes "
                    "them too).")
    _common(u)
    u.add_argument("--purge", action="store_true", help="also remove the copies tensile made in the lower cluster")
    u.set_defaults(func=run_unjoin)


def run_join(args: argparse.Namespace) -> int:
    from tensile import join, manifests
    from tensile.joinplan import JoinError

    options = join.JoinOptions(
        upper_kubeconfig=args.upper_kubeconfig, lower_kubeconfig=args.lower_kubeconfig, name=args.name,
        namespace=args.namespace, install=args.install, lower_server=args.lower_server,
        token_seconds=max(600, int(args.token_duration)), image=args.image or manifests.DEFAULT_IMAGE,
        flags=tuple(args.virtual_node_flag))
    try:
        printed = asyncio.run(join.join(options))
    except JoinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(printed)
    return 0


def run_unjoin(args: argparse.Namespace) -> int:
    from tensile import join
    from tensile.joinplan import JoinError

    options = join.UnjoinOptions(upper_kubeconfig=args.upper_kubeconfig, lower_kubeconfig=args.lower_kubeconfig,
                                 name=args.name, namespace=args.namespace, purge=args.purge)
    try:
        report = asyncio.run(join.unjoin(options))
    except JoinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0
