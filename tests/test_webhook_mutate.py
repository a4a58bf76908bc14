"""Unit and property tests of webhook.mutate: the pod -> JSONPatch rules and their inverse.

The inverse is ``tensile.cluster_selector.restore_constraints``, tested here paired with the webhook
as in production; its own rules are in test_cluster_selector.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensile import avoidance
from tensile.cluster_selector import filter_required, is_virtual_node_toleration, restore_constraints
from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    HOSTNAME_LABEL,
    KUBE_SYSTEM,
    NOT_READY_TAINT,
    PROVIDER_TAINT_EFFECT,
    PROVIDER_TAINT_KEY,
    PROVIDER_TAINT_VALUE,
    UNREACHABLE_TAINT,
    VIRTUAL_NODE_TYPE_LABEL,
    VIRTUAL_NODE_TYPE_VALUE,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)
from webhook import signing
from webhook.mutate import (
    REPLACED_WARNING,
    MalformedPodError,
    MutateOptions,
    mutate,
    mutate_pod,
    pointer_escape,
)

REQ = "requiredDuringSchedulingIgnoredDuringExecution"
PREF = "preferredDuringSchedulingIgnoredDuringExecution"
PROVIDER_TOLERATION = {"key": PROVIDER_TAINT_KEY, "operator": "Exists", "effect": PROVIDER_TAINT_EFFECT}
NOT_READY_FOREVER = {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}
UNREACHABLE_FOREVER = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}
# What the DefaultTolerationSeconds admission plugin adds before webhooks run.
NOT_READY_300 = {**NOT_READY_FOREVER, "tolerationSeconds": 300}
UNREACHABLE_300 = {**UNREACHABLE_FOREVER, "tolerationSeconds": 300}
SPREAD = "topologySpreadConstraints"
#: The keys a virtual node reports as its own (tensile.translate.VIRTUAL_NODE_KEYS).
VIRTUAL_NODE_KEYS = frozenset({VIRTUAL_NODE_TYPE_LABEL, "kubernetes.io/role", HOSTNAME_LABEL, CLUSTER_ID_LABEL})
SIGNATURE_PATH = "/metadata/annotations/" + pointer_escape(CLUSTER_SELECTOR_SIGNATURE_ANNOTATION)
CLUSTER_SELECTOR_PATH = "/metadata/annotations/" + pointer_escape(CLUSTER_SELECTOR_ANNOTATION)


def make_pod(spec: dict[str, Any] | None = None, *, labels: dict[str, str] | None = None, **metadata: Any) -> dict:
    meta: dict[str, Any] = {"name": "p", "namespace": "default"}
    meta["labels"] = {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE} if labels is None else labels
    meta.update(metadata)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c"}], **(spec or {})},
    }


def expr(key: str, operator: str = "In", *values: str) -> dict[str, Any]:
    result: dict[str, Any] = {"key": key, "operator": operator}
    if operator in ("In", "NotIn", "Gt", "Lt"):
        result["values"] = list(values) or ["v"]
    return result


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {REQ: {"nodeSelectorTerms": list(terms)}}}


def apiserver_view(pod: dict) -> dict:
    """The pod as kube-apiserver serialises it: nulls and Go ``omitempty`` empty maps/lists gone."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    view = strip(pod)
    for parent, field in (
        (view["metadata"], "annotations"),
        (view["metadata"], "labels"),
        (view["spec"], "nodeSelector"),
        (view["spec"], "tolerations"),
    ):
        if field in parent and not parent[field]:
            del parent[field]
    return view


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply(pod: dict, patch: list[dict]) -> dict:
    """Apply an RFC 6902 patch strictly, as kube-apiserver does: a missing parent, or ``remove`` /
    ``replace`` of a missing member, is an error. Only the operations the webhook may emit."""
    doc = copy.deepcopy(pod)
    for op in patch:
        assert set(op) <= {"op", "path", "value"}, op
        assert op["path"].startswith("/"), op
        *parents, last = [_unescape(t) for t in op["path"][1:].split("/")]
        target: Any = doc
        for token in parents:
            if isinstance(target, list):
                target = target[int(token)]
            elif isinstance(target, dict) and token in target:
                target = target[token]
            else:
                raise KeyError(f"{op['path']}: missing parent {token!r}")
        assert isinstance(target, dict), f"{op['path']}: parent is not an object"
        if op["op"] == "add":
            target[last] = copy.deepcopy(op["value"])
        elif op["op"] in ("remove", "replace"):
            if last not in target:
                raise KeyError(f"{op['path']}: {op['op']} of a missing member")
            if op["op"] == "remove":
                del target[last]
            else:
                target[last] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unexpected op {op}")
    return doc


def test_apply_helper_is_strict() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1"}}, "spec": {}}
    assert apply(doc, [{"op": "add", "path": "/metadata/annotations/a~1b", "value": "2"}])["metadata"] == {
        "annotations": {"a/b": "2"}
    }
    with pytest.raises(KeyError):
        apply(doc, [{"op": "remove", "path": "/spec/nodeSelector"}])
    with pytest.raises(KeyError):
        apply(doc, [{"op": "add", "path": "/status/phase", "value": "x"}])
    assert doc == {"metadata": {"annotations": {"a/b": "1"}}, "spec": {}}


def mutated(pod: dict, options: MutateOptions | None = None) -> dict:
    view = apiserver_view(pod)
    return apply(view, mutate_pod(view, options or MutateOptions()))


