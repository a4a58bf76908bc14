"""The kubelet API's routes, query translation and authorization attributes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tensile.kubelet import paths
from tensile.kubelet.paths import Target


def test_pod_routes_are_parsed_with_and_without_a_uid() -> None:
    assert paths.parse("/containerLogs/ns/web/app") == Target("containerLogs", "ns", "web", "app")
    assert paths.parse("/exec/ns/web/app") == Target("exec", "ns", "web", "app")
    assert paths.parse("/exec/ns/web/uid-1/app") == Target("exec", "ns", "web", "app", "uid-1")
    assert paths.parse("/attach/ns/web/app") == Target("attach", "ns", "web", "app")
    assert paths.parse("/portForward/ns/web") == Target("portForward", "ns", "web")
    assert paths.parse("/portForward/ns/web/uid-1") == Target("portForward", "ns", "web", uid="uid-1")


def test_other_paths_are_not_pod_routes() -> None:
    for path in ("/", "/pods", "/stats/summary", "/exec/ns", "/exec/ns/web", "/containerLogs/ns/web",
                 "/containerLogs/ns/web/app/extra", "/portForward/ns", "/exec/../web/app", "/exec/a/b/c/d/e"):
        assert paths.parse(path) is None, path


def test_exec_flags_become_the_apiservers_names() -> None:
    target = Target("exec", "ns", "web", "app")
    query = [("command", "sh"), ("command", "-c"), ("command", "echo hi"), ("input", "1"), ("output", "1"),
             ("error", "1"), ("tty", "0"), ("ignored", "x")]
    assert paths.lower_query(target, query) == [
        ("container", "app"), ("command", "sh"), ("command", "-c"), ("command", "echo hi"),
        ("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]


def test_attach_takes_no_command_and_port_forward_takes_ports() -> None:
    attach = paths.lower_query(Target("attach", "ns", "web", "app"), [("command", "x"), ("output", "1")])
    assert attach == [("container", "app"), ("stdout", "true")]
    forward = paths.lower_query(Target("portForward", "ns", "web"), [("port", "8080"), ("port", "9090")])
    assert forward == [("ports", "8080"), ("ports", "9090")]


def test_log_options_pass_through_and_nothing_else() -> None:
    query = [("follow", "true"), ("tailLines", "3"), ("sinceSeconds", "60"), ("sinceTime", "2026-01-01T00:00:00Z"),
             ("timestamps", "true"), ("previous", "true"), ("limitBytes", "10"), ("container", "other"),
             ("insecureSkipTLSVerifyBackend", "true")]
    out = paths.lower_query(Target("containerLogs", "ns", "web", "app"), query)
    assert out[0] == ("container", "app")
    assert dict(out[1:]) == {"follow": "true", "tailLines": "3", "sinceSeconds": "60",
                             "sinceTime": "2026-01-01T00:00:00Z", "timestamps": "true", "previous": "true",
                             "limitBytes": "10"}


def test_subresources_follow_the_kubelets_authorizer() -> None:
    assert paths.subresources("/stats/summary") == ("stats",)
    assert paths.subresources("/metrics/resource") == ("metrics",)
    assert paths.subresources("/metrics") == ("metrics",)
    assert paths.subresources("/logs/syslog") == ("log",)
    assert paths.subresources("/pods") == ("pods", "proxy")
    assert paths.subresources("/healthz") == ("healthz", "proxy")
    assert paths.subresources("/containerLogs/ns/web/app") == ("proxy",)
    assert paths.subresources("/exec/ns/web/app") == ("proxy",)
    assert paths.subresources("/statsfoo") == ("proxy",)
    assert paths.subresources("//stats//summary") == ("stats",)


def test_verbs_follow_the_http_method() -> None:
    assert [paths.verb(m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "BREW")] == [
        "get", "get", "create", "update", "patch", "delete", "get", "unknown"]


@given(st.text(max_size=200), st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=10))
def test_no_path_or_query_makes_the_translation_fail(path: str, query: list[tuple[str, str]]) -> None:
    target = paths.parse(path)
    paths.subresources(path)
    if target is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in paths.lower_query(target, query))
