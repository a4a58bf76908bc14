"""Kubernetes timestamps: ``metav1.Time`` (seconds) and ``metav1.MicroTime``, written and read.

Pure (the clock is read, nothing else).
"""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(when: datetime.datetime | None = None) -> str:
    """``metav1.Time``: whole seconds, UTC, as the apiserver writes it."""
    return (when or utc_now()).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(when: datetime.datetime | None = None) -> str:
    """``metav1.MicroTime``, as Leases and Events carry it."""
    return (when or utc_now()).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(value: object) -> datetime.datetime | None:
    """An RFC 3339 time (with or without fraction); ``None`` for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
