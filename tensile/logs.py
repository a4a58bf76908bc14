"""Logs for people and for pipelines, with the object and cluster involved.

Two formats, one set of fields:

- ``text`` (the default on a terminal): klog-like lines,
  ``I1201 23:02:35.123456 tensile.pods] created lower pod namespace="ns" pod="web-0" cluster="c1"``;
- ``json`` (the default otherwise, and ``--log-format json``): one object per
  line, ``{"ts", "level", "logger", "msg", ...fields}``, for jq and log
  pipelines.

Verbosity works like a Kubernetes component's ``-v``: 0 logs what an
operator needs, 2 adds steady-state changes, 4 debug lines (informer lists,
watch restarts, reconcile decisions), 5 every queue hand-off and lease
renewal, 6 every API request (verb, path, code, seconds; never a body).
``V(n)`` is the logging level of a line at verbosity ``n``.

Controllers log through ``log.info(msg, extra=fields(...))`` so every line
about a pod carries its namespace/name and the cluster. Secret data is never
passed to a logger: only names, and request paths without bodies.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, TextIO

import orjson

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}
FORMATS = ("auto", "text", "json")
#: Names accepted for ``-v`` besides numbers.
NAMED_LEVELS = {"debug": 10, "info": 0, "warning": -1, "warn": -1, "error": -2}


def V(n: int) -> int:
    """The logging level of a line at verbosity ``n`` (``log.log(V(4), ...)``); V(0) is INFO."""
    return logging.INFO - max(0, min(n, 10))


for _n in range(1, 11):
    logging.addLevelName(V(_n), f"V{_n}")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _verbosity(levelno: int) -> int | None:
    return logging.INFO - levelno if logging.DEBUG <= levelno < logging.INFO else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        verbosity = _verbosity(record.levelno)
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": "debug" if verbosity is not None else record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if verbosity is not None:
            out["v"] = verbosity
        out.update(_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _text_value(value: Any) -> str:
    """klog's rendering: strings quoted (JSON escapes), numbers, lists and maps as JSON."""
    return orjson.dumps(value, default=str).decode()


class TextFormatter(logging.Formatter):
    """klog's header (severity letter, date, time, logger) and ``key="value"`` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        severity = "I" if record.levelno < logging.WARNING else record.levelname[0]
        verbosity = _verbosity(record.levelno)
        head = f"{severity}{created:%m%d %H:%M:%S.%f} {record.name}]"
        if verbosity is not None:
            head += f" V{verbosity}"
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        line = f"{head} {record.getMessage()}" + (f" {pairs}" if pairs else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def verbosity(level: str | int) -> int:
    """``-v`` as a number: ``4``, ``"4"``, ``"debug"`` (10), ``"info"`` (0), ``"warning"`` (-1)."""
    if isinstance(level, int):
        return level
    text = level.strip().lower()
    if text.lstrip("-").isdigit():
        return int(text)
    if text not in NAMED_LEVELS:
        raise ValueError(f"unknown log level {level!r}: use a number (0-10) or debug, info, warning, error")
    return NAMED_LEVELS[text]


def root_level(v: int) -> int:
    if v < 0:
        return logging.WARNING if v == -1 else logging.ERROR
    return V(v)


def setup(level: str | int = 0, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Log to stderr at verbosity ``level`` in ``fmt`` (auto: text on a terminal, else JSON)."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if out.isatty() else "json"
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(root_level(verbosity(level)))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Libraries log at DEBUG what only their authors need; tensile's own V(n) lines are enough.
    for noisy in ("asyncio", "kubernetes_asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def add_flags(parser: Any, default_level: str = "0") -> None:
    """``-v/--v/--log-level`` and ``--log-format``, the same for every component."""
    parser.add_argument("-v", "--v", "--log-level", dest="log_level", default=default_level, metavar="LEVEL",
                        help="verbosity like a Kubernetes component's -v: 0 (default), 2, 4 (debug), "
                             "6 (every API request); or debug, info, warning, error")
    parser.add_argument("--log-format", choices=FORMATS, default="auto",
                        help="text (klog-like lines) or json (one object per line); "
                             "auto (default): text on a terminal, json otherwise")


def fields(obj_key: str | None = None, kind: str = "pod", **kw: Any) -> dict[str, Any]:
    """``extra=`` for a log call about ``namespace/name``: ``{"namespace": ns, kind: name, ...}``.

    (``name`` itself is a LogRecord attribute and may not be used as a key.)
    """
    out = dict(kw)
    if obj_key:
        ns, _, name = obj_key.rpartition("/")
        out["namespace"], out[kind] = ns, name
    return out
