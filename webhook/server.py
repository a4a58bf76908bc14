"""The HTTPS endpoint kube-apiserver calls for pod admission.

A thin aiohttp shell around :func:`webhook.review.handle_review`: TLS only (the apiserver never
calls a webhook over plain HTTP), a bounded request body, one structured log line per decision
(at ``-v 4``; requests answered with an error always), health/readiness probes, and a graceful stop
on SIGTERM/SIGINT so in-flight admissions finish during a rolling update instead of failing pod
creation.

Every ``/mutate`` request is counted and timed (:class:`webhook.metrics.WebhookMetrics`). With
``ServerOptions.metrics_addr``, :func:`serve` also runs the plain-HTTP ``/metrics``, ``/healthz``
and ``/readyz`` every tensile component has (``tensile.kube.serving.OpsServer``), reporting the
same health and readiness as the HTTPS probes: not ready from SIGTERM on, while draining.

The key that signs ``clusterSelector`` annotations (``webhook.signing``) is derived from the TLS
serving key file by default. Every replica mounts the same Secret, so they all agree, and a
re-invocation or a copied pod that lands on another replica still verifies, with nothing new to
configure or keep in sync. The server loads the serving key once at start, so the signing key is
derived once too; were the files ever reloaded, the key would have to be derived again.
``--signing-key-file`` names another shared file instead, for a key that outlives certificate
rotation: a rotated serving key (cert-manager's ``rotationPolicy: Always``) makes replicas
disagree until all of them restart, and signatures made before no longer verify.

Callers. The webhook answers anyone who can reach its port, and its answer is a signed
``clusterSelector`` for whatever pod the caller sent: a signing oracle. A pod author who can reach
the port could have constraints of their choosing signed and then create a pod carrying them, which
upper admission (that checks only the spec) would let through to the lower copy. With
``ServerOptions.client_ca_file`` (``--client-ca-file``), ``/mutate`` answers only callers with a
client certificate that CA signed (the apiserver presents one when its
``--admission-control-config-file`` names a kubeconfig for webhooks), others get 401; with
``client_allowed_names`` (``--client-allowed-names``) the certificate's common name must also be one
of them, else 403, as ``--requestheader-allowed-names`` does for the aggregation layer. The
probes stay open: kubelets probe without certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from tensile.kube.client import Kube
from tensile.kube.metrics import new_registry
from tensile.kube.serving import OpsServer, Readiness
from tensile.kube.supervisor import Supervisor
from tensile.kubelet.auth import user_from_certificate
from tensile.logs import V
from webhook.metrics import WebhookMetrics, result_label
from webhook.mutate import MutateOptions
from webhook.records import AvoidanceRecords
from webhook.review import Decision, handle_review
from webhook.signing import derive_key

__all__ = ["LOGGER_NAME", "CertReloader", "ServerOptions", "caller_refusal", "create_app", "metrics",
           "mutate_options", "ops_server", "reloader", "serve", "signing_key", "ssl_context", "start"]

LOGGER_NAME = "tensile.webhook"
log = logging.getLogger(LOGGER_NAME)


@dataclasses.dataclass
class _State:
    metrics: WebhookMetrics
    ready: bool = True
    #: Set by ``create_app``; replaced when a rotated serving key changes the signing key.
    mutate: MutateOptions = dataclasses.field(default_factory=MutateOptions)
    #: Callers of ``/mutate`` must present a client certificate (the TLS context verifies it).
    client_auth: bool = False
    #: When not empty, the certificate's common name must be one of these.
    allowed_names: frozenset[str] = frozenset()
    #: The background loops (certificate reloading): restarted when they fail, reported when wedged.
    supervisor: Supervisor = dataclasses.field(default_factory=lambda: Supervisor("webhook"))


_STATE = web.AppKey("state", _State)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Everything the webhook server needs; built by the CLI or by tests."""

    tls_cert_file: Path
    tls_key_file: Path
    port: int = 8443
    #: All interfaces by default: in a Pod the apiserver reaches the webhook through a Service.
    bind_address: str = "0.0.0.0"
    mutate: MutateOptions = dataclasses.field(default_factory=MutateOptions)
    #: Larger bodies get 413. The apiserver caps objects at ~3 MiB, so 4 MiB fits any real pod.
    max_body_bytes: int = 4 * 1024 * 1024
    #: How long a stop waits for in-flight requests.
    shutdown_timeout: float = 10.0
    #: After SIGTERM, keep serving this long with /readyz failing, so a Service drops us first.
    drain_seconds: float = 0.0
    #: The secret the clusterSelector signing key is derived from; ``None``: ``tls_key_file``.
    signing_key_file: Path | None = None
    #: Where :func:`serve` serves ``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP; ``None``: nowhere.
    metrics_addr: tuple[str, int] | None = None
    #: Read the descheduler's avoidance records (with this kubeconfig; ``None``: in-cluster credentials).
    avoidance_records: bool = False
    kubeconfig: Path | None = None
    #: Only callers with a client certificate this CA signed may call ``/mutate`` (others: 401).
    client_ca_file: Path | None = None
    #: ...and, when not empty, whose certificate's common name is one of these (others: 403).
    client_allowed_names: frozenset[str] = frozenset()


