"""Start-up checks of ``tensile virtual-node``: a bad kubeconfig or a server that is not Kubernetes is
one line and exit code 2; a server that does not answer (yet) is one line and exit code 1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tensile import cli
from tensile.controllers import startup
from tensile.controllers.startup import CONFIG_ERROR, UNAVAILABLE, StartupError
from tensile.kube.errors import ApiError
from tests.fakes import http_server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def kubeconfig(path: Path, server: str) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


@contextlib.asynccontextmanager
async def serving(version: Handler) -> AsyncIterator[str]:
    """A server that answers ``GET /version`` with ``version``; yields its URL."""
    app = web.Application()
    app.router.add_get("/version", version)
    async with http_server(app) as url:
        yield url


async def failure(tmp_path: Path, version: Handler) -> StartupError:
    async with serving(version) as url:
        with pytest.raises(StartupError) as info:
            await startup.connect("lower", kubeconfig(tmp_path / "k", url), 10, 10)
    assert "\n" not in str(info.value)
    return info.value


async def html(_: web.Request) -> web.Response:
    return web.Response(text="<html><body>It works!</body></html>", content_type="text/html")


async def test_a_web_server_that_answers_html_is_not_a_kubernetes_api(tmp_path: Path) -> None:
    err = await failure(tmp_path, html)
    assert err.code == CONFIG_ERROR
    assert "(the lower cluster's server) is not a Kubernetes API server" in str(err) and "not JSON" in str(err)


async def test_json_without_a_git_version_is_not_a_kubernetes_api(tmp_path: Path) -> None:
    async def other(_: web.Request) -> web.Response:
        return web.json_response({"version": "2.4.1", "name": "some-other-api"})

    err = await failure(tmp_path, other)
    assert err.code == CONFIG_ERROR and "without a gitVersion" in str(err)


async def test_an_html_error_page_is_not_a_kubernetes_api(tmp_path: Path) -> None:
    async def missing(_: web.Request) -> web.Response:
        return web.Response(text="<html>404 Not Found</html>", status=404, content_type="text/html")

    err = await failure(tmp_path, missing)
    assert err.code == CONFIG_ERROR and "answered HTTP 404" in str(err)


async def test_refused_credentials_are_a_configuration_error(tmp_path: Path) -> None:
    async def unauthorized(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "Unauthorized", "code": 401}, status=401)

    err = await failure(tmp_path, unauthorized)
    assert err.code == CONFIG_ERROR and "refused the lower kubeconfig's credentials" in str(err)


async def test_an_apiserver_that_is_not_serving_yet_may_be_retried(tmp_path: Path) -> None:
    async def starting(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "InternalError", "code": 500}, status=500)

    err = await failure(tmp_path, starting)
    assert err.code == UNAVAILABLE and "is not serving" in str(err)


async def test_an_apiserver_that_keeps_its_version_private_is_accepted(tmp_path: Path) -> None:
    async def forbidden(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "Forbidden", "code": 403}, status=403)

    async with serving(forbidden) as url:
        kube = await startup.connect("upper", kubeconfig(tmp_path / "k", url), 10, 10)
        await kube.close()


async def test_a_kubernetes_api_is_accepted(tmp_path: Path) -> None:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.4"})

    async with serving(version) as url:
        kube = await startup.connect("upper", kubeconfig(tmp_path / "k", url), 10, 10)
        assert kube.host == url
        await kube.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nothing_listening_is_a_passing_outage(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as info:
        await startup.connect("lower", kubeconfig(tmp_path / "k", f"http://127.0.0.1:{closed_port()}"), 10, 10)
    assert info.value.code == UNAVAILABLE and str(info.value).startswith("cannot reach the lower cluster at http://")


@pytest.mark.parametrize("content, says", [
    ("this: is: not: yaml: [\n", "ScannerError: mapping values are not allowed here in"),
    ("{}\n", "Expected key current-context"),
    ("apiVersion: v1\nkind: Config\nclusters: 7\n", "TypeError"),
])
async def test_a_kubeconfig_that_does_not_load_is_one_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "broken"
    path.write_text(content)
    with pytest.raises(StartupError) as info:
        await startup.connect("upper", str(path), 10, 10)
    message = str(info.value)
    assert info.value.code == CONFIG_ERROR and "\n" not in message
    assert message.startswith(f"cannot load the upper kubeconfig {path}: ") and says in message


async def test_a_directory_in_place_of_a_kubeconfig_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as info:
        await startup.connect("lower", str(tmp_path), 10, 10)
    assert info.value.code == CONFIG_ERROR and "Is a directory" in str(info.value)


def connection_error(cause: BaseException) -> ApiError:
    try:
        raise ApiError.connection(cause, "GET", "/version") from cause
    except ApiError as exc:
        return exc


def test_connection_failures_tell_an_outage_from_a_server_that_is_not_kubernetes() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 443, True, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    reset = aiohttp.ClientConnectorError(key, ConnectionResetError())
    cases = {
        refused: (UNAVAILABLE, "cannot reach the lower cluster at https://h"),
        TimeoutError(): (UNAVAILABLE, "no answer within 10s"),
        reset: (CONFIG_ERROR, "closed the connection during the TLS handshake"),
        aiohttp.ServerDisconnectedError(): (CONFIG_ERROR, "closed the connection without an HTTP answer"),
        FileNotFoundError(2, "No such file or directory"): (CONFIG_ERROR, "cannot use the certificates"),
    }
    for cause, (code, says) in cases.items():
        err = startup.probe_failure("lower", "https://h", connection_error(cause))
        assert err is not None and err.code == code and says in str(err), (cause, err)


def test_the_command_says_a_broken_kubeconfig_in_one_line_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "upper"
    broken.write_text("this: is: not: yaml: [\n")
    code = cli.main(["virtual-node", "--nodename", "vk-a", "--kubeconfig", str(broken), "--client-kubeconfig",
                     str(broken), "--metrics-addr=", "--kubelet-port=0", "--log-format=json"])
    err = capsys.readouterr().err
    assert code == CONFIG_ERROR
    assert err.splitlines() == [f"tensile virtual-node: cannot load the upper kubeconfig {broken}: ScannerError: "
                                f'mapping values are not allowed here in "{broken}", line 1, column 9']
