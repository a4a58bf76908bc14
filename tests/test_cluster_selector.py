"""tensile.cluster_selector on its own: the annotation format and the lower copy's constraints.

The webhook-paired round trips are in test_webhook_mutate.py; here annotations are written by hand,
as Tensile Kube, an older tensile or a pod author would have.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensile.cluster_selector import (
    SavedConstraints,
    covers,
    decode,
    encode,
    is_virtual_node_toleration,
    parse,
    restore_constraints,
)
from tensile.conventions import (
    CLUSTER_ID_LABEL,
    CLUSTER_SELECTOR_ANNOTATION,
    HOSTNAME_LABEL,
    NOT_READY_TAINT,
    PROVIDER_TAINT_KEY,
    UNREACHABLE_TAINT,
    VIRTUAL_NODE_TYPE_LABEL,
    VIRTUAL_NODE_TYPE_VALUE,
)

REQ = "requiredDuringSchedulingIgnoredDuringExecution"
PREF = "preferredDuringSchedulingIgnoredDuringExecution"
SPREAD = "topologySpreadConstraints"
PROVIDER = {"key": PROVIDER_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
NOT_READY_FOREVER = {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}
UNREACHABLE_FOREVER = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}
NOT_READY_300 = {**NOT_READY_FOREVER, "tolerationSeconds": 300}
GPU = {"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}
HOST_TERM = {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": HOSTNAME_LABEL}
ZONE_TERM = {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "zone"}
HOST_SPREAD = {"maxSkew": 1, "topologyKey": HOSTNAME_LABEL, "whenUnsatisfiable": "DoNotSchedule"}
VIRTUAL_NODE_SELECTOR = {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE}


def annotation(**fields: Any) -> str:
    return json.dumps(fields)


def required(*keys: str) -> dict[str, Any]:
    return {"nodeSelectorTerms": [{"matchExpressions": [{"key": k, "operator": "Exists"} for k in keys]}]}


def upper(**spec: Any) -> dict[str, Any]:
    """An upper pod spec as the webhook leaves it: on a virtual node, with the webhook's tolerations."""
    tolerations = [*spec.pop("tolerations", []), PROVIDER, NOT_READY_FOREVER, UNREACHABLE_FOREVER]
    return {"containers": [{"name": "c"}], "nodeSelector": VIRTUAL_NODE_SELECTOR, "tolerations": tolerations, **spec}


# --- the format ----------------------------------------------------------------------------------------


def test_encode_writes_tensile_kube_fields_first_then_tensiles() -> None:
    saved = SavedConstraints(
        node_selector={"zone": "x"},
        affinity={},
        tolerations=[GPU],
        topology_spread_constraints=[HOST_SPREAD],
        ignore_selector_keys=frozenset({"pool", CLUSTER_ID_LABEL}),
    )
    value = saved.encode()
    assert list(json.loads(value)) == ["nodeSelector", "affinity", "tolerations", SPREAD, "ignoreSelectorKeys"]
    assert json.loads(value)["ignoreSelectorKeys"] == [CLUSTER_ID_LABEL, "pool"]
    assert parse(value) == saved


def test_tensile_kube_annotation_parses_without_the_new_fields() -> None:
    saved = parse('{"nodeSelector":{"zone":"x"}}')
    assert saved == SavedConstraints(node_selector={"zone": "x"})
    assert not saved.written_by_tensile
    assert parse('{"ignoreSelectorKeys":[]}').written_by_tensile


def test_encode_of_a_spec_stays_tensile_kubes_format() -> None:
    spec = {"nodeSelector": {"a": "b"}, "tolerations": [{"key": "k"}], "affinity": None, SPREAD: []}
    assert json.loads(encode(spec)) == {"nodeSelector": {"a": "b"}, "tolerations": [{"key": "k"}]}
    assert decode(encode({SPREAD: [HOST_SPREAD]})) == {SPREAD: [HOST_SPREAD]}


@pytest.mark.parametrize(
    "value",
    [
        '{"ignoreSelectorKeys": "clusterID"}',
        '{"ignoreSelectorKeys": [1]}',
        '{"topologySpreadConstraints": {}}',
        '{"topologySpreadConstraints": [null]}',
        '{"affinity": {"podAntiAffinity": []}}',
        '{"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [1]}}}',
        '{"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": '
        '{"nodeSelectorTerms": [null]}}}}',
    ],
)
def test_malformed_new_fields_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=CLUSTER_SELECTOR_ANNOTATION):
        restore_constraints({"containers": []}, value)


# --- one source of truth for upper-only keys ----------------------------------------------------------