def signing_key(options: ServerOptions) -> bytes:
    """The clusterSelector signing key: derived from ``signing_key_file``, else the serving key file.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it is too short.
    """
    return derive_key((options.signing_key_file or options.tls_key_file).read_bytes())


def ssl_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) with the serving certificate and key loaded.

    With ``client_ca_file``, a client certificate is asked for and verified against it when given
    (optional at the TLS level, so the probes work without one; ``/mutate`` requires it).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    if client_ca_file is not None:
        context.load_verify_locations(cafile=str(client_ca_file))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def caller_refusal(peercert: Any, required: bool, allowed_names: frozenset[str]) -> tuple[int, str] | None:
    """(status, message) refusing a ``/mutate`` caller, or None to let it in.

    ``peercert`` is what the TLS layer verified (``ssl.SSLSocket.getpeercert()``; empty without a
    certificate). Pure.
    """
    if not required:
        return None
    user = user_from_certificate(peercert if isinstance(peercert, dict) else None)
    if user is None:
        return 401, "a client certificate signed by the webhook's --client-ca-file is required"
    if allowed_names and user.name not in allowed_names:
        return 403, f"client certificate {user.name!r} is not one of --client-allowed-names"
    return None


def _log_decision(decision: Decision, status: int, seconds: float) -> None:
    # Identity and outcome only: the pod body may hold secrets in env values, so it is never logged.
    # A request answered with an error is worth a line at any verbosity; the others only at -v 4.
    level = logging.WARNING if status >= 400 else V(4)
    log.log(
        level,
        "admission %s",
        decision.action,
        extra={
            "decision": decision.action,
            "status": status,
            "operation": decision.operation,
            "uid": decision.uid,
            "namespace": decision.namespace,
            "pod": decision.name,
            "reason": decision.reason,
            "operations": decision.operations,
            "seconds": round(seconds, 6),
        },
    )


async def _mutate(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    started = time.perf_counter()
    peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
    refusal = caller_refusal(peercert, state.client_auth, state.allowed_names)
    if refusal is not None:
        status, message = refusal
        state.metrics.observe("", "refused", time.perf_counter() - started)
        log.log(V(2), "refused a caller: %s", message, extra={"status": status, "peer": request.remote})
        return web.Response(status=status, text=message + "\n")
    decisions: list[Decision] = []
    state.metrics.in_flight.inc()
    try:
        body = await request.read()  # raises 413 past client_max_size
        status, result = handle_review(body, state.mutate, decisions)
        response = web.Response(status=status, body=orjson.dumps(result), content_type="application/json")
        for decision in decisions:
            _log_decision(decision, status, time.perf_counter() - started)
        return response
    finally:
        # Also when the body was too large (413) or the handler failed: counted as an error.
        state.metrics.in_flight.dec()
        first = decisions[0] if decisions else None
        state.metrics.observe(first.operation if first else "", result_label(first), time.perf_counter() - started)


async def _healthz(request: web.Request) -> web.Response:
    problems = _liveness(request.app)
    if problems:
        return web.Response(status=500, text="\n".join(problems))
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_STATE].ready:
        return web.Response(text="ok")
    return web.Response(status=503, text="shutting down")


