"""Before anything starts: both kubeconfigs load and both servers answer as Kubernetes API servers.

A kubeconfig that is not YAML, lacks a context or is a directory, and a server that is not a
Kubernetes apiserver (a web server, a port that closes the connection, a TLS mismatch) are
configuration mistakes: running on would only fail later, deeper and less clearly. Each is said
in one line, and the process exits 2 without starting anything. A server that does not answer at
all (nothing listens yet, a timeout) may be a passing outage: one line too, exit 1, and whatever
restarts the process tries again.
"""

from __future__ import annotations

import aiohttp

from tensile.kube.client import Kube
from tensile.kube.errors import ApiError

#: Exit code of a configuration that cannot work (as argparse's usage errors).
CONFIG_ERROR = 2
#: Exit code of a start-up that may work later.
UNAVAILABLE = 1
PROBE_TIMEOUT = 10.0


class StartupError(Exception):
    """Why the process does not start, in one line, and the exit code that says whether to retry."""

    def __init__(self, message: str, code: int = CONFIG_ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: YAML and loader errors span several."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kubernetes_status(body: dict[str, object]) -> bool:
    """An error body an apiserver wrote: a ``Status`` object."""
    return body.get("kind") == "Status" and body.get("apiVersion") == "v1"


def _connection_failure(side: str, host: str, cause: BaseException | None, message: str) -> StartupError:
    if isinstance(cause, TimeoutError):
        return StartupError(f"cannot reach the {side} cluster at {host}: no answer within {PROBE_TIMEOUT:.0f}s",
                            UNAVAILABLE)
    if isinstance(cause, aiohttp.ClientSSLError):
        return StartupError(f"cannot talk TLS with the {side} cluster at {host}: {one_line(cause)}")
    if isinstance(cause, aiohttp.ClientConnectorError):
        if isinstance(cause.os_error, ConnectionResetError):
            return StartupError(f"{host} (the {side} cluster's server) is not a Kubernetes API server: it closed the "
                                "connection during the TLS handshake")
        return StartupError(f"cannot reach the {side} cluster at {host}: {one_line(cause)}", UNAVAILABLE)
    if isinstance(cause, aiohttp.ClientError):
        return StartupError(f"{host} (the {side} cluster's server) is not a Kubernetes API server: it closed the "
                            f"connection without an HTTP answer ({one_line(cause)})")
    if isinstance(cause, OSError):  # ssl.SSLError too: the kubeconfig's certificate files, read on first use
        return StartupError(f"cannot use the certificates of the {side} kubeconfig: {one_line(cause)}")
    return StartupError(f"cannot reach the {side} cluster at {host}: {one_line(cause) if cause else message}",
                        UNAVAILABLE)


def probe_failure(side: str, host: str, exc: ApiError) -> StartupError | None:
    """What a failed ``GET /version`` means; None: a Kubernetes apiserver answered, start anyway.

    The original error of a connection failure is the ``ApiError``'s cause.
    """
    not_kubernetes = f"{host} (the {side} cluster's server) is not a Kubernetes API server"
    if exc.status == 0:
        return _connection_failure(side, host, exc.__cause__, exc.message)
    if exc.status == 502 and exc.reason == "InvalidResponse":
        return StartupError(f"{not_kubernetes}: GET /version answered something that is not JSON")
    if not _kubernetes_status(exc.body):
        return StartupError(f"{not_kubernetes}: GET /version answered HTTP {exc.status}")
    if exc.status == 401:
        return StartupError(f"the {side} cluster at {host} refused the {side} kubeconfig's credentials")
    if exc.status == 429 or exc.status >= 500:
        return StartupError(f"the {side} cluster at {host} is not serving: {one_line(exc)}", UNAVAILABLE)
    return None  # 403 and the like: an apiserver that keeps /version private; the start-up says more


def version_problem(side: str, host: str, version: dict[str, object]) -> StartupError | None:
    if isinstance(version.get("gitVersion"), str):
        return None
    return StartupError(f"{host} (the {side} cluster's server) is not a Kubernetes API server: GET /version "
                        "answered JSON without a gitVersion")


async def connect(side: str, kubeconfig: str | None, qps: float, burst: int) -> Kube:
    """A client for ``side`` whose server answered as a Kubernetes apiserver; else :class:`StartupError`."""
    source = f"the {side} kubeconfig {kubeconfig}" if kubeconfig else f"the {side} cluster's credentials"
    try:
        kube = await Kube.from_kubeconfig(kubeconfig, qps, burst, name=side)
    except Exception as exc:  # the loader raises many kinds (YAML, missing keys, wrong types, I/O): each means this
        raise StartupError(f"cannot load {source}: {one_line(exc)}") from exc
    try:
        version = await kube.get("/version", timeout=PROBE_TIMEOUT)
        problem = version_problem(side, kube.host, version)
    except ApiError as exc:
        problem = probe_failure(side, kube.host, exc)
    if problem is not None:
        await kube.close()
        raise problem
    return kube