def test_annotation_ignore_keys_are_upper_only_too() -> None:
    value = annotation(
        nodeSelector={"pool": "batch", "disk": "ssd", CLUSTER_ID_LABEL: "a"},
        affinity={"nodeAffinity": {REQ: required("pool", "zone")}},
        ignoreSelectorKeys=["pool"],
    )
    spec = restore_constraints(upper(), value)  # the virtual node knows only its default keys
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["affinity"] == {"nodeAffinity": {REQ: required("zone")}}


def test_ignore_keys_of_a_requirement_alone_drop_the_whole_required_block() -> None:
    value = annotation(affinity={"nodeAffinity": {REQ: required("pool")}}, ignoreSelectorKeys=["pool"])
    assert restore_constraints(upper(), value, upper_only_keys=frozenset())["affinity"] == {"nodeAffinity": {}}


def test_tensile_kube_annotation_uses_only_the_given_keys() -> None:
    value = annotation(nodeSelector={"pool": "batch", CLUSTER_ID_LABEL: "a"})
    assert restore_constraints(upper(), value)["nodeSelector"] == {"pool": "batch"}


# --- affinity and spreading ---------------------------------------------------------------------------


def test_tensile_annotation_gives_back_the_original_affinity() -> None:
    original = {"podAntiAffinity": {REQ: [HOST_TERM, ZONE_TERM]}, "nodeAffinity": {REQ: required("zone")}}
    relaxed = {"podAntiAffinity": {REQ: [ZONE_TERM]}}
    spec = restore_constraints(upper(affinity=relaxed), annotation(affinity=original, ignoreSelectorKeys=[]))
    assert spec["affinity"] == original


def test_tensile_kube_annotation_keeps_the_upper_pod_affinity() -> None:
    # Tensile Kube's webhook never touched pod (anti-)affinity: the upper pod's is the original.
    upstairs = {"podAntiAffinity": {PREF: []}}
    spec = restore_constraints(upper(affinity=upstairs), annotation(affinity={"nodeAffinity": {REQ: required("z")}}))
    assert spec["affinity"] == {"podAntiAffinity": {PREF: []}, "nodeAffinity": {REQ: required("z")}}


def test_saved_spread_constraints_replace_the_upper_ones() -> None:
    anyway = {**HOST_SPREAD, "whenUnsatisfiable": "ScheduleAnyway"}
    value = annotation(topologySpreadConstraints=[HOST_SPREAD, anyway], ignoreSelectorKeys=[])
    assert restore_constraints(upper(topologySpreadConstraints=[anyway]), value)[SPREAD] == [HOST_SPREAD, anyway]


def test_without_saved_spread_constraints_the_upper_ones_stay() -> None:
    anyway = {**HOST_SPREAD, "whenUnsatisfiable": "ScheduleAnyway"}
    spec = restore_constraints(upper(topologySpreadConstraints=[anyway]), annotation(ignoreSelectorKeys=[]))
    assert spec[SPREAD] == [anyway]
    assert SPREAD not in restore_constraints(upper(), annotation())


# --- tolerations ------------------------------------------------------------------------------------------


def test_saved_toleration_not_covered_upstairs_is_not_restored() -> None:
    # A hand-written annotation cannot give the lower copy a toleration upper admission never saw.
    spec = restore_constraints(upper(), annotation(tolerations=[GPU, NOT_READY_300]))
    assert spec["tolerations"] == [NOT_READY_300]  # covered by the webhook's unbounded one


def test_saved_toleration_covered_by_a_broader_one_is_restored() -> None:
    broader = {"key": "gpu", "operator": "Exists"}
    spec = restore_constraints(upper(tolerations=[broader]), annotation(tolerations=[GPU]))
    assert spec["tolerations"] == [GPU, broader]