def _liveness(app: web.Application) -> list[str]:
    """Why the process should be restarted: a background loop that died or is wedged."""
    return app[_STATE].supervisor.problems()


def _readiness(app: web.Application) -> Readiness:
    if app[_STATE].ready:
        return [], "serving admission reviews"
    return ["shutting down"], "draining: finishing in-flight requests"


async def _on_shutdown(app: web.Application) -> None:
    app[_STATE].ready = False


def create_app(options: ServerOptions | MutateOptions | None = None,
               registry: CollectorRegistry | None = None) -> web.Application:
    """The aiohttp application: ``POST /mutate``, ``GET /healthz``, ``GET /readyz``.

    Accepts :class:`ServerOptions` (body limit and mutation options; the signing key is derived
    from its key file, see :func:`signing_key`) or bare :class:`~webhook.mutate.MutateOptions`
    (default body limit; its signing key is used as it is). Requests are counted in ``registry``
    (the process registry); without one, in a registry of the app's own (:func:`metrics`).
    """
    client_auth, allowed = False, frozenset[str]()
    if isinstance(options, ServerOptions):
        mutation = dataclasses.replace(options.mutate, signing_key=signing_key(options))
        max_body = options.max_body_bytes
        client_auth, allowed = options.client_ca_file is not None, options.client_allowed_names
    else:
        mutation, max_body = options or MutateOptions(), ServerOptions.max_body_bytes
    app = web.Application(client_max_size=max_body)
    own = registry if registry is not None else CollectorRegistry()
    app[_STATE] = _State(metrics=WebhookMetrics(own), mutate=mutation, client_auth=client_auth,
                         allowed_names=allowed)
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.on_shutdown.append(_on_shutdown)
    return app


