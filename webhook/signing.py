"""Sign the ``clusterSelector`` annotation, so the webhook can tell its own from a pod author's.

The annotation decides the lower copy's constraints, while upper admission (quota, policy engines,
Pod Security) only checks the spec. If the webhook trusted any annotation it found, a pod author
could write constraints straight onto the lower copy. So the webhook stores an HMAC of the value
beside it (``tensile.io/cluster-selector-signature``), and treats an annotation whose HMAC does not
verify as the author's.

The HMAC covers the namespace: a signed annotation copied from a pod of another namespace, where
other admission rules apply, does not verify. It does not cover the pod's name: pods are routinely
created from a copy of another (a descheduler, ``kubectl get -o yaml | kubectl create -f -``), and
the same namespace means the same admission rules.

Pure: no I/O. The caller passes the key, which :func:`derive_key` makes from a secret every webhook
replica already shares (see ``webhook.server``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["MIN_SECRET_BYTES", "derive_key", "sign", "verify"]

#: Domain separation: the HMAC key is never the secret itself, nor what any other use derives.
_CONTEXT = b"tensile.io/cluster-selector-signature/v1\n"
#: Shorter secrets are refused: a guessable secret makes signatures forgeable.
MIN_SECRET_BYTES = 32


def derive_key(secret: bytes) -> bytes:
    """The 32-byte HMAC key derived from ``secret`` (e.g. the PEM bytes of the TLS serving key).

    Raises ``ValueError`` when ``secret`` is shorter than :data:`MIN_SECRET_BYTES`.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes, not {len(secret)}")
    return hashlib.sha256(_CONTEXT + secret).digest()


def sign(key: bytes, namespace: str, value: str) -> str:
    """Unpadded base64url of HMAC-SHA256(``key``, ``namespace + "\\n" + value``)."""
    # A namespace name cannot contain a newline, so the message is unambiguous.
    message = f"{namespace}\n{value}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(key: bytes, namespace: str, value: object, signature: object) -> bool:
    """Is ``signature`` :func:`sign`'s for ``value``? ``False`` when either is missing or not a string.

    The comparison takes constant time, so response timing does not reveal a valid signature.
    """
    if not isinstance(value, str) or not isinstance(signature, str):
        return False
    expected = sign(key, namespace, value).encode("ascii")
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
