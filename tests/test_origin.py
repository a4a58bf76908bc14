"""Origin chains: a copy records the clusters it came through, and never goes back into one."""

from __future__ import annotations

from tensile import conventions as c
from tensile import origin


def pod(chain: str | None) -> dict[str, object]:
    return {"metadata": {"annotations": {c.ORIGIN_CHAIN_ANNOTATION: chain} if chain is not None else {}}}


def node(name: str, lower: str | None) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {c.LOWER_CLUSTER_LABEL: lower} if lower else {}}}


def test_a_user_pod_has_no_chain_and_a_copy_extends_it() -> None:
    assert origin.chain_of(pod(None)) == []
    assert origin.chain_of(pod(" a, ,b ")) == ["a", "b"]
    assert origin.extended([], "a", "b") == ["a", "b"]
    # A copy of a copy: the upper cluster is already the chain's last link.
    assert origin.extended(["a", "b"], "b", "c") == ["a", "b", "c"]
    assert origin.extended(["x"] * 40, "a", "b")[-2:] == ["a", "b"]
    assert len(origin.extended(["x"] * 40, "a", "b")) == origin.MAX_LENGTH


def test_a_virtual_node_into_the_chain_is_refused_with_the_reason() -> None:
    assert origin.loop_reason(pod(None), node("vk-a", "a")) is None
    assert origin.loop_reason(pod("a,b,c"), node("vk-d", "d")) is None
    assert origin.loop_reason(pod("a,b,c"), node("real", None)) is None
    reason = origin.loop_reason(pod("a,b,c"), node("vk-a", "a"))
    assert reason is not None and "vk-a leads to cluster a" in reason and "a > b > c" in reason


def test_the_affinity_requirement_names_the_chain() -> None:
    req = origin.affinity_requirement(["c", "a", "b", "a"])
    assert req == {"key": c.LOWER_CLUSTER_LABEL, "operator": "NotIn", "values": ["a", "b", "c"]}
    assert origin.is_loop_requirement(req)


def test_malformed_objects_have_no_chain_and_lead_nowhere() -> None:
    for bad in ({"metadata": True}, {"metadata": {"annotations": ["x"]}}, {"metadata": {"annotations": {
            c.ORIGIN_CHAIN_ANNOTATION: 7}}}, []):
        assert origin.chain_of(bad) == []  # type: ignore[arg-type]
        assert origin.lower_cluster_of(bad) == ""  # type: ignore[arg-type]
        assert origin.loop_reason(bad, bad) is None  # type: ignore[arg-type]
