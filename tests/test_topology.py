"""The mesh graph: rings found, what the loop rule blocks, the text, DOT and a legible picture."""

from __future__ import annotations

from pathlib import Path

from topology import discover, graph, render
from topology.graph import Cluster, Facts, VirtualNode


def ring(n: int) -> Facts:
    names = [chr(ord("a") + i) for i in range(n)]
    return Facts(
        clusters=[Cluster(f"uid-{x}", x, real_nodes=2) for x in names],
        virtual_nodes=[VirtualNode(f"vk-{names[(i + 1) % n]}", f"uid-{x}", f"uid-{names[(i + 1) % n]}", ready=True,
                                   pods=i, copies=i) for i, x in enumerate(names)],
    )


def test_a_ring_of_three_is_one_cycle_and_each_origin_stops_before_home() -> None:
    g = graph.build(ring(3))
    assert graph.cycles(g) == [["uid-a", "uid-b", "uid-c"]]
    blocks = {b.origin: b for b in graph.blocked(g, graph.cycles(g)[0])}
    assert blocks["uid-a"].at == "uid-c" and blocks["uid-a"].virtual_nodes == ("vk-a",)
    assert blocks["uid-b"].through == ("uid-b", "uid-c", "uid-a")
    text = graph.describe(g)
    assert "a -> b -> c -> a" in text
    assert "pods from a stop in c: vk-a lead(s) back to a (origin chain a > b > c)" in text
    assert "a -> b  via vk-b" in text and "Ready" in text


def test_no_ring_no_cycle_and_an_unknown_target_is_shown() -> None:
    facts = Facts([Cluster("u1", "upper", 0)], [VirtualNode("vk-x", "u1", "u9", ready=False)])
    g = graph.build(facts)
    assert graph.cycles(g) == []
    text = graph.describe(g)
    assert "cycles: none" in text and "NotReady" in text and "not among the given kubeconfigs" in text


def test_two_pools_of_one_lower_cluster_are_two_edges() -> None:
    facts = Facts([Cluster("u", "upper"), Cluster("l", "lower", 4)],
                  [VirtualNode("vk-a", "u", "l", True, 3), VirtualNode("vk-b", "u", "l", True, 5)])
    g = graph.build(facts)
    assert g.number_of_edges("u", "l") == 2
    assert "vk-a" in graph.dot(g) and "vk-b" in graph.dot(g)


def test_dot_marks_ring_edges_and_not_ready_ones() -> None:
    facts = ring(2)
    facts.virtual_nodes[0] = VirtualNode("vk-b", "uid-a", "uid-b", ready=False)
    text = graph.dot(graph.build(facts))
    assert text.startswith("digraph tensile {") and text.count("penwidth=2.5") == 2
    assert "color=red" in text


def test_ten_clusters_draw_to_a_png(tmp_path: Path) -> None:
    g = graph.build(ring(10))
    out = tmp_path / "mesh.png"
    written = render.write(g, out)
    assert written == [out, tmp_path / "mesh.dot"]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width = int.from_bytes(data[16:20], "big")
    assert width >= 1000, "ten clusters get a big enough canvas"


def test_facts_from_what_clusters_showed() -> None:
    vnode = {"metadata": {"name": "vk-b", "labels": {"type": "virtual-kubelet", "tensile.io/lower-cluster": "B"}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    legacy = {"metadata": {"name": "vk-old", "labels": {"type": "virtual-kubelet", "clusterID": "B"}}}
    real = {"metadata": {"name": "n1", "labels": {}}}
    from collections import Counter
    a = discover.Seen("ka", "a", "A", [vnode, legacy, real], Counter(), Counter({"vk-b": 2}))
    b = discover.Seen("kb", "a", "B", [real], Counter({("A", "vk-b"): 2}), Counter())
    facts = discover.facts([a, b])
    assert [cl.name for cl in facts.clusters] == ["a#1", "a#2"], "contexts of the same name are told apart"
    by_name = {vn.name: vn for vn in facts.virtual_nodes}
    assert by_name["vk-b"] == VirtualNode("vk-b", "A", "B", True, 2, 2)
    assert by_name["vk-old"].lower == "B" and not by_name["vk-old"].ready
