"""Authentication and authorization of kubelet API callers: certificates, TokenReview, SubjectAccessReview."""

from __future__ import annotations

from typing import Any

import pytest

from tensile.kube.errors import ApiError
from tensile.kubelet import auth
from tensile.kubelet.auth import Authenticator, Authorizer, AuthUnavailable, User
from tests.fakes import FakeKube

CERT = {"subject": ((("commonName", "kube-apiserver-kubelet-client"),), (("organizationName", "system:masters"),))}


def test_a_verified_certificate_names_user_and_groups() -> None:
    user = auth.user_from_certificate(CERT)
    assert user == User("kube-apiserver-kubelet-client", ("system:masters", auth.AUTHENTICATED))
    assert auth.user_from_certificate(None) is None
    assert auth.user_from_certificate({"subject": ((("organizationName", "x"),),)}) is None
    assert auth.user_from_certificate({"subject": (("bad",),)}) is None


def test_bearer_tokens_are_read_only_from_bearer_headers() -> None:
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer   abc ") == "abc"
    assert auth.bearer_token("Basic abc") is None
    assert auth.bearer_token("Bearer ") is None
    assert auth.bearer_token(None) is None


def _reviewing(upper: FakeKube, authenticated: bool = True) -> list[str]:
    seen: list[str] = []

    def review(_: str, body: Any) -> dict[str, Any]:
        seen.append(body["spec"]["token"])
        user = {"username": "system:serviceaccount:ns:sa", "uid": "u", "groups": ["system:serviceaccounts"],
                "extra": {"authentication.kubernetes.io/pod-name": ["p"]}}
        return {"status": {"authenticated": authenticated, "user": user if authenticated else {}}}

    upper.answer("POST", auth.TOKEN_REVIEWS, review)
    return seen


async def test_tokens_are_reviewed_once_and_cached() -> None:
    upper = FakeKube("upper")
    seen = _reviewing(upper)
    authn = Authenticator(upper)  # type: ignore[arg-type]
    reviews: list[str] = []
    authn.on_review = reviews.append
    user = await authn.authenticate(None, "Bearer t1")
    assert user is not None and user.name == "system:serviceaccount:ns:sa" and user.uid == "u"
    assert user.extra == (("authentication.kubernetes.io/pod-name", ("p",)),)
    assert await authn.authenticate(None, "Bearer t1") == user
    assert seen == ["t1"] and reviews == ["TokenReview"]


async def test_a_certificate_wins_over_a_token_and_unknown_tokens_get_none() -> None:
    upper = FakeKube("upper")
    seen = _reviewing(upper, authenticated=False)
    authn = Authenticator(upper)  # type: ignore[arg-type]
    assert (await authn.authenticate(CERT, "Bearer t")).name == "kube-apiserver-kubelet-client"  # type: ignore[union-attr]
    assert seen == []
    assert await authn.authenticate(None, "Bearer bad") is None
    assert await authn.authenticate(None, None) is None


async def test_anonymous_only_when_allowed_and_tokens_only_with_the_webhook() -> None:
    assert await Authenticator(None).authenticate(None, "Bearer t") is None
    user = await Authenticator(None, anonymous=True).authenticate(None, None)
    assert user is not None and user.anonymous and user.groups == (auth.UNAUTHENTICATED,)


async def test_an_upper_outage_is_not_a_denial() -> None:
    upper = FakeKube("upper")
    upper.answer("POST", auth.TOKEN_REVIEWS, ApiError(0, "ConnectionError", "down"))
    with pytest.raises(AuthUnavailable):
        await Authenticator(upper).authenticate(None, "Bearer t")  # type: ignore[arg-type]
    upper.answer("POST", auth.ACCESS_REVIEWS, ApiError(503, "ServiceUnavailable", "down"))
    with pytest.raises(AuthUnavailable):
        await Authorizer(upper, "vk").authorize(User("u"), "get", ("proxy",))  # type: ignore[arg-type]


async def test_access_reviews_ask_for_the_nodes_subresource_fall_back_and_cache() -> None:
    upper = FakeKube("upper")
    asked: list[dict[str, Any]] = []

    def review(_: str, body: Any) -> dict[str, Any]:
        asked.append(body["spec"])
        allowed = body["spec"]["resourceAttributes"]["subresource"] == "proxy"
        return {"status": {"allowed": allowed, "reason": "" if allowed else "no RBAC rule"}}

    upper.answer("POST", auth.ACCESS_REVIEWS, review)
    authz = Authorizer(upper, "vk")  # type: ignore[arg-type]
    user = User("alice", ("devs",), "uid-a", (("k", ("v",)),))
    decision = await authz.authorize(user, "get", ("pods", "proxy"))
    assert decision.allowed
    assert [a["resourceAttributes"]["subresource"] for a in asked] == ["pods", "proxy"]
    assert asked[0] == {"user": "alice", "groups": ["devs"], "uid": "uid-a", "extra": {"k": ["v"]},
                        "resourceAttributes": {"verb": "get", "group": "", "version": "v1", "resource": "nodes",
                                               "subresource": "pods", "name": "vk"}}
    await authz.authorize(user, "get", ("pods", "proxy"))
    assert len(asked) == 2  # both answers cached
    denied = await authz.authorize(user, "create", ("stats",))
    assert not denied.allowed and "nodes/stats" in denied.reason and "no RBAC rule" in denied.reason


async def test_always_allow_asks_nobody_and_webhook_needs_a_client() -> None:
    assert (await Authorizer(None, "vk", auth.ALWAYS_ALLOW).authorize(User("x"), "get", ("proxy",))).allowed
    with pytest.raises(ValueError):
        Authorizer(None, "vk")
    with pytest.raises(ValueError):
        Authorizer(None, "vk", "RBAC")
