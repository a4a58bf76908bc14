"""The extender wire format, against bodies shaped like the real kube-scheduler's."""

from __future__ import annotations

import json

import orjson
import pytest

from scheduler import wire
from scheduler.config import scheduler_config

# As kube-scheduler v1.34 sends them (extenderv1.ExtenderArgs marshalled by encoding/json).
NAMES_ARGS = {"Pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                      "spec": {"containers": [{"name": "c", "image": "nginx"}], "schedulerName": "default-scheduler"},
                      "status": {"phase": "Pending"}},
              "Nodes": None, "NodeNames": ["vk-a", "vk-b", "upper-0"]}
NODES_ARGS = {"Pod": NAMES_ARGS["Pod"], "NodeNames": None,
              "Nodes": {"metadata": {}, "items": [{"metadata": {"name": "vk-a", "labels": {"type": "virtual-kubelet"}}},
                                                  {"metadata": {"name": "upper-0"}}]}}


def test_names_in_names_out() -> None:
    args = wire.parse_args(json.dumps(NAMES_ARGS).encode())
    assert args.by_name and args.names == ["vk-a", "vk-b", "upper-0"]
    out = orjson.loads(wire.filter_result(args, ["upper-0"], {"vk-a": "full"}, {"vk-b": "never"}))
    assert out == {"NodeNames": ["upper-0"], "Nodes": None, "FailedNodes": {"vk-a": "full"},
                   "FailedAndUnresolvableNodes": {"vk-b": "never"}, "Error": ""}


def test_nodes_in_nodes_out() -> None:
    args = wire.parse_args(json.dumps(NODES_ARGS).encode())
    assert not args.by_name and args.names == ["vk-a", "upper-0"]
    out = orjson.loads(wire.filter_result(args, ["upper-0"], {}, {}))
    assert out["Nodes"] == {"items": [{"metadata": {"name": "upper-0"}}]} and out["NodeNames"] is None


def test_host_priority_list_uses_go_field_names() -> None:
    assert orjson.loads(wire.priority_list({"vk-a": 7, "upper-0": 10})) == [
        {"Host": "vk-a", "Score": 7}, {"Host": "upper-0", "Score": 10}]


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not JSON"), (b"{", "not JSON"), (b"[]", "must be a JSON object"), (b'{"Pod": 1}', "Pod must be"),
    (b'{"Pod": {}}', "neither NodeNames nor Nodes"), (b'{"Pod": {}, "NodeNames": [1]}', "array of strings"),
    (b'{"Pod": {}, "Nodes": {"items": [{}]}}', "no metadata.name"), (b'{"Pod": {"spec": []}, "NodeNames": []}',
                                                                      "Pod.spec must be"),
])
def test_malformed_bodies_are_bad_requests_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(wire.BadRequest, match=message):
        wire.parse_args(body)


def test_config_into_the_default_profile() -> None:
    config = scheduler_config("https://tensile-scheduler.tensile-system.svc:8888/", ca_file="/etc/ca.crt",
                              kubeconfig="/etc/kubernetes/scheduler.conf")
    (extender,) = config["extenders"]
    assert "profiles" not in config and config["clientConnection"] == {"kubeconfig": "/etc/kubernetes/scheduler.conf"}
    assert extender == {"urlPrefix": "https://tensile-scheduler.tensile-system.svc:8888", "filterVerb": "filter",
                        "prioritizeVerb": "prioritize", "weight": 1, "nodeCacheCapable": True, "enableHTTPS": True,
                        "httpTimeout": "5s", "ignorable": True, "tlsConfig": {"caFile": "/etc/ca.crt"}}


def test_config_as_a_second_profile_scopes_the_extender_url() -> None:
    config = scheduler_config("http://127.0.0.1:8888", as_profile="tensile", weight=5, ignorable=False)
    assert config["profiles"] == [{"schedulerName": "default-scheduler"}, {"schedulerName": "tensile"}]
    assert config["extenders"][0]["urlPrefix"] == "http://127.0.0.1:8888/profile/tensile"
    assert config["extenders"][0]["weight"] == 5 and not config["extenders"][0]["ignorable"]


@pytest.mark.parametrize("kwargs", [{"url": "ftp://x"}, {"url": "http://x", "weight": 0},
                                    {"url": "http://x", "as_profile": "default-scheduler"}])
def test_config_refuses_what_kube_scheduler_would(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        scheduler_config(**kwargs)  # type: ignore[arg-type]
