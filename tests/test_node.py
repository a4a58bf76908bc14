from tensile import conventions as c
from tensile.controllers.node import conditions, merged_taints, provider_taint

NOT_READY = {"key": c.NOT_READY_TAINT, "effect": "NoSchedule"}
ADMIN = {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}


def test_merged_taints_add_ours_and_keep_everyone_elses() -> None:
    assert merged_taints([NOT_READY, ADMIN], True) == [NOT_READY, ADMIN, provider_taint()]


def test_merged_taints_unchanged_when_ours_is_there() -> None:
    current = [NOT_READY, provider_taint()]
    assert merged_taints(current, True) is current


def test_merged_taints_fix_a_modified_provider_taint() -> None:
    wrong = {**provider_taint(), "effect": "PreferNoSchedule"}
    assert merged_taints([wrong, ADMIN], True) == [ADMIN, provider_taint()]


def test_disabled_taint_removes_only_ours() -> None:
    assert merged_taints([provider_taint(), ADMIN], False) == [ADMIN]


def test_condition_transition_time_moves_only_on_flip() -> None:
    first = conditions(True, "KubeletReady", "ok", [])
    same = conditions(True, "KubeletReady", "ok", [{**first[0], "lastTransitionTime": "2020-01-01T00:00:00Z"}])
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    flipped = conditions(False, "LowerClusterUnreachable", "down", same)
    assert flipped[0]["status"] == "False" and flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_the_node_publishes_only_addresses_the_apiserver_can_dial() -> None:
    from tensile.controllers.node import node_addresses

    assert node_addresses("10.0.0.5") == [{"type": "InternalIP", "address": "10.0.0.5"}]
    assert node_addresses("fd00::5") == [{"type": "InternalIP", "address": "fd00::5"}]
    assert node_addresses("vk.example.net") == [{"type": "Hostname", "address": "vk.example.net"}]
    assert node_addresses("") == []
