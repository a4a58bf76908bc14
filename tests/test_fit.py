"""kube-scheduler's filter rules on plain dicts (tensile.fit)."""

from __future__ import annotations

from typing import Any

import pytest

from tensile import fit
from tensile.cluster_selector import MalformedPodError

LABELS = {"zone": "a", "disktype": "ssd", "cores": "16"}


def req(key: str, operator: str, *values: str) -> dict[str, Any]:
    r: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        r["values"] = list(values)
    return r


@pytest.mark.parametrize(("requirement", "expected"), [
    (req("zone", "In", "a", "b"), True),
    (req("zone", "In", "b"), False),
    (req("missing", "In", "a"), False),
    (req("zone", "NotIn", "b"), True),
    (req("zone", "NotIn", "a"), False),
    (req("missing", "NotIn", "a"), True),  # NotIn matches a node without the label
    (req("zone", "Exists"), True),
    (req("missing", "Exists"), False),
    (req("zone", "DoesNotExist"), False),
    (req("missing", "DoesNotExist"), True),
    (req("cores", "Gt", "8"), True),
    (req("cores", "Gt", "16"), False),
    (req("cores", "Lt", "32"), True),
    (req("cores", "Lt", "16"), False),
    (req("zone", "Gt", "1"), False),  # a non-integer label never compares
    (req("missing", "Lt", "100"), False),
])
def test_match_expression_operators_follow_kubernetes(requirement: dict[str, Any], expected: bool) -> None:
    assert fit.requirement_matches(requirement, LABELS) is expected


@pytest.mark.parametrize("requirement", [
    req("zone", "Sometimes", "a"), req("cores", "Gt", "8", "9"), req("cores", "Gt", "eight"), {"operator": "In"},
])
def test_malformed_requirements_are_refused_with_a_reason(requirement: dict[str, Any]) -> None:
    with pytest.raises(MalformedPodError):
        fit.requirement_matches(requirement, LABELS)


def test_match_fields_on_the_node_name() -> None:
    term = {"matchFields": [req("metadata.name", "In", "n1")]}
    assert fit.term_matches(term, {}, "n1") and not fit.term_matches(term, {}, "n2")
    assert fit.term_matches({"matchFields": [req("metadata.name", "NotIn", "n1")]}, {}, "n2")
    # Not knowing the name (a profile) gives the benefit of the doubt.
    assert fit.term_matches(term, {}, None)
    with pytest.raises(MalformedPodError):
        fit.term_matches({"matchFields": [req("metadata.uid", "In", "x")]}, {}, "n1")


def test_terms_are_ored_requirements_anded_and_an_empty_term_matches_nothing() -> None:
    required = {"nodeSelectorTerms": [
        {"matchExpressions": [req("zone", "In", "b")]},
        {"matchExpressions": [req("zone", "In", "a"), req("disktype", "In", "ssd")]},
    ]}
    assert fit.required_matches(required, LABELS)
    assert not fit.required_matches({"nodeSelectorTerms": [
        {"matchExpressions": [req("zone", "In", "a"), req("disktype", "In", "hdd")]}]}, LABELS)
    assert not fit.required_matches({"nodeSelectorTerms": [{}]}, LABELS)
    assert fit.required_matches(None, LABELS)


def test_node_selector_and_affinity_both_apply() -> None:
    spec = {"nodeSelector": {"zone": "a"}, "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [req("disktype", "In", "hdd")]}]}}}}
    assert not fit.placement_matches(spec, LABELS)
    assert fit.placement_matches(spec, {**LABELS, "disktype": "hdd"})
    assert fit.placement_matches({}, {})


def test_taints_filter_on_no_schedule_and_no_execute_only() -> None:
    gpu = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    prefer = {"key": "spot", "effect": "PreferNoSchedule"}
    evict = {"key": "maintenance", "effect": "NoExecute"}
    assert fit.untolerated([prefer], []) is None
    assert fit.untolerated([gpu, evict], []) == gpu
    assert fit.untolerated([gpu, evict], [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]) == evict
    assert fit.untolerated([gpu, evict], [{"operator": "Exists"}]) is None
    assert fit.untolerated([gpu], [{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}]) == gpu
    assert fit.describe_taint(gpu) == "dedicated=gpu:NoSchedule"
    assert fit.describe_taint(evict) == "maintenance:NoExecute"
