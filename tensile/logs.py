"""Structured logs: one JSON object per line, with the object and cluster involved.

Controllers log through ``log.info(msg, extra=fields(...))`` so every line
about a pod carries its namespace/name and the clusters involved, and can
be filtered with jq. Secret data is never passed to a logger; only names.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str | int = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if isinstance(level, str) and level.isdigit():
        level = int(level)
    if isinstance(level, int):
        # -v N like kubectl: 0-1 info, 2+ debug.
        root.setLevel(logging.DEBUG if level >= 2 else logging.INFO)
    else:
        root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def fields(obj_key: str | None = None, kind: str = "pod", **kw: Any) -> dict[str, Any]:
    """``extra=`` for a log call about ``namespace/name``: ``{"namespace": ns, kind: name, ...}``.

    (``name`` itself is a LogRecord attribute and may not be used as a key.)
    """
    out = dict(kw)
    if obj_key:
        ns, _, name = obj_key.rpartition("/")
        out["namespace"], out[kind] = ns, name
    return out