def saved(pod: dict) -> dict:
    return json.loads(pod["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION])


def annotation_of(pod: dict) -> str:
    return pod["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION]


def spread(key: str, when: str | None = "DoNotSchedule") -> dict[str, Any]:
    constraint: dict[str, Any] = {"maxSkew": 1, "topologyKey": key, "labelSelector": {"matchLabels": {"app": "a"}}}
    if when is not None:
        constraint["whenUnsatisfiable"] = when
    return constraint


def anti_affinity_term(key: str) -> dict[str, Any]:
    return {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": key}


def required_terms(spec: dict) -> list[dict] | None:
    block = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(REQ)
    return None if block is None else block["nodeSelectorTerms"]


# --- when the webhook leaves a pod alone ------------------------------------------------------------


def test_pod_without_virtual_pod_label_is_not_mutated() -> None:
    assert mutate_pod(make_pod({"nodeSelector": {"zone": "x"}}, labels={"app": "a"}), MutateOptions()) == []


def test_pod_with_other_virtual_pod_label_value_is_not_mutated() -> None:
    assert mutate_pod(make_pod(labels={VIRTUAL_POD_LABEL: "false"}), MutateOptions()) == []


def test_pod_without_labels_or_metadata_is_not_mutated() -> None:
    assert mutate_pod({"spec": {}}, MutateOptions()) == []
    assert mutate_pod({"metadata": {"labels": None}, "spec": {}}, MutateOptions()) == []


def test_kube_system_pod_is_not_mutated() -> None:
    assert mutate_pod(make_pod(namespace=KUBE_SYSTEM), MutateOptions()) == []


def test_kube_system_from_request_namespace_is_not_mutated() -> None:
    pod = make_pod()
    del pod["metadata"]["namespace"]
    assert mutate_pod(pod, MutateOptions(), namespace=KUBE_SYSTEM) == []
    assert mutate_pod(pod, MutateOptions(), namespace="default") != []


def test_mutation_is_idempotent() -> None:
    pod = make_pod({"nodeSelector": {"zone": "x"}, "affinity": required({"matchExpressions": [expr("zone")]})})
    once = mutated(pod)
    assert mutate(once, MutateOptions()).patch == []
    assert mutate(once, MutateOptions()).warnings == ()


def test_copied_pod_in_the_same_namespace_keeps_the_saved_originals() -> None:
    # e.g. `kubectl get pod -o yaml | kubectl create -f -`, or a descheduler's recreation
    once = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    copy_of = copy.deepcopy(once)
    copy_of["metadata"]["name"] = "another"
    assert mutate_pod(copy_of) == []
    assert saved(copy_of)["nodeSelector"] == {"zone": "x"}


def test_pod_recreated_from_its_original_manifest_is_relaxed_again_with_the_same_annotation() -> None:
    # The template's spec (with what DefaultTolerationSeconds adds) plus the signed annotation.
    original = make_pod({"nodeSelector": {"disktype": "ssd"}, "tolerations": [NOT_READY_300, UNREACHABLE_300]})
    upper = mutated(original)
    recreated = copy.deepcopy(original)
    recreated["metadata"]["annotations"] = copy.deepcopy(upper["metadata"]["annotations"])
    result = mutate(recreated)
    assert result.warnings == ()
    again = apply(recreated, result.patch)
    assert again == upper
    assert {op["path"] for op in result.patch} == {"/spec/nodeSelector", "/spec/tolerations"}


# --- the annotation is the webhook's ---------------------------------------------------------------


def forged(annotation: str, signature: str | None = None, **spec: Any) -> dict:
    annotations = {CLUSTER_SELECTOR_ANNOTATION: annotation, "keep": "me"}
    if signature is not None:
        annotations[CLUSTER_SELECTOR_SIGNATURE_ANNOTATION] = signature
    return make_pod(spec, annotations=annotations)


FORGED = json.dumps({"nodeSelector": {"gpu": "a100"}, "tolerations": [{"operator": "Exists"}]})


def test_hand_written_cluster_selector_is_replaced_with_a_warning() -> None:
    pod = forged(FORGED, nodeSelector={"zone": "x"})
    result = mutate(pod)
    assert result.warnings == (REPLACED_WARNING,)
    assert "replaced" in REPLACED_WARNING and CLUSTER_SELECTOR_ANNOTATION in REPLACED_WARNING
    upper = apply(pod, result.patch)
    assert saved(upper) == {"nodeSelector": {"zone": "x"}, "ignoreSelectorKeys": [CLUSTER_ID_LABEL]}
    assert upper["metadata"]["annotations"]["keep"] == "me"
    assert mutate_pod(upper) == []  # now it is ours


def test_cluster_selector_with_an_invalid_signature_is_replaced() -> None:
    genuine = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    signature = genuine["metadata"]["annotations"][CLUSTER_SELECTOR_SIGNATURE_ANNOTATION]
    tampered = copy.deepcopy(genuine)
    tampered["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION] = FORGED
    for pod in (tampered, forged(FORGED, signature), forged(FORGED, "garbage"), forged(FORGED, "")):
        result = mutate(pod)
        assert result.warnings == (REPLACED_WARNING,)
        upper = apply(pod, result.patch)
        assert "gpu" not in json.dumps(saved(upper))
        assert signing.verify(
            MutateOptions().signing_key,
            "default",
            annotation_of(upper),
            upper["metadata"]["annotations"][CLUSTER_SELECTOR_SIGNATURE_ANNOTATION],
        )


def test_annotation_signed_with_another_key_is_replaced() -> None:
    other = MutateOptions(signing_key=b"k" * 32)
    once = mutated(make_pod({"nodeSelector": {"zone": "x"}}), other)
    assert mutate_pod(once, other) == []
    assert mutate(once).warnings == (REPLACED_WARNING,)


def test_non_string_cluster_selector_is_replaced() -> None:
    pod = make_pod(annotations={CLUSTER_SELECTOR_ANNOTATION: 5, CLUSTER_SELECTOR_SIGNATURE_ANNOTATION: None})
    result = mutate(pod)
    assert result.warnings == (REPLACED_WARNING,)
    assert saved(apply(pod, result.patch)) == {"ignoreSelectorKeys": [CLUSTER_ID_LABEL]}


def test_signature_alone_is_overwritten_without_a_warning() -> None:
    pod = make_pod(annotations={CLUSTER_SELECTOR_SIGNATURE_ANNOTATION: "x"})
    result = mutate(pod)
    assert result.warnings == ()
    assert {op["path"] for op in result.patch} >= {CLUSTER_SELECTOR_PATH, SIGNATURE_PATH}


def test_signature_binds_the_namespace() -> None:
    once = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    moved = copy.deepcopy(once)
    moved["metadata"]["namespace"] = "elsewhere"
    result = mutate(moved)
    assert result.warnings == (REPLACED_WARNING,)
    # The request's namespace counts when the object has none.
    del moved["metadata"]["namespace"]
    assert mutate(moved, namespace="default").patch == []
    assert mutate(moved, namespace="elsewhere").warnings == (REPLACED_WARNING,)


def test_signature_is_unpadded_base64url_hmac_of_namespace_and_value() -> None:
    import base64
    import hashlib
    import hmac

    options = MutateOptions(signing_key=b"s" * 32)
    upper = mutated(make_pod(), options)
    value = annotation_of(upper)
    digest = hmac.new(b"s" * 32, b"default\n" + value.encode(), hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert upper["metadata"]["annotations"][CLUSTER_SELECTOR_SIGNATURE_ANNOTATION] == expected


# --- re-invocation after a later webhook ----------------------------------------------------------------


def reinvoked(upper: dict, options: MutateOptions | None = None) -> dict:
    """``upper`` after a second call of the webhook, with the patch applied; asserts idempotence after."""
    options = options or MutateOptions()
    result = mutate(upper, options)
    assert result.warnings == ()
    again = apply(upper, result.patch)
    assert mutate_pod(again, options) == []
    return again


def test_reinvocation_folds_a_later_node_selector() -> None:
    upper = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    upper["spec"]["nodeSelector"]["disk"] = "ssd"  # another webhook's doing
    patch = mutate_pod(upper)
    assert {op["path"] for op in patch} == {CLUSTER_SELECTOR_PATH, SIGNATURE_PATH, "/spec/nodeSelector"}
    again = apply(upper, patch)
    assert saved(again)["nodeSelector"] == {"zone": "x", "disk": "ssd"}
    assert again["spec"]["nodeSelector"] == {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}
    assert mutate_pod(again) == []


def test_reinvocation_folds_a_later_toleration() -> None:
    upper = mutated(make_pod({"tolerations": [NOT_READY_300]}))
    later = {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}
    upper["spec"]["tolerations"].append(later)
    again = reinvoked(upper)
    assert saved(again)["tolerations"] == [NOT_READY_300, later]
    assert later in again["spec"]["tolerations"]
    lower = restore_constraints(again["spec"], annotation_of(again))
    assert lower["tolerations"] == [NOT_READY_300, later]


def test_reinvocation_ands_a_later_required_node_affinity() -> None:
    pod = make_pod({"affinity": required({"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL, "In", "a")]})})
    upper = mutated(pod)
    terms = required_terms(upper["spec"])
    assert terms == [{"matchExpressions": [expr(CLUSTER_ID_LABEL, "In", "a")]}]
    terms.append({"matchExpressions": [expr("disk", "In", "ssd")]})  # "... OR disk=ssd" from a later webhook
    again = reinvoked(upper)
    assert required_terms(saved(again)) == [
        {"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL, "In", "a")]},
        {"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL, "In", "a"), expr("disk", "In", "ssd")]},
    ]
    assert required_terms(again["spec"]) == [{"matchExpressions": [expr(CLUSTER_ID_LABEL, "In", "a")]}]


def test_reinvocation_folds_a_required_node_affinity_added_from_scratch() -> None:
    upper = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    upper["spec"]["affinity"] = required({"matchExpressions": [expr("disk", "In", "ssd")]})
    again = reinvoked(upper)
    assert "affinity" not in again["spec"]
    lower = restore_constraints(again["spec"], annotation_of(again))
    assert required_terms(lower) == [{"matchExpressions": [expr("disk", "In", "ssd")]}]


def test_reinvocation_folds_later_spreading_and_host_anti_affinity() -> None:
    upper = mutated(make_pod({"affinity": {"podAntiAffinity": {REQ: [anti_affinity_term("zone")]}}}))
    upper["spec"][SPREAD] = [spread(HOSTNAME_LABEL), spread("zone", "ScheduleAnyway")]
    upper["spec"]["affinity"]["podAntiAffinity"][REQ].append(anti_affinity_term(HOSTNAME_LABEL))
    again = reinvoked(upper)
    assert again["spec"][SPREAD] == [spread("zone", "ScheduleAnyway")]
    assert again["spec"]["affinity"] == {"podAntiAffinity": {REQ: [anti_affinity_term("zone")]}}
    assert saved(again)[SPREAD] == [spread(HOSTNAME_LABEL), spread("zone", "ScheduleAnyway")]
    assert saved(again)["affinity"]["podAntiAffinity"][REQ] == [
        anti_affinity_term("zone"),
        anti_affinity_term(HOSTNAME_LABEL),
    ]
    lower = restore_constraints(again["spec"], annotation_of(again))
    assert lower[SPREAD] == saved(again)[SPREAD]
    assert lower["affinity"] == saved(again)["affinity"]


def test_reinvocation_with_nothing_new_is_no_patch() -> None:
    upper = mutated(full_pod())
    assert mutate_pod(upper) == []
    # What the webhook itself adds is not "new", whatever order it comes back in.
    upper["spec"]["tolerations"].reverse()
    assert mutate_pod(upper) == []


def test_reinvocation_after_a_later_webhook_removed_something_is_no_patch() -> None:
    upper = mutated(make_pod({"tolerations": [{"key": "gpu", "operator": "Exists"}]}))
    upper["spec"]["tolerations"] = upper["spec"]["tolerations"][1:]
    assert mutate_pod(upper) == []


def test_reinvocation_does_not_undo_a_later_removal() -> None:
    gpu = {"key": "gpu", "operator": "Exists"}
    upper = mutated(make_pod({"tolerations": [gpu]}))
    upper["spec"]["tolerations"].remove(gpu)  # a policy webhook's doing
    upper["spec"]["nodeSelector"]["disk"] = "ssd"  # and another's
    again = reinvoked(upper)
    assert gpu not in again["spec"]["tolerations"]
    lower = restore_constraints(again["spec"], annotation_of(again))
    assert lower["nodeSelector"] == {"disk": "ssd"}
    assert gpu not in lower["tolerations"]  # upper admission's last word


def test_reinvocation_with_other_ignore_keys_rewrites_the_annotation() -> None:
    upper = mutated(make_pod({"nodeSelector": {"pool": "a", "zone": "x"}}))
    options = MutateOptions(ignore_selector_keys=frozenset({"pool"}))
    again = reinvoked(upper, options)
    assert saved(again)["ignoreSelectorKeys"] == ["pool"]
    assert again["spec"]["nodeSelector"] == {"pool": "a", VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


# --- the clusterSelector annotation --------------------------------------------------------------------


def test_original_constraints_are_saved_in_cluster_selector_annotation() -> None:
    affinity = required({"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL)]})
    tolerations = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod = make_pod(
        {"nodeSelector": {"zone": "x", CLUSTER_ID_LABEL: "a"}, "affinity": affinity, "tolerations": tolerations}
    )
    annotation = mutated(pod)["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION]
    assert isinstance(annotation, str)
    assert json.loads(annotation) == {
        "nodeSelector": {"zone": "x", CLUSTER_ID_LABEL: "a"},
        "affinity": affinity,
        "tolerations": tolerations,
        "ignoreSelectorKeys": [CLUSTER_ID_LABEL],
    }
    # Tensile Kube's fields in its order, then tensile's
    assert list(json.loads(annotation)) == ["nodeSelector", "affinity", "tolerations", "ignoreSelectorKeys"]


def test_spread_constraints_are_saved_only_when_the_pod_has_some() -> None:
    constraints = [spread(HOSTNAME_LABEL), spread("zone", "ScheduleAnyway")]
    assert saved(mutated(make_pod({SPREAD: constraints})))[SPREAD] == constraints
    assert SPREAD not in saved(mutated(make_pod()))
    assert SPREAD not in saved(mutated(make_pod({SPREAD: []})))


def test_ignore_selector_keys_are_recorded_sorted() -> None:
    options = MutateOptions(ignore_selector_keys=frozenset({"pool", CLUSTER_ID_LABEL, "a"}))
    assert saved(mutated(make_pod(), options))["ignoreSelectorKeys"] == ["a", CLUSTER_ID_LABEL, "pool"]
    assert saved(mutated(make_pod(), MutateOptions(ignore_selector_keys=frozenset())))["ignoreSelectorKeys"] == []


def test_absent_and_null_fields_are_omitted_from_annotation() -> None:
    pod = make_pod({"nodeSelector": None, "affinity": None, SPREAD: None})
    value = mutate_pod(pod, MutateOptions())[0]["value"]
    assert value[CLUSTER_SELECTOR_ANNOTATION] == '{"ignoreSelectorKeys":["clusterID"]}'


def test_annotations_map_is_added_when_absent() -> None:
    patch = mutate_pod(make_pod(), MutateOptions())
    assert patch[0]["op"] == "add"
    assert patch[0]["path"] == "/metadata/annotations"
    assert set(patch[0]["value"]) == {CLUSTER_SELECTOR_ANNOTATION, CLUSTER_SELECTOR_SIGNATURE_ANNOTATION}


def test_annotation_is_added_into_existing_annotations() -> None:
    pod = make_pod(annotations={"a/b~c": "keep"})
    patch = mutate_pod(pod, MutateOptions())
    value = '{"ignoreSelectorKeys":["clusterID"]}'
    assert patch[:2] == [
        {"op": "add", "path": CLUSTER_SELECTOR_PATH, "value": value},
        {"op": "add", "path": SIGNATURE_PATH, "value": signing.sign(MutateOptions().signing_key, "default", value)},
    ]
    result = apply(pod, patch)
    assert result["metadata"]["annotations"]["a/b~c"] == "keep"
    assert CLUSTER_SELECTOR_ANNOTATION in result["metadata"]["annotations"]


def test_empty_annotations_map_is_replaced_whole() -> None:
    patch = mutate_pod(make_pod(annotations={}), MutateOptions())
    assert patch[0]["path"] == "/metadata/annotations"


def test_pointer_escape_escapes_tilde_then_slash() -> None:
    assert pointer_escape("a/b") == "a~1b"
    assert pointer_escape("a~b") == "a~0b"
    assert pointer_escape("~/") == "~0~1"
    assert pointer_escape("~1") == "~01"


# --- nodeSelector ----------------------------------------------------------------------------------


def test_node_selector_keys_are_removed() -> None:
    spec = mutated(make_pod({"nodeSelector": {"zone": "x", "disk": "ssd"}}))["spec"]
    assert spec["nodeSelector"] == {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


def test_cluster_id_selector_key_is_kept() -> None:
    spec = mutated(make_pod({"nodeSelector": {"zone": "x", CLUSTER_ID_LABEL: "a"}}))["spec"]
    assert spec["nodeSelector"] == {CLUSTER_ID_LABEL: "a", VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


def test_custom_ignore_selector_keys_are_kept() -> None:
    options = MutateOptions(ignore_selector_keys=frozenset({"region"}))
    spec = mutated(make_pod({"nodeSelector": {"region": "eu", CLUSTER_ID_LABEL: "a"}}), options)["spec"]
    assert spec["nodeSelector"] == {"region": "eu", VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


def test_virtual_node_selector_is_added() -> None:
    spec = mutated(make_pod())["spec"]
    assert spec["nodeSelector"] == {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


def test_virtual_node_selector_is_not_added_when_disabled() -> None:
    options = MutateOptions(add_virtual_node_selector=False)
    assert "nodeSelector" not in mutated(make_pod(), options)["spec"]
    assert not any(op["path"] == "/spec/nodeSelector" for op in mutate_pod(make_pod(), options))


def test_node_selector_is_removed_when_nothing_is_left() -> None:
    options = MutateOptions(add_virtual_node_selector=False)
    pod = make_pod({"nodeSelector": {"zone": "x"}})
    assert {"op": "remove", "path": "/spec/nodeSelector"} in mutate_pod(pod, options)
    assert "nodeSelector" not in mutated(pod, options)["spec"]


def test_node_selector_already_relaxed_is_not_patched() -> None:
    pod = make_pod({"nodeSelector": {CLUSTER_ID_LABEL: "a", VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}})
    assert not any(op["path"] == "/spec/nodeSelector" for op in mutate_pod(pod, MutateOptions()))


# --- required node affinity ------------------------------------------------------------------------------


def test_required_node_affinity_expressions_are_removed_except_ignore_keys() -> None:
    pod = make_pod({"affinity": required({"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL, "In", "a")]})})
    assert required_terms(mutated(pod)["spec"]) == [{"matchExpressions": [expr(CLUSTER_ID_LABEL, "In", "a")]}]


def test_required_node_affinity_match_fields_are_removed() -> None:
    term = {"matchFields": [expr("metadata.name", "In", "lower-node-1")], "matchExpressions": [expr(CLUSTER_ID_LABEL)]}
    assert required_terms(mutated(make_pod({"affinity": required(term)}))["spec"]) == [
        {"matchExpressions": [expr(CLUSTER_ID_LABEL)]}
    ]


def test_required_block_is_dropped_when_no_requirement_remains() -> None:
    pod = make_pod({"affinity": required({"matchExpressions": [expr("zone")]})})
    patch = mutate_pod(pod, MutateOptions())
    assert {"op": "remove", "path": "/spec/affinity"} in patch
    assert "affinity" not in mutated(pod)["spec"]


def test_term_with_only_lower_node_requirements_makes_the_whole_or_unconstrained() -> None:
    # zone=x (any cluster) OR clusterID=a: a virtual node of any cluster may hold a zone-x node, so
    # keeping only the clusterID term would wrongly pin the pod to cluster a.
    pod = make_pod(
        {"affinity": required({"matchExpressions": [expr("zone")]}, {"matchExpressions": [expr(CLUSTER_ID_LABEL)]})}
    )
    assert "affinity" not in mutated(pod)["spec"]


def test_term_keeps_match_fields_when_its_expressions_are_emptied() -> None:
    options = MutateOptions(ignore_selector_keys=frozenset({"metadata.name"}))
    term = {"matchExpressions": [expr("zone")], "matchFields": [expr("metadata.name", "In", "vk-a")]}
    assert required_terms(mutated(make_pod({"affinity": required(term)}), options)["spec"]) == [
        {"matchFields": [expr("metadata.name", "In", "vk-a")]}
    ]


def test_term_that_was_empty_to_begin_with_is_kept() -> None:
    terms = [{}, {"matchExpressions": [expr(CLUSTER_ID_LABEL)]}]
    pod = make_pod({"affinity": required(*terms)})
    assert required_terms(mutated(pod)["spec"]) == terms


def test_empty_node_selector_terms_list_is_dropped() -> None:
    pod = make_pod({"affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": []}}}})
    assert "affinity" not in mutated(pod)["spec"]


def test_preferred_node_affinity_and_pod_affinity_are_untouched() -> None:
    preferred = [{"weight": 5, "preference": {"matchExpressions": [expr("disk", "In", "ssd")]}}]
    pod_affinity = {REQ: [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}
    affinity = {
        "nodeAffinity": {REQ: {"nodeSelectorTerms": [{"matchExpressions": [expr("zone")]}]}, PREF: preferred},
        "podAffinity": pod_affinity,
        "podAntiAffinity": pod_affinity,
    }
    spec = mutated(make_pod({"affinity": affinity}))["spec"]
    assert spec["affinity"] == {
        "nodeAffinity": {PREF: preferred},
        "podAffinity": pod_affinity,
        "podAntiAffinity": pod_affinity,
    }


def test_affinity_without_required_node_affinity_is_not_patched() -> None:
    affinity = {"podAntiAffinity": {PREF: []}, "nodeAffinity": {PREF: []}}
    assert not any(
        op["path"] == "/spec/affinity" for op in mutate_pod(make_pod({"affinity": affinity}), MutateOptions())
    )


def test_empty_affinity_is_left_alone() -> None:
    pod = make_pod({"affinity": {}})
    assert not any(op["path"] == "/spec/affinity" for op in mutate_pod(pod, MutateOptions()))
    assert mutated(pod)["spec"]["affinity"] == {}
    assert saved(mutated(pod))["affinity"] == {}


# --- spreading and anti-affinity --------------------------------------------------------------------


def test_required_spread_constraints_are_removed_upstairs() -> None:
    constraints = [spread(HOSTNAME_LABEL), spread("zone", None), spread("zone", "ScheduleAnyway")]
    upper = mutated(make_pod({SPREAD: constraints}))
    assert upper["spec"][SPREAD] == [spread("zone", "ScheduleAnyway")]
    assert saved(upper)[SPREAD] == constraints


def test_spread_field_is_removed_when_only_required_constraints_were_there() -> None:
    pod = make_pod({SPREAD: [spread(HOSTNAME_LABEL)]})
    assert {"op": "remove", "path": "/spec/" + SPREAD} in mutate_pod(pod)
    assert SPREAD not in mutated(pod)["spec"]


def test_schedule_anyway_spreading_is_not_patched() -> None:
    pod = make_pod({SPREAD: [spread("zone", "ScheduleAnyway")]})
    assert not any(op["path"] == "/spec/" + SPREAD for op in mutate_pod(pod))


def test_required_host_anti_affinity_is_removed_upstairs() -> None:
    preferred = [{"weight": 1, "podAffinityTerm": anti_affinity_term(HOSTNAME_LABEL)}]
    anti = {REQ: [anti_affinity_term(HOSTNAME_LABEL), anti_affinity_term("zone")], PREF: preferred}
    upper = mutated(make_pod({"affinity": {"podAntiAffinity": anti}}))
    assert upper["spec"]["affinity"] == {"podAntiAffinity": {REQ: [anti_affinity_term("zone")], PREF: preferred}}
    assert saved(upper)["affinity"] == {"podAntiAffinity": anti}


def test_affinity_is_removed_when_only_host_anti_affinity_was_there() -> None:
    pod = make_pod({"affinity": {"podAntiAffinity": {REQ: [anti_affinity_term(HOSTNAME_LABEL)]}}})
    assert {"op": "remove", "path": "/spec/affinity"} in mutate_pod(pod)
    assert "affinity" not in mutated(pod)["spec"]


def test_pod_affinity_on_the_host_is_left_alone() -> None:
    affinity = {"podAffinity": {REQ: [anti_affinity_term(HOSTNAME_LABEL)]}}
    assert not any(op["path"] == "/spec/affinity" for op in mutate_pod(make_pod({"affinity": affinity})))


def test_typical_production_deployment_fits_a_virtual_node_and_keeps_its_rules_downstairs() -> None:
    spec = {
        "affinity": {"podAntiAffinity": {REQ: [anti_affinity_term(HOSTNAME_LABEL)]}},
        SPREAD: [spread("topology.kubernetes.io/zone"), spread(HOSTNAME_LABEL, "ScheduleAnyway")],
    }
    upper = mutated(make_pod(spec))
    assert "affinity" not in upper["spec"]
    assert upper["spec"][SPREAD] == [spread(HOSTNAME_LABEL, "ScheduleAnyway")]
    lower = restore_constraints(upper["spec"], annotation_of(upper), upper_only_keys=VIRTUAL_NODE_KEYS)
    assert lower["affinity"] == spec["affinity"]
    assert lower[SPREAD] == spec[SPREAD]


# --- tolerations -----------------------------------------------------------------------------------


def test_provider_taint_toleration_is_added() -> None:
    assert PROVIDER_TOLERATION in mutated(make_pod())["spec"]["tolerations"]


def test_provider_taint_toleration_is_not_duplicated() -> None:
    own = {
        "key": PROVIDER_TAINT_KEY,
        "operator": "Equal",
        "value": PROVIDER_TAINT_VALUE,
        "effect": PROVIDER_TAINT_EFFECT,
    }
    tolerations = mutated(make_pod({"tolerations": [own]}))["spec"]["tolerations"]
    assert [t for t in tolerations if t.get("key") == PROVIDER_TAINT_KEY] == [own]


def test_not_ready_and_unreachable_tolerations_are_added_forever() -> None:
    tolerations = mutated(make_pod())["spec"]["tolerations"]
    assert NOT_READY_FOREVER in tolerations
    assert UNREACHABLE_FOREVER in tolerations


def test_existing_unbounded_not_ready_toleration_is_not_duplicated() -> None:
    tolerations = mutated(make_pod({"tolerations": [NOT_READY_FOREVER]}))["spec"]["tolerations"]
    assert tolerations.count(NOT_READY_FOREVER) == 1


def test_default_300s_tolerations_are_replaced_on_the_upper_pod() -> None:
    pod = make_pod({"tolerations": [NOT_READY_300, UNREACHABLE_300]})
    result = mutated(pod)
    assert NOT_READY_300 not in result["spec"]["tolerations"]
    assert UNREACHABLE_300 not in result["spec"]["tolerations"]
    assert NOT_READY_FOREVER in result["spec"]["tolerations"]
    assert saved(result)["tolerations"] == [NOT_READY_300, UNREACHABLE_300]  # restored downstairs


def test_bounded_unreachable_toleration_seconds_option() -> None:
    options = MutateOptions(unreachable_toleration_seconds=600)
    tolerations = mutated(
        make_pod({"tolerations": [NOT_READY_300, {**UNREACHABLE_FOREVER, "tolerationSeconds": 900}]}), options
    )["spec"]["tolerations"]
    assert {**NOT_READY_FOREVER, "tolerationSeconds": 600} in tolerations
    assert NOT_READY_300 not in tolerations
    assert {**UNREACHABLE_FOREVER, "tolerationSeconds": 900} in tolerations  # already long enough
    assert not any(t.get("tolerationSeconds") == 600 and t["key"] == UNREACHABLE_TAINT for t in tolerations)


def test_unreachable_tolerations_are_not_added_when_disabled() -> None:
    options = MutateOptions(add_unreachable_tolerations=False)
    tolerations = mutated(make_pod({"tolerations": [NOT_READY_300]}), options)["spec"]["tolerations"]
    assert tolerations == [NOT_READY_300, PROVIDER_TOLERATION]


def test_user_tolerations_are_kept_on_the_upper_pod() -> None:
    user = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}, {"key": "dedicated", "value": "x"}]
    tolerations = mutated(make_pod({"tolerations": user}))["spec"]["tolerations"]
    assert tolerations[:2] == user
    assert tolerations[2:] == [PROVIDER_TOLERATION, NOT_READY_FOREVER, UNREACHABLE_FOREVER]


def test_wildcard_toleration_needs_nothing_added() -> None:
    wildcard = {"operator": "Exists"}
    assert mutated(make_pod({"tolerations": [wildcard]}))["spec"]["tolerations"] == [wildcard]


def test_pod_with_1000_tolerations() -> None:
    user = [{"key": f"k{i}", "operator": "Equal", "value": str(i), "effect": "NoSchedule"} for i in range(1000)]
    result = mutated(make_pod({"tolerations": user}))
    assert result["spec"]["tolerations"][:1000] == user
    assert len(result["spec"]["tolerations"]) == 1003
    assert saved(result)["tolerations"] == user


# --- patch shape and validity -------------------------------------------------------------------------


def test_patch_replaces_whole_fields_only() -> None:
    pod = make_pod(
        {
            "nodeSelector": {"zone": "x"},
            "affinity": required({"matchExpressions": [expr(CLUSTER_ID_LABEL), expr("zone")]}),
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
        }
    )
    paths = [op["path"] for op in mutate_pod(pod, MutateOptions())]
    assert paths == ["/metadata/annotations", "/spec/nodeSelector", "/spec/affinity", "/spec/tolerations"]


def test_patch_applies_to_what_the_apiserver_sends() -> None:
    pod = make_pod({"nodeSelector": {}, "tolerations": [], "affinity": None}, annotations={})
    view = apiserver_view(pod)
    patch = mutate_pod(view, MutateOptions())
    apply(view, patch)  # strict apply raises on a bad path
    assert all(op["op"] in ("add", "remove") for op in patch)


def test_null_fields_are_treated_as_absent() -> None:
    pod = make_pod({"nodeSelector": None, "affinity": None, "tolerations": None}, annotations=None)
    result = apply(pod, mutate_pod(pod, MutateOptions()))
    assert saved(result) == {"ignoreSelectorKeys": [CLUSTER_ID_LABEL]}
    assert result["spec"]["nodeSelector"] == {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}
    assert result["spec"]["tolerations"] == [PROVIDER_TOLERATION, NOT_READY_FOREVER, UNREACHABLE_FOREVER]


def test_null_inside_affinity_is_tolerated() -> None:
    pod = make_pod({"affinity": {"nodeAffinity": {REQ: None, PREF: None}, "podAffinity": None}})
    assert not any(op["path"] == "/spec/affinity" for op in mutate_pod(pod, MutateOptions()))
    pod = make_pod({"affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": None}}}})
    assert "affinity" not in apply(pod, mutate_pod(pod, MutateOptions()))["spec"]


def test_input_pod_is_not_modified() -> None:
    pod = make_pod(
        {
            "nodeSelector": {"zone": "x"},
            "affinity": required({"matchExpressions": [expr("zone")]}),
            "tolerations": [NOT_READY_300],
        }
    )
    before = copy.deepcopy(pod)
    mutate_pod(pod, MutateOptions())
    assert pod == before


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeSelector": ["zone"]},
        {"affinity": "yes"},
        {"affinity": {"nodeAffinity": []}},
        {"affinity": {"nodeAffinity": {REQ: "x"}}},
        {"affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": {}}}}},
        {"affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": [{"matchExpressions": {}}]}}}},
        {"affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": [{"matchExpressions": [1]}]}}}},
        {"tolerations": {}},
        {"tolerations": [None]},
        {"tolerations": ["gpu"]},
        {"tolerations": [{"key": "k", "tolerationSeconds": "300"}]},
        {"tolerations": [{"key": "k", "tolerationSeconds": True}]},
    ],
)
def test_malformed_pod_raises_malformed_pod_error(spec: dict[str, Any]) -> None:
    with pytest.raises(MalformedPodError):
        mutate_pod(make_pod(spec), MutateOptions())


def test_pod_without_spec_is_malformed() -> None:
    pod = make_pod()
    del pod["spec"]
    with pytest.raises(ValueError, match="spec"):
        mutate_pod(pod, MutateOptions())


def test_non_json_values_are_malformed() -> None:
    with pytest.raises(MalformedPodError):
        mutate_pod(make_pod({"nodeSelector": {"zone": object()}}), MutateOptions())


# --- restore_constraints -------------------------------------------------------------------------------


def full_pod() -> dict:
    preferred = [{"weight": 1, "preference": {"matchExpressions": [expr("disk", "In", "ssd")]}}]
    return make_pod(
        {
            "nodeSelector": {"zone": "x", CLUSTER_ID_LABEL: "a"},
            "affinity": {
                "nodeAffinity": {
                    REQ: {
                        "nodeSelectorTerms": [{"matchExpressions": [expr("zone"), expr(CLUSTER_ID_LABEL, "In", "a")]}]
                    },
                    PREF: preferred,
                },
                "podAntiAffinity": {PREF: [{"weight": 1, "podAffinityTerm": {"topologyKey": "zone"}}]},
            },
            "tolerations": [{"key": "gpu", "operator": "Exists"}, NOT_READY_300, UNREACHABLE_300],
        }
    )


def restored_from(pod: dict, options: MutateOptions | None = None, **kwargs: Any) -> dict:
    upper = mutated(pod, options)
    return restore_constraints(upper["spec"], upper["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION], **kwargs)


def test_restore_round_trip_gives_the_original_constraints() -> None:
    pod = full_pod()
    spec = restored_from(pod, upper_only_keys=frozenset(), options=MutateOptions(ignore_selector_keys=frozenset()))
    for field in ("nodeSelector", "affinity", "tolerations"):
        assert spec[field] == pod["spec"][field]
    assert spec["containers"] == pod["spec"]["containers"]


def test_restore_leaves_out_the_webhooks_ignore_keys() -> None:
    # The virtual node is configured with its own keys only; the webhook's come in the annotation.
    options = MutateOptions(ignore_selector_keys=frozenset({"pool"}))
    pod = make_pod(
        {
            "nodeSelector": {"pool": "batch", "disk": "ssd"},
            "affinity": required({"matchExpressions": [expr("pool", "In", "batch"), expr("zone")]}),
        }
    )
    upper = mutated(pod, options)
    assert upper["spec"]["nodeSelector"] == {"pool": "batch", VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}
    lower = restore_constraints(upper["spec"], annotation_of(upper), upper_only_keys=VIRTUAL_NODE_KEYS)
    assert lower["nodeSelector"] == {"disk": "ssd"}
    assert required_terms(lower) == [{"matchExpressions": [expr("zone")]}]


def test_restore_leaves_out_cluster_id_by_default() -> None:
    spec = restored_from(full_pod())
    assert spec["nodeSelector"] == {"zone": "x"}
    assert required_terms(spec) == [{"matchExpressions": [expr("zone")]}]


def test_restore_drops_required_affinity_that_only_pinned_the_cluster() -> None:
    pod = make_pod({"affinity": required({"matchExpressions": [expr(CLUSTER_ID_LABEL)]})})
    assert required_terms(restored_from(pod)) is None


def test_restore_removes_provider_toleration_even_if_original() -> None:
    own = {"key": PROVIDER_TAINT_KEY, "operator": "Exists"}
    spec = restored_from(make_pod({"tolerations": [own, {"key": "gpu", "operator": "Exists"}]}))
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_restore_removes_added_tolerations() -> None:
    assert "tolerations" not in restored_from(make_pod())


def test_restore_removes_virtual_node_selector_unless_original() -> None:
    assert "nodeSelector" not in restored_from(make_pod())
    own = {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}
    assert restored_from(make_pod({"nodeSelector": own}))["nodeSelector"] == own


def test_restore_gives_back_the_original_affinity_not_the_upper_one() -> None:
    upper = mutated(full_pod())
    upper["spec"]["affinity"]["podAffinity"] = {"added": "upstairs"}
    spec = restore_constraints(upper["spec"], upper["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION])
    assert "podAffinity" not in spec["affinity"]
    assert spec["affinity"]["podAntiAffinity"] == full_pod()["spec"]["affinity"]["podAntiAffinity"]
    assert spec["affinity"]["nodeAffinity"][PREF] == full_pod()["spec"]["affinity"]["nodeAffinity"][PREF]


def test_restore_replaces_required_affinity_added_upstairs() -> None:
    # e.g. a descheduler's "kubernetes.io/hostname NotIn [vk]" on the recreated upper pod
    upper = mutated(make_pod({"nodeSelector": {"zone": "x"}}))
    upper["spec"]["affinity"] = required({"matchExpressions": [expr("kubernetes.io/hostname", "NotIn", "vk-a")]})
    spec = restore_constraints(upper["spec"], upper["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION])
    assert "affinity" not in spec


def test_restore_of_empty_original_affinity() -> None:
    assert restored_from(make_pod({"affinity": {}}))["affinity"] == {}
    assert "affinity" not in restored_from(make_pod())


def test_restore_without_annotation_only_removes_provider_toleration() -> None:
    spec = {"nodeSelector": {"zone": "x"}, "tolerations": [PROVIDER_TOLERATION, NOT_READY_300]}
    assert restore_constraints(spec, None) == {"nodeSelector": {"zone": "x"}, "tolerations": [NOT_READY_300]}


def test_restore_reads_a_tensile_kube_annotation() -> None:
    # Go's encoding/json with omitempty: only the non-empty fields are present.
    annotation = '{"nodeSelector":{"zone":"x"}}'
    upper = mutated(make_pod({"nodeSelector": {"zone": "x"}}))["spec"]
    spec = restore_constraints(upper, annotation)
    assert spec["nodeSelector"] == {"zone": "x"}
    assert "tolerations" not in spec
    assert "affinity" not in spec


def test_restore_does_not_modify_its_input() -> None:
    upper = mutated(full_pod())
    before = copy.deepcopy(upper)
    restore_constraints(upper["spec"], upper["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION])
    assert upper == before


@pytest.mark.parametrize(
    "annotation",
    [
        "",
        "not json",
        "[]",
        '"string"',
        '{"nodeSelector": ["zone"]}',
        '{"affinity": "x"}',
        '{"affinity": {"nodeAffinity": 1}}',
        '{"tolerations": {}}',
        '{"tolerations": [1]}',
    ],
)
def test_restore_rejects_malformed_annotation(annotation: str) -> None:
    with pytest.raises(ValueError, match=CLUSTER_SELECTOR_ANNOTATION):
        restore_constraints({"containers": []}, annotation)


# --- properties --------------------------------------------------------------------------------------

KEYS = st.sampled_from([CLUSTER_ID_LABEL, "zone", "disk", "kubernetes.io/hostname", "a/b~c", "region", "metadata.name"])
VALUES = st.text(alphabet="abcxyz-0123", max_size=5)
OPERATORS = st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"])
EXPRESSION = st.builds(
    lambda k, o, v: {"key": k, "operator": o, "values": v}, KEYS, OPERATORS, st.lists(VALUES, max_size=3)
)
TERM = st.fixed_dictionaries(
    {}, optional={"matchExpressions": st.lists(EXPRESSION, max_size=3), "matchFields": st.lists(EXPRESSION, max_size=2)}
)
REQUIRED = st.fixed_dictionaries({"nodeSelectorTerms": st.lists(TERM, min_size=1, max_size=3)})
PREFERRED = st.lists(st.fixed_dictionaries({"weight": st.integers(1, 100), "preference": TERM}), max_size=2)
NODE_AFFINITY = st.fixed_dictionaries({}, optional={REQ: st.none() | REQUIRED, PREF: PREFERRED})
TOPOLOGY_KEYS = st.sampled_from([HOSTNAME_LABEL, "topology.kubernetes.io/zone"])
POD_TERM = st.builds(anti_affinity_term, TOPOLOGY_KEYS)
POD_AFFINITY = st.fixed_dictionaries(
    {},
    optional={
        REQ: st.lists(POD_TERM, max_size=3),
        PREF: st.lists(st.builds(lambda w, t: {"weight": w, "podAffinityTerm": t}, st.integers(1, 100), POD_TERM)),
    },
)
AFFINITY = st.fixed_dictionaries(
    {},
    optional={
        "nodeAffinity": st.none() | NODE_AFFINITY,
        "podAffinity": st.just({PREF: []}) | POD_AFFINITY,
        "podAntiAffinity": POD_AFFINITY,
    },
)
SPREAD_CONSTRAINT = st.builds(spread, TOPOLOGY_KEYS, st.sampled_from([None, "DoNotSchedule", "ScheduleAnyway"]))
TOLERATION_KEYS = st.sampled_from(["", "gpu", "zone", NOT_READY_TAINT, UNREACHABLE_TAINT, PROVIDER_TAINT_KEY])
TOLERATION = st.fixed_dictionaries(
    {},
    optional={
        "key": TOLERATION_KEYS,
        "operator": st.sampled_from(["Exists", "Equal"]),
        "value": VALUES,
        "effect": st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": st.none() | st.integers(-10, 10_000),
    },
)
# The ones DefaultTolerationSeconds adds (300 s) and their like.
NODE_TOLERATION = st.builds(
    lambda key, seconds: {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds},
    st.sampled_from([NOT_READY_TAINT, UNREACHABLE_TAINT]),
    st.sampled_from([300, 0, 7200]) | st.integers(0, 10_000),
)
SPEC = st.fixed_dictionaries(
    {"containers": st.just([{"name": "c"}])},
    optional={
        "nodeSelector": st.none() | st.dictionaries(KEYS, VALUES, max_size=4),
        "affinity": st.none() | AFFINITY,
        "tolerations": st.none() | st.lists(TOLERATION | NODE_TOLERATION, max_size=6),
        SPREAD: st.none() | st.lists(SPREAD_CONSTRAINT, max_size=3),
    },
)
IGNORE_KEYS = st.frozensets(st.sampled_from([CLUSTER_ID_LABEL, "zone", "disk", "region", "pool"]), max_size=3)
OPTIONS = st.builds(
    MutateOptions,
    ignore_selector_keys=IGNORE_KEYS,
    add_virtual_node_selector=st.booleans(),
    add_unreachable_tolerations=st.booleans(),
    unreachable_toleration_seconds=st.none() | st.integers(0, 3600),
)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def without_nulls(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if v is not None}


def expected_lower_affinity(original: dict | None, upper_only: frozenset[str]) -> dict:
    """The original affinity with the required node affinity on ``upper_only`` keys left out."""
    affinity = dict(original or {})
    node_affinity = without_nulls(affinity.pop("nodeAffinity", None) or {})
    block = node_affinity.pop(REQ, None)
    kept = None if block is None else filter_required(block, lambda key: key in upper_only, "test")
    if kept is not None:
        node_affinity[REQ] = kept
    return {**affinity, "nodeAffinity": node_affinity}


def lower_view(affinity: dict | None) -> dict:
    affinity = dict(affinity or {})
    return {**affinity, "nodeAffinity": without_nulls(affinity.pop("nodeAffinity", None) or {})}


def assert_fits_a_virtual_node(upper_spec: dict, options: MutateOptions) -> None:
    for key in upper_spec.get("nodeSelector") or {}:
        assert key in options.ignore_selector_keys or key == VIRTUAL_NODE_TYPE_LABEL
    terms = required_terms(upper_spec)
    assert terms != []  # an empty nodeSelectorTerms list is invalid in Kubernetes
    for term in terms or []:
        for requirement in term.get("matchExpressions", []) + term.get("matchFields", []):
            # Upper-only keys stay, and so does excluding hosts by name (the descheduler's avoidance).
            assert requirement["key"] in options.ignore_selector_keys or avoidance.is_avoidance(requirement)
    assert all(c.get("whenUnsatisfiable") == "ScheduleAnyway" for c in upper_spec.get(SPREAD) or [])
    anti = ((upper_spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(REQ) or []
    assert all(term["topologyKey"] != HOSTNAME_LABEL for term in anti)


@PROPERTY_SETTINGS
@given(spec=SPEC, options=OPTIONS)
def test_property_round_trip_restores_original_constraints(spec: dict, options: MutateOptions) -> None:
    """The production pairing: the webhook's patch, then the virtual node's restore with its own keys."""
    view = apiserver_view(make_pod(spec))
    upper = apply(view, mutate_pod(view, options))
    assert_fits_a_virtual_node(upper["spec"], options)
    restored = restore_constraints(upper["spec"], annotation_of(upper), upper_only_keys=VIRTUAL_NODE_KEYS)
    original = view["spec"]
    upper_only = VIRTUAL_NODE_KEYS | options.ignore_selector_keys
    selector = original.get("nodeSelector")
    assert restored.get("nodeSelector") == (
        None if selector is None else {k: v for k, v in selector.items() if k not in upper_only}
    )
    expected_tolerations = original.get("tolerations")
    if expected_tolerations is not None:
        expected_tolerations = [t for t in expected_tolerations if t.get("key") != PROVIDER_TAINT_KEY]
    assert restored.get("tolerations") == expected_tolerations
    assert lower_view(restored.get("affinity")) == expected_lower_affinity(original.get("affinity"), upper_only)
    assert restored.get(SPREAD) == original.get(SPREAD)
    assert restored["containers"] == original["containers"]


@PROPERTY_SETTINGS
@given(spec=SPEC, options=OPTIONS)
def test_property_upper_pod_fits_a_virtual_node(spec: dict, options: MutateOptions) -> None:
    view = apiserver_view(make_pod(spec))
    patch = mutate_pod(view, options)
    upper = apply(view, patch)
    assert mutate_pod(upper, options) == []  # idempotent
    upper_spec = upper["spec"]
    assert_fits_a_virtual_node(upper_spec, options)
    tolerations = upper_spec["tolerations"]
    assert any(
        (t.get("key") or PROVIDER_TAINT_KEY) == PROVIDER_TAINT_KEY
        and (t.get("effect") or PROVIDER_TAINT_EFFECT) == PROVIDER_TAINT_EFFECT
        and (t.get("operator") == "Exists" or t.get("value", "") == PROVIDER_TAINT_VALUE)
        for t in tolerations
    )
    if options.add_unreachable_tolerations:
        seconds = options.unreachable_toleration_seconds
        for taint in (NOT_READY_TAINT, UNREACHABLE_TAINT):
            bounded = [
                t["tolerationSeconds"]
                for t in tolerations
                if t.get("key") == taint and t.get("effect") == "NoExecute" and t.get("tolerationSeconds") is not None
            ]
            assert all(seconds is not None and s >= seconds for s in bounded)
    for op in patch:
        assert op["path"] in (
            "/metadata/annotations",
            CLUSTER_SELECTOR_PATH,
            SIGNATURE_PATH,
            "/spec/nodeSelector",
            "/spec/affinity",
            "/spec/tolerations",
            "/spec/" + SPREAD,
        )


LATER = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": st.dictionaries(KEYS, VALUES, min_size=1, max_size=2),
        "tolerations": st.lists(TOLERATION, min_size=1, max_size=2),
        SPREAD: st.lists(SPREAD_CONSTRAINT, min_size=1, max_size=2),
        "anti": st.lists(POD_TERM, min_size=1, max_size=2),
        "required": REQUIRED,
    },
)


def later_webhook(upper: dict, later: dict) -> dict:
    """``upper`` after another webhook added ``later``'s constraints."""
    pod = copy.deepcopy(upper)
    spec = pod["spec"]
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **later.get("nodeSelector", {})}
    spec["tolerations"] = [*(spec.get("tolerations") or []), *later.get("tolerations", [])]
    if later.get(SPREAD):
        spec[SPREAD] = [*(spec.get(SPREAD) or []), *later[SPREAD]]
    affinity = spec.setdefault("affinity", {})
    if later.get("anti"):
        anti = affinity.setdefault("podAntiAffinity", {})
        anti[REQ] = [*(anti.get(REQ) or []), *later["anti"]]
    if "required" in later:
        affinity.setdefault("nodeAffinity", {})[REQ] = later["required"]
    return pod


@PROPERTY_SETTINGS
@given(spec=SPEC, options=OPTIONS, later=LATER)
def test_property_reinvocation_folds_what_a_later_webhook_added(
    spec: dict, options: MutateOptions, later: dict
) -> None:
    view = apiserver_view(make_pod(spec))
    upper = later_webhook(apply(view, mutate_pod(view, options)), later)
    result = mutate(upper, options)
    assert result.warnings == ()
    again = apply(upper, result.patch)
    assert mutate_pod(again, options) == []  # settled
    assert_fits_a_virtual_node(again["spec"], options)
    lower = restore_constraints(again["spec"], annotation_of(again), upper_only_keys=VIRTUAL_NODE_KEYS)
    upper_only = VIRTUAL_NODE_KEYS | options.ignore_selector_keys
    for key, value in later.get("nodeSelector", {}).items():
        if key not in upper_only and not (key == VIRTUAL_NODE_TYPE_LABEL and value == VIRTUAL_NODE_TYPE_VALUE):
            assert lower["nodeSelector"][key] == value
    for toleration in later.get("tolerations", []):
        if not is_virtual_node_toleration(toleration):  # those look like the webhook's own
            assert toleration in lower["tolerations"]
    for constraint in later.get(SPREAD, []):
        assert constraint in lower[SPREAD]
    for term in later.get("anti", []):
        assert term in lower["affinity"]["podAntiAffinity"][REQ]


def test_requirement_without_string_key_is_malformed() -> None:
    for requirement in ({"operator": "Exists"}, {"key": ["zone"], "operator": "Exists"}, None):
        with pytest.raises(MalformedPodError):
            mutate_pod(make_pod({"affinity": required({"matchExpressions": [requirement]})}), MutateOptions())


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


def shaped(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes garbage, at every level."""
    return st.one_of(strategy, strategy, strategy, ANY_JSON)


G_REQUIREMENT = shaped(
    st.fixed_dictionaries({}, optional={"key": shaped(KEYS), "operator": ANY_JSON, "values": ANY_JSON})
)
G_TERM = shaped(
    st.fixed_dictionaries(
        {},
        optional={
            "matchExpressions": shaped(st.lists(G_REQUIREMENT, max_size=3)),
            "matchFields": shaped(st.lists(G_REQUIREMENT, max_size=2)),
        },
    )
)
G_REQUIRED = shaped(st.fixed_dictionaries({}, optional={"nodeSelectorTerms": shaped(st.lists(G_TERM, max_size=3))}))
G_AFFINITY = shaped(
    st.fixed_dictionaries(
        {},
        optional={
            "nodeAffinity": shaped(st.fixed_dictionaries({}, optional={REQ: G_REQUIRED, PREF: ANY_JSON})),
            "podAffinity": ANY_JSON,
        },
    )
)
G_TOLERATION = shaped(
    st.fixed_dictionaries(
        {},
        optional={
            "key": shaped(TOLERATION_KEYS),
            "operator": shaped(st.sampled_from(["Exists", "Equal"])),
            "value": ANY_JSON,
            "effect": shaped(st.sampled_from(["NoSchedule", "NoExecute"])),
            "tolerationSeconds": shaped(st.integers(-10, 10_000)),
        },
    )
)
G_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": shaped(st.dictionaries(KEYS, VALUES, max_size=3)),
        "affinity": G_AFFINITY,
        "tolerations": shaped(st.lists(G_TOLERATION, max_size=4)),
    },
)


@PROPERTY_SETTINGS
@given(spec=G_SPEC, annotations=shaped(st.just({})), options=OPTIONS)
def test_property_garbage_is_malformed_pod_error_or_a_valid_patch(
    spec: Any, annotations: Any, options: MutateOptions
) -> None:
    pod = make_pod(spec, annotations=annotations)
    try:
        patch = mutate_pod(pod, options)
    except MalformedPodError:
        return
    upper = apply(pod, patch)
    assert mutate_pod(upper, options) == []
    annotation = upper["metadata"]["annotations"][CLUSTER_SELECTOR_ANNOTATION]
    try:
        restore_constraints(upper["spec"], annotation)
    except MalformedPodError:
        pass


@PROPERTY_SETTINGS
@given(
    saved_fields=st.fixed_dictionaries(
        {},
        optional={
            "nodeSelector": ANY_JSON,
            "affinity": G_AFFINITY,
            "tolerations": shaped(st.lists(G_TOLERATION, max_size=3)),
        },
    )
)
def test_property_restore_of_any_annotation_returns_a_spec_or_raises_value_error(saved_fields: dict) -> None:
    try:
        spec = restore_constraints({"containers": [], "affinity": {"podAffinity": {}}}, json.dumps(saved_fields))
    except ValueError:
        return
    assert isinstance(spec, dict)


def test_a_new_pod_of_an_owner_the_descheduler_moved_avoids_those_nodes_upstairs_only() -> None:
    seen: list[tuple[str, str]] = []

    def avoided(pod: dict, namespace: str) -> list[str]:
        seen.append((pod["metadata"]["name"], namespace))
        return ["vk-a"]

    options = MutateOptions(avoided=avoided)
    view = apiserver_view(make_pod({"containers": [{"name": "c"}],
                                    "nodeSelector": {"disktype": "ssd"}}))
    upper = apply(view, mutate_pod(view, options))
    terms = required_terms(upper["spec"])
    assert terms == [{"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "NotIn", "values": ["vk-a"]}]}]
    restored = restore_constraints(upper["spec"], annotation_of(upper), upper_only_keys=VIRTUAL_NODE_KEYS)
    assert restored.get("nodeSelector") == {"disktype": "ssd"}
    assert not ((restored.get("affinity") or {}).get("nodeAffinity"))  # the avoidance stays upstairs
    assert seen and seen[0][1] == view["metadata"].get("namespace", seen[0][1])
    assert mutate_pod(upper, options) == []  # settled


def test_an_avoidance_already_in_the_spec_stays_upstairs() -> None:
    spec = {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {REQ: {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]},
                              {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": ["vk-a"]}]}]}}}}
    view = apiserver_view(make_pod(spec))
    upper = apply(view, mutate_pod(view, MutateOptions()))
    assert required_terms(upper["spec"]) == [
        {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "NotIn", "values": ["vk-a"]}]}]
