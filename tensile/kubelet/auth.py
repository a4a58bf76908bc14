"""Who may call the kubelet API, decided as the kubelet decides it.

- **Authentication**: a client certificate the TLS handshake verified against
  ``--client-ca-file`` names the user (CN) and groups (O), the way the apiserver reads
  them; otherwise a bearer token is checked with a TokenReview against the upper
  cluster (``--authentication-token-webhook``). Neither: anonymous, refused with 401
  unless ``--anonymous-auth`` (then ``system:anonymous`` goes on to authorization).
- **Authorization**: a SubjectAccessReview against the upper cluster for
  ``nodes/<subresource>`` of this Node (``--authorization-mode=Webhook``), subresources
  chosen by :func:`tensile.kubelet.paths.subresources`. ``AlwaysAllow`` is there for
  tests and trusted networks only.

Answers are cached like the kubelet's webhook caches (authenticated 2 min, allowed
5 min, denied 30 s) in ``cachetools`` TTL caches, keyed by a hash of the token: a token
never appears in memory longer than the request, nor in any log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from cachetools import TTLCache

from tensile.kube.client import JSON, Kube
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.kubelet")

ANONYMOUS: Final = "system:anonymous"
UNAUTHENTICATED: Final = "system:unauthenticated"
AUTHENTICATED: Final = "system:authenticated"
TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
WEBHOOK: Final = "Webhook"
ALWAYS_ALLOW: Final = "AlwaysAllow"
AUTHORIZATION_MODES: Final = (WEBHOOK, ALWAYS_ALLOW)


class AuthUnavailable(RuntimeError):
    """The upper cluster could not answer a TokenReview or SubjectAccessReview."""


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS


def user_from_certificate(peercert: Mapping[str, Any] | None) -> User | None:
    """The user a verified client certificate names (``ssl.SSLSocket.getpeercert()``'s dict)."""
    if not peercert:
        return None
    name = ""
    groups: list[str] = []
    for rdn in peercert.get("subject") or ():
        for attr in rdn:
            if not isinstance(attr, (tuple, list)) or len(attr) != 2:
                continue
            if attr[0] == "commonName" and not name:
                name = str(attr[1])
            elif attr[0] == "organizationName":
                groups.append(str(attr[1]))
    if not name:
        return None
    return User(name, (*groups, AUTHENTICATED))


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _user_from_review(status: JSON) -> User | None:
    if not status.get("authenticated"):
        return None
    info = status.get("user") or {}
    name = info.get("username")
    if not isinstance(name, str) or not name:
        return None
    groups = tuple(g for g in info.get("groups") or [] if isinstance(g, str))
    extra = tuple(sorted((str(k), tuple(str(v) for v in (vals or [])))
                         for k, vals in (info.get("extra") or {}).items()))
    return User(name, groups, str(info.get("uid") or ""), extra)


class Authenticator:
    def __init__(self, upper: Kube | None, *, token_webhook: bool = True, anonymous: bool = False,
                 audiences: Sequence[str] = (), ttl: float = 120.0, max_entries: int = 4096) -> None:
        self.upper = upper
        self.token_webhook = token_webhook and upper is not None
        self.anonymous = anonymous
        self.audiences = list(audiences)
        self._tokens: TTLCache[str, User | None] = TTLCache(max_entries, ttl)
        self.reviews = 0
        #: Called with ``"TokenReview"`` for each review sent (metrics).
        self.on_review: Callable[[str], None] | None = None

    async def authenticate(self, peercert: Mapping[str, Any] | None, authorization: str | None) -> User | None:
        """The caller, or None when it must be refused with 401."""
        user = user_from_certificate(peercert)
        if user is not None:
            return user
        token = bearer_token(authorization)
        if token is not None and self.token_webhook:
            return await self._review(token)
        if token is None and self.anonymous:
            return User(ANONYMOUS, (UNAUTHENTICATED,))
        return None

    async def _review(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        if key in self._tokens:
            return self._tokens[key]
        assert self.upper is not None
        spec: JSON = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        self.reviews += 1
        if self.on_review is not None:
            self.on_review("TokenReview")
        try:
            review = await self.upper.create(TOKEN_REVIEWS, {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        except ApiError as exc:
            raise AuthUnavailable(f"TokenReview failed: {exc.status} {exc.reason}") from exc
        user = _user_from_review(review.get("status") or {})
        self._tokens[key] = user
        return user


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Authorizer:
    def __init__(self, upper: Kube | None, node_name: str, mode: str = WEBHOOK, *,
                 allowed_ttl: float = 300.0, denied_ttl: float = 30.0, max_entries: int = 4096) -> None:
        if mode not in AUTHORIZATION_MODES:
            raise ValueError(f"authorization mode {mode!r}: want one of {', '.join(AUTHORIZATION_MODES)}")
        if mode == WEBHOOK and upper is None:
            raise ValueError("Webhook authorization needs the upper cluster's client")
        self.upper = upper
        self.node_name = node_name
        self.mode = mode
        self._allowed: TTLCache[tuple[Any, ...], Decision] = TTLCache(max_entries, allowed_ttl)
        self._denied: TTLCache[tuple[Any, ...], Decision] = TTLCache(max_entries, denied_ttl)
        self.reviews = 0
        #: Called with ``"SubjectAccessReview"`` for each review sent (metrics).
        self.on_review: Callable[[str], None] | None = None

    async def authorize(self, user: User, verb: str, subresources: Sequence[str]) -> Decision:
        """Allowed when any of ``subresources`` of this Node is allowed for ``verb``."""
        if self.mode == ALWAYS_ALLOW:
            return Decision(True, "AlwaysAllow")
        reasons: list[str] = []
        for sub in subresources:
            decision = await self._one(user, verb, sub)
            if decision.allowed:
                return decision
            reasons.append(decision.reason or f"{verb} nodes/{sub} denied")
        subs = " or ".join(f"nodes/{s}" for s in subresources)
        return Decision(False, f'user "{user.name}" cannot {verb} resource {subs} of node "{self.node_name}"'
                               + (f": {'; '.join(r for r in reasons if r)}" if any(reasons) else ""))

    async def _one(self, user: User, verb: str, subresource: str) -> Decision:
        key = (user, verb, subresource)
        cached = self._allowed.get(key) or self._denied.get(key)
        if cached is not None:
            return cached
        assert self.upper is not None
        spec: JSON = {
            "user": user.name, "groups": list(user.groups),
            "resourceAttributes": {"verb": verb, "group": "", "version": "v1", "resource": "nodes",
                                   "subresource": subresource, "name": self.node_name},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        self.reviews += 1
        if self.on_review is not None:
            self.on_review("SubjectAccessReview")
        try:
            review = await self.upper.create(ACCESS_REVIEWS, {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})
        except ApiError as exc:
            raise AuthUnavailable(f"SubjectAccessReview failed: {exc.status} {exc.reason}") from exc
        status = review.get("status") or {}
        decision = Decision(bool(status.get("allowed")) and not status.get("denied"), str(status.get("reason") or ""))
        (self._allowed if decision.allowed else self._denied)[key] = decision
        return decision
