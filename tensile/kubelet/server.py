"""The virtual node's kubelet API: what the upper apiserver and metrics-server call.

Served over HTTPS on ``--kubelet-port`` at the address the Node publishes:

- ``/containerLogs/NS/POD/CONTAINER``: the lower copy's ``pods/log``, streamed;
- ``/exec``, ``/attach``, ``/portForward``: upgraded and spliced to the lower ``pods/exec``,
  ``pods/attach``, ``pods/portforward`` (see :mod:`tensile.kubelet.relay`);
- ``/stats/summary``, ``/metrics/resource``: from the lower cluster's PodMetrics;
- ``/pods``, ``/runningpods/``, ``/healthz``.

Every request is authenticated and authorized first (:mod:`tensile.kubelet.auth`). The
server knows the lower cluster only through :class:`NodePods` and the lower client, as
virtual-kubelet's routes know only their provider. Bad input is answered with a 4xx and
a message, never with a 500: the paths, queries and headers come from whoever can reach
the port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from tensile import timestamps
from tensile.kube.client import JSON, Kube, path
from tensile.kube.errors import ApiError
from tensile.kubelet import paths, relay, stats
from tensile.kubelet.auth import WEBHOOK, Authenticator, Authorizer, AuthUnavailable
from tensile.kubelet.metrics import KubeletMetrics, route_label

log = logging.getLogger("tensile.kubelet")

POD_METRICS = "/apis/metrics.k8s.io/v1beta1/pods"
#: PodMetrics are fetched at most this often; every scraper in between gets the same answer.
METRICS_CACHE_SECONDS = 5.0
HANDSHAKE_TIMEOUT = 30.0


class NodePods(Protocol):
    """What the kubelet API knows of this node's pods."""

    node_name: str
    #: A label selector matching this node's lower copies.
    copy_selector: str

    def pod(self, namespace: str, name: str) -> JSON | None:
        """The upper pod bound to this node, or None."""

    def pods(self) -> list[JSON]:
        """Every upper pod bound to this node."""

    def copy_of(self, upper: JSON) -> JSON | None:
        """The upper pod's lower copy, or None while it has none."""

    def upper_of(self, lower_namespace: str, name: str) -> JSON | None:
        """The upper pod on this node whose copy is lower ``lower_namespace/name``, or None."""


@dataclasses.dataclass
class ServingOptions:
    address: str = "0.0.0.0"
    port: int = 10250
    cert_file: str = ""
    key_file: str = ""
    #: Client certificates signed by this CA authenticate (CN user, O groups).
    client_ca_file: str = ""
    anonymous: bool = False
    token_webhook: bool = True
    authorization_mode: str = WEBHOOK
    #: Ask the upper cluster for a ``kubernetes.io/kubelet-serving`` certificate (and renew it).
    rotate_certificates: bool = False


class ServingError(RuntimeError):
    """The kubelet API cannot start: its port is taken, its certificate does not load."""


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message.rstrip("\n") + "\n")


