"""Kubernetes resource quantities as exact fractions.

Capacity is a sum of many node and pod quantities; doing that in floats
drifts, and Kubernetes itself is exact. ``parse`` accepts every form the API
serialises (``100m``, ``1.5Gi``, ``2e3``, ``1k``); ``format`` writes the
shortest exact canonical-enough form the API accepts.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
}
_RE = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse(value: str | int | float) -> Fraction:
    """Parse a quantity; raises ``ValueError`` on anything Kubernetes would reject."""
    if isinstance(value, int | float):
        return Fraction(value)
    return _parse_str(value)


@functools.lru_cache(maxsize=4096)
def _parse_str(value: str) -> Fraction:
    # The same few strings ("100m", "128Mi") repeat across thousands of pods.
    m = _RE.match(value.strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = m.groups()
    try:
        base = Fraction(number)
    except ValueError as exc:
        raise ValueError(f"invalid quantity {value!r}") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix and suffix[0] in "eE":
        return base * Fraction(10) ** int(suffix[1:])
    return base * _DECIMAL[suffix]


def format(value: Fraction) -> str:
    """Exact where possible: whole units, else milli-units rounded up."""
    if value.denominator == 1:
        return str(value.numerator)
    milli = value * 1000
    whole = -(-milli.numerator // milli.denominator)  # ceil
    return f"{whole}m"


ResourceList = dict[str, Fraction]


def units(resource: str, amount: Fraction) -> int:
    """An amount in the unit kube-scheduler fits with: millicores for cpu, whole units otherwise.

    Rounded up, as ``Quantity.MilliValue`` and ``Quantity.Value`` do.
    """
    if resource == "cpu":
        amount = amount * 1000
    return math.ceil(amount)


def add(a: ResourceList, b: ResourceList) -> ResourceList:
    out = dict(a)
    add_into(out, b)
    return out


def add_into(total: ResourceList, b: ResourceList) -> None:
    """``total += b`` in place: the hot loop of capacity sums."""
    for k, v in b.items():
        total[k] = total[k] + v if k in total else v


def maximum(a: ResourceList, b: ResourceList) -> ResourceList:
    out = dict(a)
    for k, v in b.items():
        out[k] = max(out.get(k, Fraction(0)), v)
    return out


def parse_list(resources: dict[str, str] | None) -> ResourceList:
    out: ResourceList = {}
    for k, v in (resources or {}).items():
        try:
            out[k] = parse(v)
        except (ValueError, TypeError, ZeroDivisionError):
            continue  # an unparsable value cannot be counted; the apiserver would have rejected it
    return out


def format_list(resources: ResourceList) -> dict[str, str]:
    return {k: format(v) for k, v in sorted(resources.items())}
