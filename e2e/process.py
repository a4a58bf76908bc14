"""Supervise one control-plane process: start, wait, stop, and its log.

Every component of a local cluster runs through this class so that start-up
failures report the log tail, every wait has a deadline, and shutdown always
ends the whole process group (SIGTERM, then SIGKILL), even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class ComponentFailed(RuntimeError):
    """A component died or never became ready; the message carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use_error(log_text: str) -> bool:
    return "address already in use" in log_text.lower()


#: Every log a harness process of this interpreter wrote to, for checks that read them all
#: (``e2e.secretscan``); and the processes themselves, while something holds them.
LOGS: set[Path] = set()
STARTED: weakref.WeakSet[Process] = weakref.WeakSet()


class Process:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        LOGS.add(self.log_path)
        STARTED.add(self)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.popen.returncode if self.popen else None
                raise ComponentFailed(f"{self.name} exited with {code} during start-up:\n{self.log_tail()}")
            try:
                if check():
                    return
            except OSError:
                pass  # not listening yet; the deadline bounds the wait
            time.sleep(interval)
        raise ComponentFailed(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


class Supervised:
    """``with thing:`` for harness parts that start, stop and keep a log.

    The part is stopped however the body ends; when the body fails, the log
    tail is printed first so the failure explains itself.
    """

    label = "component"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:
        raise NotImplementedError

    def on_failure(self) -> None:
        print(f"\n----- {self.label} -----\n{self.log_tail()}", file=sys.stderr)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            # A start that fails half-way (not ready in time, Ctrl-C) still leaves no process behind.
            self.on_failure()
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.on_failure()
        self.stop()
