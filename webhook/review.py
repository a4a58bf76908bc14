"""Turn an ``admission.k8s.io/v1`` AdmissionReview request into the webhook's response.

The HTTP server stays a thin shell around this pure function: bytes in, ``(status, body)`` out. It
never raises, whatever the bytes: a body we cannot understand gets HTTP 400 with a
``Status``-shaped message, anything else gets HTTP 200 with an AdmissionReview response. Only pod
CREATEs that opted in are patched; every other request is allowed unchanged, so a too-wide webhook
registration can never block unrelated writes. Warnings from the mutation (a hand-written
``clusterSelector`` replaced) go into the response's ``warnings``, which kubectl prints.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson

from tensile.conventions import KUBE_SYSTEM
from webhook.mutate import JSONObject, MalformedPodError, MutateOptions, is_opted_in, mutate

__all__ = ["API_VERSION", "KIND", "Decision", "handle_review"]

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What was decided for one request, for the server's log line (never includes pod contents)."""

    uid: str = ""
    namespace: str = ""
    name: str = ""
    action: str = ""  # "patched", "skipped" or "rejected"
    reason: str = ""
    operations: int = 0
    #: The request's ``operation`` (``CREATE``, ``UPDATE``...) as sent; ``""`` when the review had none.
    operation: str = ""


def _bad_request(message: str) -> tuple[int, JSONObject]:
    return 400, {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": "BadRequest",
        "code": 400,
        "message": message,
    }


def _review(response: JSONObject) -> JSONObject:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _pod_name(request: JSONObject, pod: JSONObject) -> str:
    metadata = pod.get("metadata")
    if isinstance(metadata, dict):
        name = _str(metadata.get("name")) or _str(metadata.get("generateName"))
        if name:
            return name
    return _str(request.get("name"))


def handle_review(
    body: bytes, options: MutateOptions | None = None, decisions: list[Decision] | None = None
) -> tuple[int, JSONObject]:
    """Answer one AdmissionReview: ``(http_status, response_dict)``; never raises.

    ``decisions``, when given, receives one :class:`Decision` describing the outcome.
    """
    status, result, decision = _handle(body, options or MutateOptions())
    if decisions is not None:
        decisions.append(decision)
    return status, result


def _handle(body: bytes, options: MutateOptions) -> tuple[int, JSONObject, Decision]:
    try:
        review = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError) as exc:
        status, result = _bad_request(f"request body is not JSON: {exc}")
        return status, result, Decision(action="rejected", reason="not JSON")
    if not isinstance(review, dict):
        status, result = _bad_request("request body must be a JSON object")
        return status, result, Decision(action="rejected", reason="not an object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        status, result = _bad_request(f"expected apiVersion {API_VERSION} and kind {KIND}")
        return status, result, Decision(action="rejected", reason="wrong apiVersion or kind")
    request = review.get("request")
    if not isinstance(request, dict):
        status, result = _bad_request("AdmissionReview has no request")
        return status, result, Decision(action="rejected", reason="no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        status, result = _bad_request("AdmissionReview request has no uid")
        return status, result, Decision(action="rejected", reason="no uid")

    namespace = _str(request.get("namespace"))
    operation = _str(request.get("operation"))
    allowed: JSONObject = {"uid": uid, "allowed": True}
    kind = request.get("kind")
    is_pod = isinstance(kind, dict) and kind.get("group", "") == "" and kind.get("kind") == "Pod"
    request_name = _str(request.get("name"))
    if not is_pod or request.get("subResource"):
        return 200, _review(allowed), Decision(uid, namespace, request_name, "skipped", "not a pod", 0, operation)
    if operation != "CREATE":
        return 200, _review(allowed), Decision(uid, namespace, request_name, "skipped", "not a create", 0, operation)

    pod = request.get("object")
    if not isinstance(pod, dict):
        status, result = _bad_request("AdmissionReview request has no pod object")
        return status, result, Decision(uid, namespace, request_name, "rejected", "no object", 0, operation)
    name = _pod_name(request, pod)
    try:
        mutation = mutate(pod, options, namespace=namespace or None)
    except MalformedPodError as exc:
        status, result = _bad_request(f"malformed pod: {exc}")
        return status, result, Decision(uid, namespace, name, "rejected", "malformed pod", operation=operation)
    if not mutation.patch:
        return 200, _review(allowed), Decision(uid, namespace, name, "skipped", _skip_reason(pod, namespace), 0,
                                               operation)
    try:
        encoded = orjson.dumps(mutation.patch)
    except TypeError as exc:  # nesting deeper than orjson's limit; no real pod gets here
        status, result = _bad_request(f"malformed pod: {exc}")
        return status, result, Decision(uid, namespace, name, "rejected", "malformed pod", operation=operation)
    response = {**allowed, "patchType": "JSONPatch", "patch": base64.b64encode(encoded).decode("ascii")}
    if mutation.warnings:
        response["warnings"] = list(mutation.warnings)
    decision = Decision(uid, namespace, name, "patched", mutation.reason, len(mutation.patch), operation)
    return 200, _review(response), decision


def _skip_reason(pod: JSONObject, namespace: str) -> str:
    if not is_opted_in(pod):
        return "not opted in"
    metadata = pod.get("metadata")
    if isinstance(metadata, dict) and (metadata.get("namespace") or namespace) == KUBE_SYSTEM:
        return KUBE_SYSTEM
    return "already mutated"
