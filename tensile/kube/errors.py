"""API errors as one exception type with the questions controllers ask of it.

Controllers never swallow these: a reconcile that raises is retried with
backoff by the work queue and reported (log line, Warning Event); expected
outcomes (404 on delete, 409 AlreadyExists on create) are checked with the
properties here, not by string matching.
"""

from __future__ import annotations

from typing import Any

import orjson

NOT_LEADER = "NotLeader"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @classmethod
    def from_response(cls, status: int, raw: bytes, method: str, url_path: str) -> ApiError:
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"message": raw[:500].decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"message": str(body)[:500]}
        return cls(status, str(body.get("reason", "")), f"{method} {url_path}: {body.get('message', '')}", body)

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
