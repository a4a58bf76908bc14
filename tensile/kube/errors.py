"""API errors as one exception type with the questions controllers ask of it.

Controllers never swallow these: a reconcile that raises is retried with
backoff by the work queue and reported (log line, Warning Event); expected
outcomes (404 on delete, 409 AlreadyExists on create) are checked with the
properties here, not by string matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

NOT_LEADER = "NotLeader"


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """``Retry-After`` as a whole number of seconds, as client-go reads it; None when absent or not one."""
    value = (headers or {}).get("Retry-After")
    if value is None:
        return None
    try:
        seconds = int(value)
    except ValueError:
        return None
    return float(seconds) if seconds >= 0 else None


class ApiError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        #: The answer's ``Retry-After`` in seconds, when it had one that is a number (client-go reads
        #: only delta-seconds, not an HTTP date).
        self.retry_after = retry_after

    @classmethod
    def from_response(
        cls, status: int, raw: bytes, method: str, url_path: str, headers: Mapping[str, str] | None = None
    ) -> ApiError:
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"message": raw[:500].decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"message": str(body)[:500]}
        return cls(status, str(body.get("reason", "")), f"{method} {url_path}: {body.get('message', '')}", body,
                   retry_after=retry_after_seconds(headers))

    @classmethod
    def connection(cls, exc: BaseException, method: str, url_path: str) -> ApiError:
        return cls(0, "ConnectionError", f"{method} {url_path}: {type(exc).__name__}: {exc}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def not_leader(self) -> bool:
        """Not sent: this replica does not hold the leader-election Lease (see ``tensile.kube.leader``)."""
        return self.reason == NOT_LEADER

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def retryable(self) -> bool:
        """The server asked to be asked again: a 429 (refused before any work, by the in-flight limit or
        priority and fairness), or a 5xx with ``Retry-After`` (client-go's ``checkWait``)."""
        return self.status == 429 or (self.status >= 500 and self.retry_after is not None)
