"""The ``tensile`` command: one binary, kubectl-style subcommands.

Each subcommand lives with its component and registers itself here through a
``register(subparsers)`` function, so this module only wires them together
and imports a component's code only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence

#: (subcommand, module that provides ``register``)
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("virtual-node", "tensile.controllers.cli"),
    ("webhook", "webhook.cli"),
    ("scheduler", "scheduler.cli"),
    ("descheduler", "descheduler.cli"),
    ("rbac", "tensile.controllers.rbac_cli"),
    ("topology", "topology.cli"),
    ("cluster", "e2e.clustercli"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensile",
        description="Treat each lower Kubernetes cluster as one virtual node of an upper cluster.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in SUBCOMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
