"""--lower-node-selector: kubectl's label selector syntax as node-selector requirements."""

from __future__ import annotations

import pytest

from tensile import selectors


def test_every_operator() -> None:
    reqs = selectors.requirements("pool=a, tier==gold,spot!=true, zone in (x, y),arch notin (arm),gpu,!cordoned")
    assert reqs == [
        {"key": "pool", "operator": "In", "values": ["a"]},
        {"key": "tier", "operator": "In", "values": ["gold"]},
        {"key": "spot", "operator": "NotIn", "values": ["true"]},
        {"key": "zone", "operator": "In", "values": ["x", "y"]},
        {"key": "arch", "operator": "NotIn", "values": ["arm"]},
        {"key": "gpu", "operator": "Exists"},
        {"key": "cordoned", "operator": "DoesNotExist"},
    ]
    assert selectors.requirements("  ") == []
    assert selectors.requirements("example.com/pool=a")[0]["key"] == "example.com/pool"


@pytest.mark.parametrize("bad", ["pool=a,", "zone in ()", "zone in (x", "a b", "=x", "pool=a)"])
def test_bad_selectors_say_which_part(bad: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.requirements(bad)


def test_matches_as_the_apiserver_does() -> None:
    reqs = selectors.requirements("pool=a,spot!=true,!cordoned")
    assert selectors.matches(reqs, {"pool": "a"})
    assert selectors.matches(reqs, {"pool": "a", "spot": "false"})
    assert not selectors.matches(reqs, {"pool": "a", "spot": "true"})
    assert not selectors.matches(reqs, {"pool": "b"})
    assert not selectors.matches(reqs, {"pool": "a", "cordoned": ""})


def test_pinned_ands_the_pool_into_every_term() -> None:
    pool = selectors.requirements("pool=a")
    assert selectors.pinned({}, pool)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"] == {"nodeSelectorTerms": [{"matchExpressions": pool}]}
    own = [{"key": "disk", "operator": "In", "values": ["ssd"]}]
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": own}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}},
        "podAffinity": {"x": 1}}}
    terms = selectors.pinned(spec, pool)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"] == own + pool
    assert terms[1]["matchExpressions"] == pool and terms[1]["matchFields"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"] == own, "the input is not changed"
    # Idempotent: pinning twice adds nothing.
    assert selectors.pinned(selectors.pinned(spec, pool), pool) == selectors.pinned(spec, pool)