def ssl_context(options: ServingOptions) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(options.cert_file, options.key_file)
    if options.client_ca_file:
        ctx.load_verify_locations(cafile=options.client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a certificate is verified when given; tokens need none
    return ctx


class KubeletServer:
    def __init__(self, options: ServingOptions, pods: NodePods, upper: Kube, lower: Kube,
                 registry: CollectorRegistry | None = None) -> None:
        self.options = options
        self.pods = pods
        self.lower = lower
        self.metrics = KubeletMetrics(registry if registry is not None else CollectorRegistry())
        self.authn = Authenticator(upper, token_webhook=options.token_webhook, anonymous=options.anonymous)
        self.authz = Authorizer(upper, pods.node_name, options.authorization_mode)
        self.authn.on_review = self.authz.on_review = self._count_review
        self.started = timestamps.utc_now()
        self.cpu = stats.CpuTime()
        self._pod_metrics: tuple[float, list[JSON]] | None = None
        self._metrics_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._cert_stamp: tuple[tuple[int, int], ...] = ()
        self.certificates_checked = time.monotonic()
        #: Streams being relayed now (their handler tasks), for shutdown and leak checks.
        self.streams: set[asyncio.Task[Any]] = set()
        self.port = 0

    def _count_review(self, kind: str) -> None:
        self.metrics.reviews.labels(kind).inc()

    # --- lifecycle ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self) -> None:
        try:
            self._ssl = ssl_context(self.options)
            self._cert_stamp = self._stamp()
        except (OSError, ssl.SSLError) as exc:
            raise ServingError(f"kubelet API: the serving certificate {self.options.cert_file} or the client CA "
                               f"{self.options.client_ca_file or '(none)'} does not load: {exc}") from exc
        # handler_cancellation: a log follow ends when its caller goes away.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True,
                                     shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.address, self.options.port, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ServingError(f"kubelet API: cannot listen on {self.options.address}:{self.options.port} "
                               f"(--kubelet-address, --kubelet-port): {exc}") from exc
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.options.port
        log.info("kubelet API serving on https://%s:%d", self.options.address, self.port,
                 extra={"node": self.pods.node_name})

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for f in (self.options.cert_file, self.options.key_file):
            st = os.stat(f)
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload_certificates(self) -> bool:
        """New connections get the serving certificate now on disk, if it changed; True when reloaded.

        A pair that does not load (a renewal caught half-written) keeps the old one serving.
        """
        if self._ssl is None:
            return False
        try:
            stamp = self._stamp()
            if stamp == self._cert_stamp:
                return False
            self._ssl.load_cert_chain(self.options.cert_file, self.options.key_file)
        except (OSError, ssl.SSLError) as exc:
            log.warning("kubelet serving certificate not reloaded, the old one keeps serving: %s", exc,
                        extra={"node": self.pods.node_name})
            return False
        self._cert_stamp = stamp
        log.info("kubelet serving certificate reloaded", extra={"node": self.pods.node_name})
        return True

    async def watch_certificates(self, interval: float = 30.0) -> None:
        """Reload a rotated serving certificate (cert-manager, a renewal job) without a restart."""
        while True:
            await asyncio.sleep(interval)
            self.reload_certificates()
            self.certificates_checked = time.monotonic()

    async def stop(self) -> None:
        for task in list(self.streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- request pipeline -----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.monotonic()
        target = paths.parse(request.path)
        route = route_label(target.route if target is not None else request.path.strip("/").split("/")[0])
        code = 500
        try:
            response = await self._guarded(request, handler)
            code = response.status
            return response
        except asyncio.CancelledError:
            code = 499  # the caller went away
            raise
        finally:
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.duration.labels(route).observe(time.monotonic() - started)

    async def _guarded(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            peercert = request.transport.get_extra_info("peercert") if request.transport else None
            user = await self.authn.authenticate(peercert, request.headers.get("Authorization"))
            if user is None:
                return _text(401, "Unauthorized")
            subresources = paths.subresources(request.path)
            decision = await self.authz.authorize(user, paths.verb(request.method), subresources)
            if not decision.allowed:
                log.info("refused %s %s for %s: %s", request.method, request.path, user.name, decision.reason,
                         extra={"node": self.pods.node_name})
                return _text(403, f"Forbidden ({decision.reason})")
            return await handler(request)
        except AuthUnavailable as exc:
            log.warning("cannot authenticate or authorize: %s", exc, extra={"node": self.pods.node_name})
            return _text(503, f"cannot check the caller's rights with the upper cluster: {exc}")
        except web.HTTPException as exc:
            return _text(exc.status, exc.text or exc.reason)
        except ApiError as exc:
            return self._api_error(exc)
        except (ConnectionError, relay.BadResponse) as exc:
            return _text(502, f"lower cluster: {exc}")

    def _api_error(self, exc: ApiError) -> web.Response:
        status = exc.status if 400 <= exc.status < 600 else 502
        return _text(status, str(exc))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        target = paths.parse(request.path)
        if target is not None:
            if target.route == paths.LOGS:
                return await self._logs(request, target)
            return await self._stream(request, target)
        clean = "/" + "/".join(p for p in request.path.split("/") if p)
        simple: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/healthz": self._healthz, "/pods": self._pods, "/runningpods": self._running_pods,
            "/stats/summary": self._summary, "/stats": self._summary, "/metrics/resource": self._resource_metrics,
        }
        handler = simple.get(clean)
        if handler is None:
            return _text(404, f"{request.path}: not a kubelet API path this virtual node serves")
        if request.method not in ("GET", "HEAD"):
            return _text(405, f"{request.method} {clean}: only GET")
        return await handler(request)

    # --- pods -------------------------------------------------------------------------------

    def _resolve(self, target: paths.Target) -> tuple[JSON, str]:
        """The upper pod and its lower copy's URL path, or an HTTP error saying why not."""
        upper = self.pods.pod(target.namespace, target.pod)
        if upper is None:
            raise web.HTTPNotFound(text=f'pod "{target.pod}" in namespace "{target.namespace}" is not on node '
                                        f'"{self.pods.node_name}"\n')
        uid = str((upper.get("metadata") or {}).get("uid", ""))
        if target.uid and target.uid != uid:
            raise web.HTTPNotFound(text=f"pod {target.namespace}/{target.pod} has UID {uid}, not {target.uid}\n")
        copy = self.pods.copy_of(upper)
        if copy is None:
            raise web.HTTPNotFound(text=f"pod {target.namespace}/{target.pod} has no copy in the lower cluster "
                                        "(not created yet, or a pod this node does not copy)\n")
        meta = copy.get("metadata") or {}
        lower = path("pods", str(meta.get("namespace", "")), str(meta.get("name", "")),
                     paths.SUBRESOURCE[target.route])
        return upper, lower

    async def _logs(self, request: web.Request, target: paths.Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "containerLogs: only GET")
        _, lower_path = self._resolve(target)
        query = paths.lower_query(target, list(request.query.items()))
        follow = any(k == "follow" and v.lower() in ("1", "true") for k, v in query)
        self.metrics.streams.labels(paths.LOGS).inc()
        try:
            async with self.lower.stream(lower_path, query, read_timeout=None if follow else 60.0) as lower:
                response = web.StreamResponse(status=200, headers={
                    "Content-Type": lower.headers.get("Content-Type", "text/plain")})
                await response.prepare(request)
                async for chunk in lower.content.iter_any():
                    self.metrics.bytes.labels(paths.LOGS, "up").inc(len(chunk))
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            self.metrics.streams.labels(paths.LOGS).dec()

    async def _stream(self, request: web.Request, target: paths.Target) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return _text(405, f"{target.route}: only GET and POST")
        _, lower_path = self._resolve(target)
        if "upgrade" not in request.headers.get("Connection", "").lower() or not request.headers.get("Upgrade"):
            return _text(400, "Upgrade request required")
        query = urlencode(paths.lower_query(target, list(request.query.items())))
        reader, writer, host = await self.lower.dial()
        try:
            headers = [*relay.forwarded(request.headers.items(), relay.FORWARDED_REQUEST_HEADERS),
                       *(await self.lower.auth_headers()).items(),
                       ("User-Agent", self.lower.user_agent), ("Content-Length", "0")]
            writer.write(relay.request_head(request.method, f"{lower_path}?{query}", host, headers))
            await writer.drain()
            status, reason, answer = await relay.read_response(reader, HANDSHAKE_TIMEOUT)
            if status != 101:
                body = await relay.read_body(reader, answer, HANDSHAKE_TIMEOUT)
                await relay.close(writer)
                return web.Response(status=status, body=body, headers={
                    "Content-Type": relay.header(answer, "content-type") or "text/plain"})
            response = web.StreamResponse(status=101, reason=reason or "Switching Protocols",
                                          headers=relay.forwarded(answer, relay.FORWARDED_RESPONSE_HEADERS))
            response.force_close()
            await response.prepare(request)
            upstream = relay.take_over(request)
        except BaseException:
            await relay.close(writer)
            raise
        task = asyncio.current_task()
        assert task is not None
        self.streams.add(task)
        self.metrics.streams.labels(target.route).inc()
        try:
            up, down = await relay.splice(upstream, (reader, writer))
            self.metrics.bytes.labels(target.route, "down").inc(up)
            self.metrics.bytes.labels(target.route, "up").inc(down)
            log.debug("%s %s/%s: %d bytes down, %d up", target.route, target.namespace, target.pod, up, down,
                      extra={"node": self.pods.node_name})
        finally:
            self.metrics.streams.labels(target.route).dec()
            self.streams.discard(task)
            relay.hand_back(request)
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _pod_list(self, items: list[JSON]) -> web.Response:
        return web.Response(body=orjson.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
                            content_type="application/json")

    async def _pods(self, _: web.Request) -> web.Response:
        return self._pod_list(self.pods.pods())

    async def _running_pods(self, _: web.Request) -> web.Response:
        running = []
        for pod in self.pods.pods():
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            meta = pod.get("metadata") or {}
            running.append({
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
                "spec": {"containers": [{"name": ctr.get("name"), "image": ctr.get("image")}
                                        for ctr in (pod.get("spec") or {}).get("containers") or []]},
                "status": {},
            })
        return self._pod_list(running)

    # --- stats ------------------------------------------------------------------------------

    async def _lower_pod_metrics(self) -> list[JSON]:
        async with self._metrics_lock:
            now = time.monotonic()
            if self._pod_metrics is not None and now - self._pod_metrics[0] < METRICS_CACHE_SECONDS:
                return self._pod_metrics[1]
            try:
                listed = await self.lower.get(POD_METRICS, params={"labelSelector": self.pods.copy_selector})
            except ApiError as exc:
                if exc.status in (404, 503) or exc.status == 0:
                    raise web.HTTPServiceUnavailable(text=(
                        "the lower cluster serves no metrics.k8s.io API (install metrics-server there): "
                        f"{exc}\n")) from exc
                raise
            items = [item for item in listed.get("items") or [] if isinstance(item, dict)]
            self._pod_metrics = (now, items)
            return items

    async def _usage(self) -> tuple[list[stats.PodUsage], dict[stats.Key, float], datetime.datetime]:
        usages: list[stats.PodUsage] = []
        for item in await self._lower_pod_metrics():
            meta = item.get("metadata") or {}
            upper = self.pods.upper_of(str(meta.get("namespace", "")), str(meta.get("name", "")))
            usage = stats.pod_usage(item, upper) if upper is not None else None
            if usage is not None:
                usages.append(usage)
        return usages, self.cpu.advance(usages, time.monotonic()), timestamps.utc_now()

    async def _summary(self, _: web.Request) -> web.Response:
        usages, counters, now = await self._usage()
        body = stats.summary(self.pods.node_name, self.started, usages, counters, now)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _resource_metrics(self, _: web.Request) -> web.Response:
        usages, counters, now = await self._usage()
        return web.Response(text=stats.resource_metrics(usages, counters, now),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})
