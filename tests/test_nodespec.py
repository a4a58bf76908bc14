"""Node shapes for `tensile cluster up --nodes` and the pytest plugin's markers."""

from __future__ import annotations

import pytest

from e2e import nodespec


def test_a_count_and_a_shape() -> None:
    nodes = nodespec.parse("3x cpu=8,memory=32Gi,labels=zone=a;disk=ssd", "lower")
    assert [n.name for n in nodes] == ["lower-0", "lower-1", "lower-2"]
    assert {(n.cpu, n.memory) for n in nodes} == {("8", "32Gi")}
    assert nodes[0].labels == {"zone": "a", "disk": "ssd"}


def test_taints_extended_resources_and_numbering_across_specs() -> None:
    nodes = nodespec.parse_all(["cpu=4,taints=gpu=yes:NoSchedule,nvidia.com/gpu=2", "2x"], "c", "2x cpu=1")
    assert [n.name for n in nodes] == ["c-0", "c-1", "c-2"]
    assert nodes[0].taints == [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]
    assert nodes[0].extended == {"nvidia.com/gpu": "2"}
    assert nodes[1].cpu == "32", "a bare count takes the default shape of a node"
    assert [n.cpu for n in nodespec.parse_all([], "c", "2x cpu=1")] == ["1", "1"]


@pytest.mark.parametrize("bad", ["0x cpu=1", "cpu", "colour=red", "taints=a=b:Sometimes", "labels=novalue"])
def test_bad_specs_name_the_part(bad: str) -> None:
    with pytest.raises(nodespec.NodeSpecError):
        nodespec.parse(bad, "c")