class CertReloader:
    """Load a rotated serving certificate into the live TLS context, without a restart.

    cert-manager and kubelet's Secret volumes replace the files in place (a symlink swap); new
    TLS handshakes then get the new certificate while open connections finish on the old one.
    When the signing key is derived from the serving key, it follows the new key too. A pair
    that does not load (caught half-written) is logged and the old one kept; the next check
    tries again.
    """

    def __init__(self, options: ServerOptions, context: ssl.SSLContext, app: web.Application) -> None:
        self.options = options
        self.context = context
        self.app = app
        self.reloads = 0
        #: When the files were last looked at (monotonic): a loop that stops coming round is wedged.
        self.last_check = time.monotonic()
        self._metrics = app[_STATE].metrics
        self._seen = self._stamp()
        self._record_expiry()

    def _record_expiry(self) -> None:
        try:
            cert = x509.load_pem_x509_certificate(self.options.tls_cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("cannot read the serving certificate's expiry: %s", exc)
            self._metrics.certificate_expiry.set(0)
            return
        self._metrics.certificate_expiry.set(cert.not_valid_after_utc.timestamp())

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.options.tls_cert_file, self.options.tls_key_file):
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def check(self) -> bool:
        """Reload if the files changed since the last successful load; True when it reloaded."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        try:
            self.context.load_cert_chain(certfile=str(self.options.tls_cert_file),
                                         keyfile=str(self.options.tls_key_file))
            key = signing_key(self.options)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("serving certificate changed but does not load yet: %s", exc)
            self._metrics.certificate_reloads.labels("error").inc()
            return False
        if self.options.signing_key_file is None:
            state = self.app[_STATE]
            state.mutate = dataclasses.replace(state.mutate, signing_key=key)
        self._seen = stamp
        self.reloads += 1
        self._metrics.certificate_reloads.labels("success").inc()
        self._record_expiry()
        log.info("serving certificate reloaded", extra={"cert": str(self.options.tls_cert_file)})
        return True

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
            self.last_check = time.monotonic()


#: How often the serving certificate files are checked for rotation.
CERT_CHECK_SECONDS = 10.0
#: A reloader that has not come round for this long is wedged: ``/healthz`` fails, the pod restarts.
RELOADER_STALL_AFTER = 60.0
_RELOADER = web.AppKey("cert_reloader", CertReloader)


async def start(options: ServerOptions, registry: CollectorRegistry | None = None) -> tuple[web.AppRunner, int]:
    """Start serving over TLS; returns the runner (``await runner.cleanup()`` stops it) and the port.

    ``options.port`` 0 picks a free port; the one actually bound is returned. The serving
    certificate is reloaded when its files change (:class:`CertReloader`). Metrics go to
    ``registry`` (see :func:`create_app`).
    """
    context = ssl_context(options.tls_cert_file, options.tls_key_file, options.client_ca_file)
    records = None
    if options.avoidance_records:
        kube = await Kube.from_kubeconfig(str(options.kubeconfig) if options.kubeconfig else None, 20.0, 40,
                                          name="upper")
        records = AvoidanceRecords(kube)
        options = dataclasses.replace(options, mutate=dataclasses.replace(options.mutate, avoided=records.avoided))
    app = create_app(options, registry)
    reloader = CertReloader(options, context, app)
    app[_RELOADER] = reloader

    async def reload_certs(app: web.Application) -> AsyncIterator[None]:
        supervisor = app[_STATE].supervisor
        supervisor.spawn("certificate reloader", lambda: reloader.run(CERT_CHECK_SECONDS),
                         progress=lambda: reloader.last_check, stall_after=RELOADER_STALL_AFTER)
        if records is not None:
            records.start(supervisor)
        yield
        await supervisor.stop()
        if records is not None:
            await records.close()

    app.cleanup_ctx.append(reload_certs)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=options.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, options.bind_address, options.port, ssl_context=context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = options.port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port = int(address[1])
            break
    return runner, port


def reloader(runner: web.AppRunner) -> CertReloader:
    """The certificate reloader of a runner made by :func:`start`."""
    return runner.app[_RELOADER]


def mutate_options(runner: web.AppRunner) -> MutateOptions:
    """The mutation options a runner made by :func:`start` serves with right now."""
    return runner.app[_STATE].mutate


def metrics(app: web.Application | web.AppRunner) -> WebhookMetrics:
    """The metrics an app made by :func:`create_app` (or a runner made by :func:`start`) records into."""
    return (app.app if isinstance(app, web.AppRunner) else app)[_STATE].metrics


def ops_server(runner: web.AppRunner) -> OpsServer:
    """Plain-HTTP ``/metrics``, ``/healthz``, ``/readyz`` for a runner made by :func:`start` (not started).

    ``/metrics`` serves the registry the app records into; the probes report what the HTTPS ones do.
    """
    app = runner.app
    return OpsServer(metrics(app).registry, lambda: _liveness(app), lambda: _readiness(app))


async def serve(options: ServerOptions, registry: CollectorRegistry | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or ``stop`` is set), then finish in-flight requests and return.

    ``registry`` is the process registry (default: a new one, with the process collectors).
    """
    runner, port = await start(options, registry if registry is not None else new_registry())
    log.info("serving https://%s:%d/mutate", options.bind_address, port, extra={"port": port})
    ops: OpsServer | None = None
    if options.metrics_addr is not None:
        ops = ops_server(runner)
        host, metrics_port = options.metrics_addr
        try:
            await ops.start(host, metrics_port)
        except BaseException:
            await runner.cleanup()
            raise
        log.info("serving http://%s:%d/metrics", host, ops.port, extra={"port": ops.port})
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread / platform
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await stop.wait()
        runner.app[_STATE].ready = False
        if options.drain_seconds > 0:
            log.info("draining for %.1fs", options.drain_seconds)
            await asyncio.sleep(options.drain_seconds)
        log.info("stopping: finishing in-flight requests")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if ops is not None:
            await ops.stop()
    log.info("stopped")