def test_tolerations_added_upstairs_reach_the_lower_copy() -> None:
    added = {"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    spec = restore_constraints(upper(tolerations=[GPU, added]), annotation(tolerations=[GPU]))
    assert spec["tolerations"] == [GPU, added]


def test_the_webhooks_own_tolerations_are_never_restored() -> None:
    bounded = {**UNREACHABLE_FOREVER, "tolerationSeconds": 600}
    spec = restore_constraints(upper(tolerations=[bounded]), annotation(tolerations=[PROVIDER]))
    assert spec["tolerations"] == []
    assert "tolerations" not in restore_constraints(upper(), annotation())


def test_user_tolerations_of_node_taints_in_another_shape_are_restored() -> None:
    equal = {"key": NOT_READY_TAINT, "operator": "Equal", "effect": "NoExecute", "tolerationSeconds": 30}
    assert restore_constraints(upper(tolerations=[equal]), annotation())["tolerations"] == [equal]


@pytest.mark.parametrize(
    ("broad", "narrow", "expected"),
    [
        (GPU, GPU, True),
        ({"operator": "Exists"}, GPU, True),
        ({"key": "gpu", "operator": "Exists"}, GPU, True),
        ({"key": "gpu", "operator": "Equal", "value": "a100"}, GPU, True),  # no effect: every effect
        ({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}, GPU, False),
        ({"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}, GPU, False),
        ({"key": "tpu", "operator": "Exists"}, GPU, False),
        (GPU, {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}, False),
        (GPU, {"operator": "Exists"}, False),
        ({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}, {"key": "gpu", "operator": "Exists"}, False),
        (NOT_READY_FOREVER, NOT_READY_300, True),
        (NOT_READY_300, NOT_READY_FOREVER, False),
        ({**NOT_READY_FOREVER, "tolerationSeconds": 600}, NOT_READY_300, True),
        (NOT_READY_300, {**NOT_READY_FOREVER, "tolerationSeconds": 600}, False),
        ({"key": "gpu", "value": "a100", "effect": "NoSchedule"}, GPU, True),  # operator defaults to Equal
        ({"key": "gpu", "operator": "Exists"}, {"key": "gpu", "operator": "Bogus"}, False),
        ({"key": "gpu", "operator": "Bogus"}, {"key": "gpu", "operator": "Bogus"}, True),
    ],
)
def test_covers(broad: dict, narrow: dict, expected: bool) -> None:
    assert covers(broad, narrow) is expected


def test_virtual_node_tolerations() -> None:
    assert is_virtual_node_toleration(PROVIDER)
    assert is_virtual_node_toleration({"key": PROVIDER_TAINT_KEY, "operator": "Equal", "value": "tensile"})
    assert is_virtual_node_toleration(NOT_READY_300)
    assert is_virtual_node_toleration(UNREACHABLE_FOREVER)
    assert not is_virtual_node_toleration({**NOT_READY_FOREVER, "effect": "NoSchedule"})
    assert not is_virtual_node_toleration({**NOT_READY_FOREVER, "operator": "Equal"})
    assert not is_virtual_node_toleration(GPU)


# --- no annotation ----------------------------------------------------------------------------------------


def test_without_annotation_only_virtual_node_constraints_are_shed() -> None:
    spec = upper(
        nodeSelector={**VIRTUAL_NODE_SELECTOR, CLUSTER_ID_LABEL: "a", "disk": "ssd"},
        affinity={"nodeAffinity": {REQ: required(CLUSTER_ID_LABEL)}, "podAntiAffinity": {REQ: [HOST_TERM]}},
        topologySpreadConstraints=[HOST_SPREAD],
    )
    lower = restore_constraints(spec, None)
    assert lower["nodeSelector"] == {"disk": "ssd"}
    assert lower["affinity"] == {"podAntiAffinity": {REQ: [HOST_TERM]}}
    assert lower["tolerations"] == [NOT_READY_FOREVER, UNREACHABLE_FOREVER]
    assert lower[SPREAD] == [HOST_SPREAD]


def test_restore_returns_a_new_dict_and_leaves_its_input_alone() -> None:
    spec = upper(tolerations=[GPU], affinity={"podAntiAffinity": {REQ: [ZONE_TERM]}})
    before = copy.deepcopy(spec)
    value = annotation(
        nodeSelector={"zone": "x"},
        affinity={"podAntiAffinity": {REQ: [HOST_TERM]}},
        tolerations=[GPU],
        topologySpreadConstraints=[HOST_SPREAD],
        ignoreSelectorKeys=[],
    )
    for annotation_value in (value, None):
        lower = restore_constraints(spec, annotation_value)
        assert lower is not spec
        assert spec == before


# --- robustness -----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": JSON,
        "affinity": JSON | st.just({"podAntiAffinity": {REQ: [HOST_TERM]}}),
        "tolerations": JSON | st.lists(st.sampled_from([GPU, PROVIDER, NOT_READY_300, {"operator": "Exists"}])),
        SPREAD: JSON | st.just([HOST_SPREAD]),
        "ignoreSelectorKeys": JSON | st.lists(st.sampled_from(["pool", CLUSTER_ID_LABEL])),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=FIELDS, tolerations=st.lists(st.sampled_from([GPU, PROVIDER, {"operator": "Exists"}]), max_size=3))
def test_property_any_annotation_gives_a_spec_or_a_value_error(fields: dict, tolerations: list[dict]) -> None:
    try:
        spec = restore_constraints(upper(tolerations=tolerations), json.dumps(fields))
    except ValueError:
        return
    assert isinstance(spec, dict)
    assert not any(t.get("key") == PROVIDER_TAINT_KEY for t in spec.get("tolerations", []))
    for toleration in spec.get("tolerations", []):  # nothing upper admission did not see
        assert any(covers(u, toleration) for u in upper(tolerations=tolerations)["tolerations"])
