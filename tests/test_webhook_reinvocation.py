"""webhook.reinvocation: what counts as added since the webhook's mutation, and how it is folded."""

from __future__ import annotations

from typing import Any

from tensile.cluster_selector import SavedConstraints
from tensile.conventions import VIRTUAL_NODE_TYPE_LABEL, VIRTUAL_NODE_TYPE_VALUE
from webhook.reinvocation import additions, both, fold

REQ = "requiredDuringSchedulingIgnoredDuringExecution"
PREF = "preferredDuringSchedulingIgnoredDuringExecution"


def req(key: str) -> dict[str, Any]:
    return {"key": key, "operator": "Exists"}


def block(*terms: list[str]) -> dict[str, Any]:
    return {"nodeSelectorTerms": [{"matchExpressions": [req(k) for k in term]} for term in terms]}


def test_both_has_a_term_per_pair() -> None:
    assert both(block(["a"], ["b"]), block(["c"])) == block(["a", "c"], ["b", "c"])
    assert both(block(["a", "c"]), block(["c"])) == block(["a", "c"])  # no repeated requirement


def test_both_with_no_constraint_is_the_other() -> None:
    assert both(None, block(["a"])) == block(["a"])
    assert both({"nodeSelectorTerms": []}, block(["a"])) == block(["a"])
    assert both(block(["a"]), {"nodeSelectorTerms": []}) == block(["a"])


def test_both_with_an_empty_term_matches_no_node_there() -> None:
    # An empty term matches no node, so neither does its pairing with anything.
    assert both({"nodeSelectorTerms": [{}]}, block(["a"])) == {"nodeSelectorTerms": [{}]}


def test_both_keeps_match_fields() -> None:
    first = {"nodeSelectorTerms": [{"matchFields": [req("metadata.name")]}]}
    assert both(first, block(["a"])) == {
        "nodeSelectorTerms": [{"matchExpressions": [req("a")], "matchFields": [req("metadata.name")]}]
    }


def test_nothing_is_added_when_the_spec_is_what_was_produced() -> None:
    produced = {
        "nodeSelector": {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE},
        "tolerations": [{"key": "a"}],
        "affinity": {"nodeAffinity": {REQ: block(["clusterID"])}},
    }
    assert additions({"containers": [], **produced}, produced) == {}


def test_the_virtual_node_selector_is_never_an_addition() -> None:
    spec = {"nodeSelector": {VIRTUAL_NODE_TYPE_LABEL: VIRTUAL_NODE_TYPE_VALUE, "disk": "ssd"}}
    assert additions(spec, {}) == {"nodeSelector": {"disk": "ssd"}}


def test_every_affinity_list_counts() -> None:
    term = {"topologyKey": "zone"}
    weighted = {"weight": 1, "podAffinityTerm": term}
    spec = {
        "affinity": {
            "nodeAffinity": {PREF: [{"weight": 1, "preference": {}}]},
            "podAffinity": {REQ: [term], PREF: [weighted]},
            "podAntiAffinity": {REQ: [term], PREF: [weighted]},
        }
    }
    produced = {"affinity": {"podAffinity": {REQ: [term]}}}
    assert additions(spec, produced) == {
        "affinity": {
            "nodeAffinity": {PREF: [{"weight": 1, "preference": {}}]},
            "podAffinity": {PREF: [weighted]},
            "podAntiAffinity": {REQ: [term], PREF: [weighted]},
        }
    }


def test_a_removed_required_node_affinity_is_no_addition() -> None:
    assert additions({}, {"affinity": {"nodeAffinity": {REQ: block(["clusterID"])}}}) == {}


def test_fold_appends_and_ands() -> None:
    saved = SavedConstraints(
        node_selector={"zone": "x"},
        affinity={"nodeAffinity": {REQ: block(["zone"])}},
        tolerations=[{"key": "a"}],
        ignore_selector_keys=frozenset(),
    )
    added = {
        "nodeSelector": {"zone": "y", "disk": "ssd"},
        "tolerations": [{"key": "b"}],
        "topologySpreadConstraints": [{"topologyKey": "zone"}],
        "affinity": {"nodeAffinity": {REQ: block(["disk"])}, "podAntiAffinity": {REQ: [{"topologyKey": "h"}]}},
    }
    assert fold(saved, added) == SavedConstraints(
        node_selector={"zone": "y", "disk": "ssd"},
        affinity={
            "nodeAffinity": {REQ: block(["zone", "disk"])},
            "podAntiAffinity": {REQ: [{"topologyKey": "h"}]},
        },
        tolerations=[{"key": "a"}, {"key": "b"}],
        topology_spread_constraints=[{"topologyKey": "zone"}],
        ignore_selector_keys=frozenset(),
    )
    assert fold(saved, {}) == saved


def test_fold_of_what_is_saved_already_changes_nothing() -> None:
    saved = SavedConstraints(
        node_selector={"zone": "x"},
        affinity={"nodeAffinity": {REQ: block(["zone"], ["disk"])}, "podAntiAffinity": {REQ: [{"topologyKey": "h"}]}},
        tolerations=[{"key": "a"}],
        topology_spread_constraints=[{"topologyKey": "zone"}],
    )
    again = {
        "nodeSelector": saved.node_selector,
        "affinity": saved.affinity,
        "tolerations": saved.tolerations,
        "topologySpreadConstraints": saved.topology_spread_constraints,
    }
    assert fold(saved, again) == saved
    assert both(block(["zone"], ["disk"]), block(["zone"], ["disk"])) == block(["zone"], ["disk"])
