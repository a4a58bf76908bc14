"""The ``tensile`` command: one binary, kubectl-style subcommands.

Each subcommand lives with its component and registers itself here through a
``register(subparsers)`` function, so this module only wires them together
and imports a component's code only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
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
    ("join", "tensile.join_cli"),
    ("unjoin", "tensile.join_cli"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (start-up stays fast)."""
    parser = argparse.ArgumentParser(
        prog="tensile",
        description="Treat each lower Kubernetes cluster as one virtual node of an upper cluster.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # A module may register several subcommands (join and unjoin): import and register each once.
    modules = dict.fromkeys(module for name, module in SUBCOMMANDS if only is None or name == only)
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return parser


def _subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, when it names a known one first."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in dict(SUBCOMMANDS) else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_subcommand(argv))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
