"""``tensile topology``: discover the mesh among the given clusters, print it, draw it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from topology import discover, graph, render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "topology",
        help="show the clusters and virtual nodes among some clusters, and the rings among them",
        description="Read every given cluster, find its virtual nodes and where they lead, print the mesh "
                    "(clusters, virtual nodes with the pods placed through them, Ready or not), report rings and "
                    "which placements the loop rule blocks, and draw it.",
    )
    p.add_argument("--kubeconfig", action="append", required=True, metavar="PATH",
                   help="a cluster's kubeconfig (its current context); repeat once per cluster")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.png",
                   help="write the picture here (PNG) and its Graphviz DOT text beside it (FILE.dot); "
                        "a .dot path writes only the DOT text")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS", help="per request (default 15)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in args.kubeconfig:
        if not os.path.exists(path):
            print(f"tensile topology: kubeconfig {path} does not exist", file=sys.stderr)
            return 2
    if args.out is not None and args.out.suffix.lower() not in (".png", ".dot"):
        print("tensile topology: --out must end in .png or .dot", file=sys.stderr)
        return 2
    try:
        seen = [discover.read(path, args.timeout) for path in args.kubeconfig]
    except discover.DiscoveryError as exc:
        print(f"tensile topology: {exc}", file=sys.stderr)
        return 1
    g = graph.build(discover.facts(seen))
    sys.stdout.write(graph.describe(g))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for written in render.write(g, args.out):
            print(f"wrote {written}")
    return 0
