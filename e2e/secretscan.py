"""Secret values never reach a log or an Event: checked after every e2e test, across the whole suite.

What is looked for:

- values made with :func:`secret_value` (``tensile-secret-<label>-<random>``): tests that create
  Secrets use it, so even a Secret created and deleted within a test is covered;
- the values of every Secret in every live local cluster, read at each check: long values whole,
  and the long unbroken runs inside multi-line ones (a key in a PEM block, a token in a
  kubeconfig). Certificates (``*.crt`` keys) are public and skipped, and so are short values,
  which would match by chance.

Where: every log a harness :class:`~e2e.process.Process` of this interpreter wrote (components,
virtual nodes, webhook, extender, descheduler), plus the other ``*.log`` files beside them (audit
logs), each read from where the previous check stopped; and the Events of every live local cluster.
A value is also looked for JSON-escaped, as the JSON and klog-like text logs write strings.

When: right after each test's body (:func:`pytest_runtest_call`), while the clusters the test
started are still up; a hit fails that test, naming the file and line or the Event. Logs written
while a module's clusters stop are checked once more at the module's end
(:func:`secret_values_stay_out_of_logs_at_module_end`). Everything is per interpreter, so under
pytest-xdist each worker checks the processes it started.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import process

PREFIX = "tensile-secret-"
#: Values shorter than this are not harvested from clusters: too likely to match by chance.
MIN_HARVESTED = 16
#: Unbroken runs at least this long inside a multi-line value are looked for on their own.
MIN_RUN = 32
#: Bytes re-read before a file's previous end, so a value split across two checks is still found.
OVERLAP = 4096
SKIPPED_KEYS = frozenset({"ca.crt", "namespace"})
_RUNS = re.compile(r"[^\s\"'`,:;{}\[\]]{" + str(MIN_RUN) + ",}")

#: value -> where it came from (a test, or cluster/namespace/name/key).
VALUES: dict[str, str] = {}
_OFFSETS: dict[Path, int] = {}


def secret_value(label: str = "value") -> str:
    """A unique, recognisable Secret value, registered so no log or Event may ever contain it."""
    value = f"{PREFIX}{label}-{secrets.token_hex(8)}"
    VALUES[value] = os.environ.get("PYTEST_CURRENT_TEST", "a test").split(" ")[0]
    return value


def b64(value: str) -> str:
    """``value`` as a Secret's ``data`` holds it."""
    return base64.b64encode(value.encode()).decode()


def needles(value: str) -> list[str]:
    """What to look for of one harvested value: itself when long and on one line, and its long runs."""
    out = []
    if len(value) >= MIN_HARVESTED and not any(ch.isspace() for ch in value):
        out.append(value)
    out.extend(run for run in _RUNS.findall(value) if run != value)
    return out


def harvest(items: list[dict[str, Any]], cluster: str) -> int:
    """Register the values of these Secrets (a list's ``items``); returns how many are new."""
    before = len(VALUES)
    for secret in items:
        meta = secret.get("metadata") or {}
        for key, data in (secret.get("data") or {}).items():
            if key in SKIPPED_KEYS or key.endswith(".crt") or not isinstance(data, str):
                continue
            try:
                value = base64.b64decode(data).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            for needle in needles(value):
                VALUES.setdefault(needle, f"Secret {cluster}/{meta.get('namespace')}/{meta.get('name')} key {key}")
    return len(VALUES) - before


def _forms(value: str) -> set[bytes]:
    return {value.encode(), json.dumps(value)[1:-1].encode()}


def _redacted(value: str) -> str:
    return value if value.startswith(PREFIX) else f"{value[:6]}…({len(value)} characters)"


def find(data: bytes, values: dict[str, str] | None = None, new_from: int = 0) -> list[tuple[str, int]]:
    """(value, offset) of every registered value in ``data`` that ends at or after ``new_from``."""
    hits = []
    for value in values if values is not None else VALUES:
        for form in _forms(value):
            at = data.find(form, max(0, new_from - len(form) + 1))
            if at >= 0:
                hits.append((value, at))
                break
    return hits


def log_files() -> list[Path]:
    """Every log this interpreter's harness processes wrote, and the ``*.log`` files beside them."""
    files = set(process.LOGS)
    for directory in {p.parent for p in process.LOGS}:
        if directory.is_dir():
            files.update(directory.glob("*.log"))
    return sorted(f for f in files if f.is_file())


def scan_logs() -> list[str]:
    """The hits in what the logs gained since the last scan, as messages."""
    problems = []
    for path in log_files():
        size = path.stat().st_size
        start = _OFFSETS.get(path, 0)
        if size < start:  # rewritten
            start = 0
        if size == start:
            continue
        begin = max(0, start - OVERLAP)
        with open(path, "rb") as f:
            f.seek(begin)
            data = f.read(size - begin)
        _OFFSETS[path] = size
        for value, at in find(data, new_from=start - begin):
            line = data.count(b"\n", 0, at) + (_line_of(path, begin) if begin else 1)
            problems.append(f"{path}:{line}: the value of {VALUES[value]} ({_redacted(value)})")
    return problems


def _line_of(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


class _Cluster:
    """A live local cluster, reached with its admin kubeconfig."""

    def __init__(self, directory: Path) -> None:
        config = yaml.safe_load((directory / "admin.kubeconfig").read_text())
        self.name = directory.name
        self.server = config["clusters"][0]["cluster"]["server"]
        user = config["users"][0]["user"]
        self.context = ssl.create_default_context(cafile=config["clusters"][0]["cluster"]["certificate-authority"])
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.server + path, context=self.context, timeout=10) as r:
            body: bytes = r.read()
            return body


def live_clusters() -> list[_Cluster]:
    """Every local cluster whose apiserver this interpreter started and is still running."""
    out = []
    for proc in list(process.STARTED):
        if proc.name == "kube-apiserver" and proc.alive() and (proc.log_path.parent / "admin.kubeconfig").exists():
            out.append(_Cluster(proc.log_path.parent))
    return sorted(out, key=lambda c: c.name)


def check_clusters() -> list[str]:
    """Harvest every live cluster's Secrets, then look for all values in its Events."""
    clusters = []
    for cluster in live_clusters():
        try:
            harvest(json.loads(cluster.get("/api/v1/secrets")).get("items") or [], cluster.name)
            clusters.append(cluster)
        except (OSError, ValueError):
            continue  # an apiserver a test holds down: its Events are checked at the next test
    problems = []
    for cluster in clusters:
        try:
            events = cluster.get("/api/v1/events")
        except OSError:
            continue
        for value, at in find(events):
            start = events.rfind(b'"name":', 0, at)
            where = events[start:start + 120].decode(errors="replace") if start >= 0 else ""
            problems.append(f"an Event of cluster {cluster.name} ({where}...): the value of {VALUES[value]} "
                            f"({_redacted(value)})")
    return problems


def check() -> list[str]:
    """Everything found since the last check, as messages (none: all clean)."""
    problems = check_clusters()
    if VALUES:
        problems += scan_logs()
    else:
        for path in log_files():  # nothing to look for yet; start later checks from here
            _OFFSETS[path] = path.stat().st_size
    return problems


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail("Secret values found where they must never be:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test's body, before its fixtures stop anything: its Secrets, Events and logs."""
    yield  # a failing test raises here and is reported as it is
    _fail_on(check())


@pytest.fixture(scope="module", autouse=True)
def secret_values_stay_out_of_logs_at_module_end() -> Iterator[None]:
    """What components logged while the module's clusters stopped (their Events are gone by then)."""
    yield
    if VALUES:
        _fail_on(scan_logs())
