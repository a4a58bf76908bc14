"""Command-line flags every tensile component shares, named like Kubernetes components'.

Pure: argparse and parsing only. ``--leader-elect*`` are client-go's flags
(durations in Go syntax: ``15s``, ``1m30s``), ``--metrics-addr`` is
virtual-kubelet's (a bind address, ``:10255``), and a renamed flag keeps
working with Kubernetes' deprecation warning on stderr.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tensile import quantity
from tensile.quantity import ResourceList

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds from a Go duration (``1m30s``, ``500ms``) or a plain number of seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"invalid duration {value!r}: use 15s, 1m30s, 500ms or seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: must not be negative")
    return seconds


def parse_bind_address(value: str) -> tuple[str, int] | None:
    """``host:port``, ``:port`` (every interface), ``[::1]:port``; ``""`` or ``0`` turns the server off."""
    text = value.strip()
    if text in ("", "0"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"invalid address {value!r}: use HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {value!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"invalid port in {value!r}: must be 1-65535")
    return host, number


def resource_list(value: str) -> ResourceList:
    """``cpu=8,memory=32Gi,nvidia.com/gpu=4``: resource quantities, each checked."""
    resources: ResourceList = {}
    for item in value.split(","):
        name, sep, amount = item.strip().partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected RESOURCE=QUANTITY[,RESOURCE=QUANTITY...], got {value!r}")
        try:
            parsed = quantity.parse(amount.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from exc
        if parsed < 0:
            raise argparse.ArgumentTypeError(f"{name}: a capacity cannot be negative ({amount})")
        resources[name.strip()] = parsed
    return resources


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def port(value: str) -> int:
    """A TCP port, 0 to 65535."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range 0-65535")
    return number


def deprecated(parser: Any, old: str, new: str, convert: Callable[[str], Any] = str, **kw: Any) -> None:
    """``old`` still works, sets ``new``'s value (through ``convert``) and warns like kubectl does."""

    class Deprecated(argparse.Action):
        def __call__(self, p: argparse.ArgumentParser, ns: argparse.Namespace, values: str | Sequence[Any] | None,
                     option_string: str | None = None) -> None:
            print(f"Flag {option_string} has been deprecated, use {new} instead", file=sys.stderr)
            setattr(ns, self.dest, convert(str(values)))

    parser.add_argument(old, dest=new.lstrip("-").replace("-", "_"), action=Deprecated, help=argparse.SUPPRESS, **kw)


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool, which Kubernetes flags accept: ``--leader-elect=false``."""
    text = value.strip().lower()
    if text in ("1", "t", "true", "yes", "on"):
        return True
    if text in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}: use true or false")


def leader_identity() -> str:
    """client-go's default leader-election identity: the host name and a UUID, unique per process."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def add_leader_election_flags(parser: Any, default_on: bool | None, component: str, default_name: str,
                              default_note: str = "") -> None:
    """client-go's leader-election flags; the defaults are client-go's (15s, 10s, 2s)."""
    parser.add_argument("--leader-elect", nargs="?", const=True, default=default_on, type=parse_bool,
                        metavar="BOOL",
                        help=f"elect a leader among replicas of this {component} (--leader-elect=false: off): "
                             "only the replica holding the Lease writes, the others keep their caches warm to "
                             f"take over{default_note}")
    parser.add_argument("--leader-elect-lease-duration", type=parse_duration, default=15.0, metavar="DURATION",
                        help="how long followers wait after the last renewal before taking over (default 15s)")
    parser.add_argument("--leader-elect-renew-deadline", type=parse_duration, default=10.0, metavar="DURATION",
                        help="how long the leader keeps trying to renew before it stops writing (default 10s)")
    parser.add_argument("--leader-elect-retry-period", type=parse_duration, default=2.0, metavar="DURATION",
                        help="time between attempts to acquire or renew (default 2s)")
    parser.add_argument("--leader-elect-resource-name", default="", metavar="NAME",
                        help=f"name of the Lease (default: {default_name})")
    parser.add_argument("--leader-elect-resource-namespace", default="", metavar="NAMESPACE",
                        help="namespace of the Lease (default: this pod's namespace, else kube-system)")
    parser.add_argument("--leader-elect-resource-lock", default="leases", choices=["leases"],
                        help=argparse.SUPPRESS)


def add_metrics_flag(parser: Any, default: str, component: str) -> None:
    parser.add_argument("--metrics-addr", type=parse_bind_address, default=parse_bind_address(default),
                        metavar="ADDRESS",
                        help=f"where the {component} serves /metrics, /healthz and /readyz over plain HTTP "
                             f"(default {default}; \"\" or 0 turns it off)")
