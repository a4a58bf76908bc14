"""Tests of webhook.review.handle_review: the AdmissionReview envelope, decisions and robustness."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensile.conventions import (
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    KUBE_SYSTEM,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)
from webhook.mutate import REPLACED_WARNING, MutateOptions, mutate_pod
from webhook.review import Decision, handle_review

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


def pod(spec: dict[str, Any] | None = None, *, opted_in: bool = True, namespace: str | None = "default") -> dict:
    metadata: dict[str, Any] = {"name": "web-0", "labels": {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE} if opted_in else {}}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "c"}], **(spec or {})},
    }


def review(obj: Any = None, **request: Any) -> dict:
    req: dict[str, Any] = {
        "uid": UID,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "web-0",
        "namespace": "default",
        "operation": "CREATE",
        "userInfo": {"username": "admin", "groups": ["system:masters"]},
        "object": pod() if obj is None else obj,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    req.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def call(body: Any, options: MutateOptions | None = None) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return handle_review(raw, options or MutateOptions())


def assert_allowed_without_patch(status: int, result: dict) -> None:
    assert status == 200
    assert result["apiVersion"] == "admission.k8s.io/v1"
    assert result["kind"] == "AdmissionReview"
    assert result["response"] == {"uid": UID, "allowed": True}


def assert_bad_request(status: int, result: dict) -> None:
    assert status == 400
    assert result["code"] == 400
    assert isinstance(result["message"], str) and result["message"]


def decoded_patch(result: dict) -> list[dict]:
    assert result["response"]["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(result["response"]["patch"]))


def test_normal_pod_is_allowed_with_a_json_patch() -> None:
    status, result = call(review())
    assert status == 200
    assert result["apiVersion"] == "admission.k8s.io/v1"
    assert result["kind"] == "AdmissionReview"
    assert result["response"]["uid"] == UID
    assert result["response"]["allowed"] is True
    assert decoded_patch(result) == mutate_pod(pod(), MutateOptions())


def test_options_are_passed_to_the_mutation() -> None:
    options = MutateOptions(add_virtual_node_selector=False)
    _, result = call(review(), options)
    assert not any(op["path"] == "/spec/nodeSelector" for op in decoded_patch(result))


def test_malformed_json_is_a_bad_request() -> None:
    assert_bad_request(*call(b"{not json"))


def test_empty_body_is_a_bad_request() -> None:
    assert_bad_request(*call(b""))


def test_non_object_body_is_a_bad_request() -> None:
    assert_bad_request(*call([review()]))


def test_wrong_kind_is_a_bad_request() -> None:
    body = review()
    body["kind"] = "Pod"
    assert_bad_request(*call(body))


def test_v1beta1_review_is_a_bad_request() -> None:
    body = review()
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    assert_bad_request(*call(body))


def test_missing_request_is_a_bad_request() -> None:
    body = review()
    del body["request"]
    assert_bad_request(*call(body))


def test_missing_uid_is_a_bad_request() -> None:
    body = review()
    del body["request"]["uid"]
    assert_bad_request(*call(body))
    body["request"]["uid"] = 42
    assert_bad_request(*call(body))


def test_missing_object_on_pod_create_is_a_bad_request() -> None:
    body = review()
    body["request"]["object"] = None
    assert_bad_request(*call(body))


def test_non_create_operation_is_allowed_without_patch() -> None:
    for operation in ("UPDATE", "DELETE", "CONNECT"):
        assert_allowed_without_patch(*call(review(operation=operation)))


def test_non_pod_kind_is_allowed_without_patch() -> None:
    body = review(kind={"group": "apps", "version": "v1", "kind": "Deployment"}, object={"spec": {}})
    assert_allowed_without_patch(*call(body))


def test_pod_subresource_is_allowed_without_patch() -> None:
    assert_allowed_without_patch(*call(review(subResource="ephemeralcontainers")))


def test_pod_not_opted_in_is_allowed_without_patch() -> None:
    assert_allowed_without_patch(*call(review(pod(opted_in=False))))


def test_kube_system_pod_is_allowed_without_patch() -> None:
    assert_allowed_without_patch(*call(review(pod(namespace=KUBE_SYSTEM), namespace=KUBE_SYSTEM)))


def test_kube_system_from_request_namespace_is_allowed_without_patch() -> None:
    assert_allowed_without_patch(*call(review(pod(namespace=None), namespace=KUBE_SYSTEM)))


def mutated(obj: dict, options: MutateOptions | None = None) -> dict:
    _, result = call(review(obj), options)
    patch = decoded_patch(result)
    assert patch[0]["path"] == "/metadata/annotations"  # the pods here have none
    return {**obj, "metadata": {**obj["metadata"], "annotations": patch[0]["value"]}}


def test_already_mutated_pod_is_allowed_without_patch() -> None:
    options = MutateOptions(signing_key=b"x" * 32)
    obj = mutated(pod(), options)
    decisions: list[Decision] = []
    status, result = handle_review(json.dumps(review(obj)).encode(), options, decisions)
    assert_allowed_without_patch(status, result)
    assert (decisions[0].action, decisions[0].reason) == ("skipped", "already mutated")


def test_hand_written_cluster_selector_is_replaced_with_a_warning() -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {CLUSTER_SELECTOR_ANNOTATION: '{"nodeSelector": {"gpu": "a100"}}'}
    decisions: list[Decision] = []
    status, result = handle_review(json.dumps(review(obj)).encode(), MutateOptions(), decisions)
    assert status == 200
    assert result["response"]["warnings"] == [REPLACED_WARNING]
    paths = {op["path"] for op in decoded_patch(result)}
    assert {"/metadata/annotations/" + CLUSTER_SELECTOR_ANNOTATION} <= paths
    assert "/metadata/annotations/tensile.io~1cluster-selector-signature" in paths
    assert (decisions[0].action, decisions[0].reason) == ("patched", "replaced a hand-written clusterSelector")


def test_annotation_signed_by_another_key_is_replaced() -> None:
    obj = mutated(pod(), MutateOptions(signing_key=b"x" * 32))
    assert CLUSTER_SELECTOR_SIGNATURE_ANNOTATION in obj["metadata"]["annotations"]
    _, result = call(review(obj), MutateOptions(signing_key=b"y" * 32))
    assert result["response"]["warnings"] == [REPLACED_WARNING]


def test_no_warnings_field_without_warnings() -> None:
    _, result = call(review())
    assert "warnings" not in result["response"]


def test_malformed_pod_is_a_bad_request() -> None:
    assert_bad_request(*call(review(pod({"nodeSelector": ["zone"]}))))
    assert_bad_request(*call(review(pod({"tolerations": "all"}))))


def test_odd_but_legal_pods_are_patched() -> None:
    many = [{"key": f"k{i}", "operator": "Exists"} for i in range(1000)]
    for spec in ({"affinity": {}}, {"tolerations": None}, {"nodeSelector": None}, {"tolerations": many}):
        status, result = call(review(pod(spec)))
        assert status == 200
        assert decoded_patch(result)


def test_decision_is_reported_for_logging() -> None:
    decisions: list[Decision] = []
    handle_review(json.dumps(review()).encode(), MutateOptions(), decisions)
    handle_review(json.dumps(review(pod(opted_in=False))).encode(), MutateOptions(), decisions)
    handle_review(b"nope", MutateOptions(), decisions)
    patched, skipped, rejected = decisions
    assert (patched.action, patched.uid, patched.namespace, patched.name) == ("patched", UID, "default", "web-0")
    assert patched.operations > 0
    assert (skipped.action, skipped.reason) == ("skipped", "not opted in")
    assert rejected.action == "rejected"


def test_generate_name_is_used_when_name_is_absent() -> None:
    obj = pod()
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "web-"
    decisions: list[Decision] = []
    handle_review(json.dumps(review(obj, name="")).encode(), MutateOptions(), decisions)
    assert decisions[0].name == "web-"


# --- fuzzing -----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "nodeSelector",
    "affinity",
    "tolerations",
    "nodeAffinity",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
    "matchExpressions",
    "matchFields",
    "key",
    "tolerationSeconds",
    "effect",
    "operator",
]
# JSON that looks like a pod spec: known field names with arbitrary (often wrong) values.
SPEC_LIKE = st.recursive(
    JSON,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), children, max_size=4),
    max_leaves=25,
)
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(status: int, result: dict) -> None:
    assert status in (200, 400)
    assert isinstance(result, dict)
    orjson.dumps(result)  # the server must be able to send it


@FUZZ_SETTINGS
@given(body=st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_never_raise(body: bytes) -> None:
    check(*handle_review(body, MutateOptions()))


@FUZZ_SETTINGS
@given(value=JSON)
def test_fuzz_arbitrary_json_never_raises(value: Any) -> None:
    check(*handle_review(orjson.dumps(value), MutateOptions()))


@FUZZ_SETTINGS
@given(
    request=st.dictionaries(st.sampled_from(["uid", "kind", "operation", "object", "namespace", "subResource"]), JSON)
)
def test_fuzz_arbitrary_request_fields_never_raise(request: dict) -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    check(*handle_review(orjson.dumps(body), MutateOptions()))


@FUZZ_SETTINGS
@given(spec=SPEC_LIKE, metadata_extra=st.dictionaries(st.sampled_from(["annotations", "namespace", "name"]), JSON))
def test_fuzz_opted_in_pod_with_garbage_spec_never_raises(spec: Any, metadata_extra: dict) -> None:
    obj = {"metadata": {"labels": {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE}, **metadata_extra}, "spec": spec}
    status, result = handle_review(orjson.dumps(review(obj)), MutateOptions())
    check(status, result)
    if status == 200 and "patch" in result["response"]:
        json.loads(base64.b64decode(result["response"]["patch"]))
