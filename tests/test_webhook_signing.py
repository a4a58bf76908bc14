"""webhook.signing: the clusterSelector annotation's HMAC and the key derivation."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from webhook.signing import MIN_SECRET_BYTES, derive_key, sign, verify

KEY = derive_key(b"-----BEGIN PRIVATE KEY-----\n" + b"k" * 64)


def test_key_is_derived_with_a_context_not_used_as_is() -> None:
    secret = b"s" * 64
    assert len(derive_key(secret)) == 32
    assert derive_key(secret) == derive_key(secret)
    assert derive_key(secret) != hashlib.sha256(secret).digest()
    assert derive_key(secret) != derive_key(secret + b"\n")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        derive_key(b"x" * (MIN_SECRET_BYTES - 1))
    with pytest.raises(ValueError):
        derive_key(b"")


def test_signature_is_unpadded_base64url_hmac_sha256() -> None:
    digest = hmac.new(KEY, b"ns\n{}", hashlib.sha256).digest()
    assert sign(KEY, "ns", "{}") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "=" not in sign(KEY, "ns", "{}")


def test_verify_checks_value_namespace_and_key() -> None:
    signature = sign(KEY, "ns", '{"nodeSelector":{}}')
    assert verify(KEY, "ns", '{"nodeSelector":{}}', signature)
    assert not verify(KEY, "other", '{"nodeSelector":{}}', signature)
    assert not verify(KEY, "ns", '{"nodeSelector":{"a":"b"}}', signature)
    assert not verify(derive_key(b"o" * 64), "ns", '{"nodeSelector":{}}', signature)


def test_namespace_and_value_cannot_be_shifted_into_each_other() -> None:
    assert sign(KEY, "ab", "c") != sign(KEY, "a", "bc")


@pytest.mark.parametrize("signature", [None, 5, "", "x", "é", "\ud800"])
def test_missing_or_garbage_signatures_do_not_verify(signature: object) -> None:
    assert not verify(KEY, "ns", "{}", signature)


def test_missing_or_garbage_values_do_not_verify() -> None:
    assert not verify(KEY, "ns", None, sign(KEY, "ns", "None"))
    assert not verify(KEY, "ns", {"a": 1}, "x")
    assert verify(KEY, "ns", "\ud800", sign(KEY, "ns", "\ud800"))  # lone surrogates do not crash
