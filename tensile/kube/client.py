"""A small async Kubernetes client that speaks plain dicts.

kubernetes-asyncio's generated models cost ~30x more than ``orjson.loads``
per pod (see ARCHITECTURE.md §6), and its watch helper reads lines with
aiohttp's ``readline``, which fails on objects larger than 128 KiB. So tensile
borrows only the credentials handling of kubernetes-asyncio (kubeconfig,
exec plugins, in-cluster tokens) and does its own requests with aiohttp:
JSON in, dicts out, a client-side QPS/burst limiter like client-go's, and a
watch stream that splits on newlines itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.incluster_config import load_incluster_config

from tensile.kube.errors import NOT_LEADER, ApiError
from tensile.kube.metrics import ApiMetrics
from tensile.kube.reachability import Reachability
from tensile.logs import V

log = logging.getLogger("tensile.kube")

JSON = dict[str, Any]
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class TokenBucket:
    """client-go's flowcontrol token bucket: ``qps`` per second, bursts of ``burst``."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.qps)
            self.updated = now
            if self.tokens < 1:
                wait = (1 - self.tokens) / self.qps
                await asyncio.sleep(wait)
                self.tokens = 1.0
                self.updated = time.monotonic()
            self.tokens -= 1


def path(
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
    group_version: str = "v1",
) -> str:
    """``/api/v1/namespaces/ns/pods/name/status`` and friends."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(resource)
    if name:
        parts.append(quote(name, safe=""))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _not_leader(method: str, url_path: str) -> ApiError:
    return ApiError(503, NOT_LEADER, f"{method} {url_path}: not sent: this replica does not hold the "
                                      "leader-election lease")


class _FencedBody(aiohttp.BytesPayload):
    """A request body that checks the leader-election fence at the moment it is written."""

    def __init__(self, data: bytes, content_type: str, fence: Callable[[], None]) -> None:
        super().__init__(data, content_type=content_type)
        self._fence = fence

    async def write(self, writer: Any) -> None:
        self._fence()
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        self._fence()
        await super().write_with_length(writer, content_length)


Reload = Callable[[], Awaitable[Configuration]]
#: Do not reload credentials more often than this, however many requests fail at once.
REAUTH_MIN_INTERVAL = 5.0
#: Verbs that only read: always allowed, leader or not.
READ_VERBS = frozenset({"GET", "HEAD", "WATCH"})
USER_AGENT = "tensile/0.1.0"
#: client-go's default: a request the server asked to repeat (``ApiError.retryable``) is sent again at
#: most this many times, then its error is raised.
MAX_RETRIES = 10
#: A ``Retry-After`` longer than this is waited for this long only (a proxy asking for an hour).
RETRY_AFTER_CAP = 10.0
#: Without a ``Retry-After`` (or with 0: a 429 from a proxy), retry n waits ``RETRY_BASE * 2**(n-1)``
#: (capped): not a tight loop.
RETRY_BASE = 0.1
#: Each wait is stretched by up to this fraction at random (client-go's JitterFactor, as the
#: leader election's waits): workers refused together do not all come back in the same instant.
RETRY_JITTER = 0.2


def retry_delay(retry_after: float | None, attempt: int, jitter: float) -> float:
    """How long to wait before retry ``attempt`` (1-based); ``jitter`` in [0, 1).

    The server's ``Retry-After`` is honoured as it is (client-go waits exactly that), never less.
    """
    base = retry_after if retry_after else RETRY_BASE * 2 ** (attempt - 1)
    return min(RETRY_AFTER_CAP, base) * (1 + RETRY_JITTER * jitter)


class Kube:
    """One cluster's API: requests and watches on plain dicts.

    On 401 Unauthorized the credentials are loaded again (a kubeconfig whose
    token was rotated, or whose exec plugin hands out short-lived tokens) and
    the request is tried once more.

    On 429 Too Many Requests (or a 5xx with ``Retry-After``) the request is sent
    again after the server's ``Retry-After``, as client-go does: at most
    ``MAX_RETRIES`` times, and never starting later than the call's
    ``timeout`` after it began; then the error is raised. A 429 was refused
    before any work, so even a POST is safe to repeat; a write repeated after
    a 5xx meets the optimistic concurrency every caller handles (409).
    Watches and streams are not retried here: their callers reconnect.
    """

    def __init__(
        self, config: Configuration, qps: float = 100.0, burst: int = 200, name: str = "", reload: Reload | None = None
    ) -> None:
        self.config = config
        self.name = name
        self.host = (config.host or "").rstrip("/")
        self.limiter = TokenBucket(qps, burst)
        self._session: aiohttp.ClientSession | None = None
        self._reload = reload
        self._reauth_lock = asyncio.Lock()
        self._last_reauth = 0.0
        self.requests = 0
        self.reauths = 0
        #: Requests sent again because the server asked (429, 5xx with Retry-After).
        self.retries = 0
        #: How retries wait, and the jitter they wait with (replaced in unit tests).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.jitter: Callable[[], float] = random.random
        #: Where requests are counted and timed (set by the component that owns the registry).
        self.metrics: ApiMetrics | None = None
        #: The leader-election fence: a write is sent only while this says yes (see ``tensile.kube.leader``).
        self.may_write: Callable[[], bool] | None = None
        self.user_agent = USER_AGENT
        #: Whether the apiserver answers; forks share it (the same apiserver).
        self.reachability = Reachability(name)

    def _inherit(self, other: Kube) -> Kube:
        other.metrics, other.may_write, other.user_agent = self.metrics, self.may_write, self.user_agent
        other.reachability = self.reachability
        return other

    def fork(self, name: str, qps: float, burst: int) -> Kube:
        """The same cluster and credentials with a rate limiter and connections of its own.

        The kubelet's heartbeat (Lease, node status) must never wait behind pod traffic: with one
        shared limiter, a burst of pod writes delays the Lease past its duration and the
        node-lifecycle controller taints the node and evicts its pods.
        """
        return self._inherit(Kube(self.config, qps, burst, name=name, reload=self._reload))

    @classmethod
    async def from_kubeconfig(
        cls, kubeconfig: str | None, qps: float = 100.0, burst: int = 200, name: str = ""
    ) -> Kube:
        async def load_file() -> Configuration:
            fresh = Configuration()
            await kube_config.load_kube_config(config_file=kubeconfig, client_configuration=fresh, persist_config=False)
            return fresh

        cfg = Configuration()
        if kubeconfig:
            return cls(await load_file(), qps, burst, name, reload=load_file)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            # In a pod: the service-account token and CA (another directory for
            # tokens projected elsewhere, via TENSILE_SERVICEACCOUNT_DIR).
            sa_dir = os.environ.get("TENSILE_SERVICEACCOUNT_DIR", SERVICEACCOUNT_DIR)
            load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg,
                token_filename=os.path.join(sa_dir, "token"),
                cert_filename=os.path.join(sa_dir, "ca.crt"),
            )
        else:
            await kube_config.load_kube_config(client_configuration=cfg, persist_config=False)
        return cls(cfg, qps, burst, name)

    async def reauthenticate(self) -> bool:
        """Load the credentials again; False when there is nothing to reload."""
        if self._reload is None:
            return False
        async with self._reauth_lock:
            if time.monotonic() - self._last_reauth < REAUTH_MIN_INTERVAL:
                return True  # another request just did it
            self.config = await self._reload()
            self.host = (self.config.host or "").rstrip("/")
            old, self._session = self._session, None
            if old is not None:
                # Requests still in flight on the old session finish or fail on their own.
                asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(old.close()))
            self._last_reauth = time.monotonic()
            self.reauths += 1
            if self.metrics is not None:
                self.metrics.reauths.labels(self.name).inc()
            log.warning("credentials reloaded after 401 Unauthorized", extra={"cluster": self.name})
            return True

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.host.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.config.ssl_ca_cert) if self.config.ssl_ca_cert else (
            ssl.create_default_context()
        )
        if not self.config.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.config.cert_file:
            ctx.load_cert_chain(self.config.cert_file, self.config.key_file)
        return ctx

    def _route(self) -> dict[str, Any]:
        """The kubeconfig's ``proxy-url`` and ``tls-server-name``, which kubectl honours too."""
        route: dict[str, Any] = {}
        if getattr(self.config, "proxy", None):
            route["proxy"] = self.config.proxy
        if getattr(self.config, "tls_server_name", None):
            route["server_hostname"] = self.config.tls_server_name
        return route

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=100)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.config.refresh_api_key_hook is not None:
            hook: Any = self.config.refresh_api_key_hook
            res = hook(self.config)
            if asyncio.iscoroutine(res):
                await res
        auth = self.config.api_key.get("authorization") or self.config.api_key.get("BearerToken")
        if auth:
            prefix = self.config.api_key_prefix.get("authorization", "")
            headers["Authorization"] = f"{prefix} {auth}".strip() if prefix else auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float = 30.0,
    ) -> JSON:
        """One API call. Returns the decoded body; raises :class:`ApiError` on failure."""
        started = time.monotonic()
        reauthenticated = False
        attempt = 0
        while True:
            try:
                return await self._request(method, url_path, params, body, content_type, timeout)
            except ApiError as exc:
                if exc.status == 401 and not reauthenticated and await self.reauthenticate():
                    reauthenticated = True
                    continue
                if not exc.retryable or attempt >= MAX_RETRIES:
                    raise
                delay = retry_delay(exc.retry_after, attempt + 1, self.jitter())
                if time.monotonic() - started + delay > timeout:
                    raise
                attempt += 1
                self._retrying(method, url_path, exc, attempt, delay)
                await self.sleep(delay)

    def _retrying(self, method: str, url_path: str, exc: ApiError, attempt: int, delay: float) -> None:
        self.retries += 1
        if self.metrics is not None:
            self.metrics.retries.labels(self.name, method, str(exc.status)).inc()
        log.log(V(4), "%s %s answered %s (Retry-After %s): retry %d in %.2fs", method, url_path, exc.status,
                "none" if exc.retry_after is None else f"{exc.retry_after:g}s", attempt, delay,
                extra={"cluster": self.name})

    async def _request(
        self,
        method: str,
        url_path: str,
        params: Mapping[str, str | int] | None,
        body: Any,
        content_type: str | None,
        timeout: float,
    ) -> JSON:
        await self.limiter.acquire()
        write = method not in READ_VERBS
        if body is None and method == "DELETE":
            body = {"kind": "DeleteOptions", "apiVersion": "v1"}  # every write carries a body: see below
        data: bytes | aiohttp.BytesPayload | None = None
        if body is not None:
            raw_body = body if isinstance(body, bytes) else orjson.dumps(body)
            content_type = content_type or "application/json"
            data = raw_body
            if write and self.may_write is not None:
                # The fence is checked where the bytes go out: aiohttp writes a body from a task of
                # its own, after connecting (a TLS handshake, a DNS lookup) and a loop iteration later.
                # A leader paused past its renew deadline (SIGSTOP, a VM pause) that wakes up with a
                # request in between sends nothing: its headers wait in a buffer for the body.
                data = _FencedBody(raw_body, content_type, lambda: self._check_fence(method, url_path))
        headers = await self._headers(content_type)
        self._check_fence(method, url_path)
        self.requests += 1
        started = time.monotonic()
        code = 0
        try:
            async with self.session.request(
                method, self.host + url_path, params=params, data=data,
                headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), **self._route(),
            ) as resp:
                code = resp.status
                raw = await resp.read()
                if resp.status >= 400:
                    raise ApiError.from_response(resp.status, raw, method, url_path, resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if write and self.may_write is not None and not self.may_write():
                raise _not_leader(method, url_path) from exc  # the fenced body refused to go out
            raise ApiError.connection(exc, method, url_path) from exc
        finally:
            self._observe(method, url_path, code, time.monotonic() - started)
        if not raw:
            return {}
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # A proxy's HTML error page with a 200, a truncated body: an API failure, not a crash.
            raise ApiError(502, "InvalidResponse", f"{method} {url_path}: the body is not JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise ApiError(502, "InvalidResponse", f"{method} {url_path}: the body is not a JSON object")
        return decoded

    def _check_fence(self, method: str, url_path: str) -> None:
        if method in READ_VERBS or self.may_write is None or self.may_write():
            return
        if self.metrics is not None:
            self.metrics.refused_writes.labels(self.name).inc()
        raise _not_leader(method, url_path)

    def _observe(self, verb: str, url_path: str, code: int, seconds: float) -> None:
        if code:
            self.reachability.answered()
        else:
            self.reachability.failed()
        if self.metrics is not None:
            self.metrics.observe(self.name, verb, code, seconds)
        log.log(V(6), "%s %s %s in %.3fs", verb, url_path, code or "no answer", seconds,
                extra={"cluster": self.name})

    async def get(self, url_path: str, **kw: Any) -> JSON:
        return await self.request("GET", url_path, **kw)

    async def create(self, url_path: str, body: JSON) -> JSON:
        return await self.request("POST", url_path, body=body)

    async def patch(self, url_path: str, body: Any, content_type: str = MERGE_PATCH) -> JSON:
        return await self.request("PATCH", url_path, body=body, content_type=content_type)

    async def replace(self, url_path: str, body: JSON) -> JSON:
        return await self.request("PUT", url_path, body=body)

    async def delete(self, url_path: str, body: JSON | None = None) -> JSON:
        return await self.request("DELETE", url_path, body=body)

    @contextlib.asynccontextmanager
    async def stream(
        self, url_path: str, params: list[tuple[str, str]] | Mapping[str, str], *, read_timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose body is read as it comes (a pod's log): the open response, status < 400.

        ``read_timeout``: how long the body may stay silent (None: forever, for ``follow``).
        Raises :class:`ApiError` with the server's own status and message otherwise.
        """
        await self.limiter.acquire()
        self.requests += 1
        headers = {**await self._headers(None), "Accept": "*/*"}
        started = time.monotonic()
        try:
            async with self.session.get(
                self.host + url_path, params=params, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout),
                **self._route(),
            ) as resp:
                self._observe("GET", url_path, resp.status, time.monotonic() - started)
                if resp.status >= 400:
                    raise ApiError.from_response(resp.status, await resp.content.read(64 * 1024), "GET", url_path,
                                                 resp.headers)
                yield resp
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError.connection(exc, "GET", url_path) from exc

    async def auth_headers(self) -> dict[str, str]:
        """The credentials' own headers (``Authorization`` for a token), for requests sent by hand."""
        headers = await self._headers(None)
        return {k: v for k, v in headers.items() if k == "Authorization"}

    async def dial(self, timeout: float = 30.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """A raw connection to the apiserver (TLS with these credentials), and its ``Host`` header value.

        For requests aiohttp cannot make: an upgrade to SPDY/3.1 whose bytes are then spliced.
        A kubeconfig ``proxy-url`` is not supported here; that is said, not ignored.
        """
        if getattr(self.config, "proxy", None):
            raise ApiError(501, "ProxyUnsupported", f"cluster {self.name}: streams (exec, attach, port-forward) "
                                                    "cannot go through the kubeconfig's proxy-url yet")
        url = urlsplit(self.host)
        tls = url.scheme == "https"
        host = url.hostname or "localhost"
        port = url.port or (443 if tls else 80)
        ctx = self._ssl_context()
        server_hostname = (getattr(self.config, "tls_server_name", None) or host) if tls else None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=ctx if tls and isinstance(ctx, ssl.SSLContext) else None,
                server_hostname=server_hostname, limit=2 ** 20), timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ApiError.connection(exc, "CONNECT", self.host) from exc
        return reader, writer, url.netloc

    async def watch(
        self, url_path: str, params: Mapping[str, str | int], timeout: float, silence: float | None = None
    ) -> AsyncIterator[JSON]:
        """Yield watch events as dicts; ends when the server closes the stream.

        ``silence``: how long the stream may stay without a byte before it counts as dead (a
        half-open connection after a network fault would otherwise hang until ``timeout``).
        """
        await self.limiter.acquire()
        self.requests += 1
        query = {**params, "watch": "1"}
        started = time.monotonic()
        try:
            async with self.session.get(
                self.host + url_path, params=query, headers=await self._headers(None),
                timeout=aiohttp.ClientTimeout(total=timeout + 30, sock_read=silence or timeout + 30),
                **self._route(),
            ) as resp:
                self._observe("WATCH", url_path, resp.status, time.monotonic() - started)
                if resp.status >= 400:
                    if resp.status == 401:
                        await self.reauthenticate()  # the informer's retry uses the new credentials
                    raise ApiError.from_response(resp.status, await resp.read(), "WATCH", url_path, resp.headers)
                # The start of an event not yet ended, in pieces: a 1 MiB object arrives in many chunks.
                parts: list[bytes] = []
                async for chunk in resp.content.iter_any():
                    parts.append(chunk)
                    if b"\n" not in chunk:
                        continue
                    # One split per chunk: cutting one line at a time off the front copied the rest of
                    # the buffer for every event (quadratic in a burst of small events).
                    lines = b"".join(parts).split(b"\n")
                    parts = [lines.pop()]
                    for line in lines:
                        if line.strip():
                            try:
                                event = orjson.loads(line)
                            except orjson.JSONDecodeError as exc:
                                raise ApiError(500, "InvalidWatchEvent", f"WATCH {url_path}: {exc}") from exc
                            yield event
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError.connection(exc, "WATCH", url_path) from exc
