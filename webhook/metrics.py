"""Prometheus metrics of the admission webhook, in the process registry (``tensile.kube.metrics``).

Served over plain HTTP on ``--metrics-addr`` next to the HTTPS endpoint. Labels stay bounded:
the request's ``operation`` (one of :data:`OPERATIONS`, else ``unknown``) and a ``result`` from a
small fixed set (:data:`RESULTS`); never a namespace, pod name or uid (those go to the V(4) log
line of each decision).

Results of ``POST /mutate``:

- ``mutated``: allowed with a JSONPatch (an opted-in pod CREATE);
- ``unchanged``: allowed as it is (not a pod, not a CREATE, not opted in, kube-system, already
  mutated); the webhook never denies a request, so there is no ``denied``;
- ``error``: no AdmissionReview answer: a body that does not decode as one or a malformed pod
  (HTTP 400), a body over the size limit (413), or a failure of the handler. The apiserver then
  applies the configuration's ``failurePolicy``;
- ``refused``: a caller without the client certificate ``--client-ca-file`` asks for (401), or with a
  name not in ``--client-allowed-names`` (403); its operation is ``unknown`` (the body is not read).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from webhook.review import Decision

__all__ = ["ADMISSION_BUCKETS", "OPERATIONS", "RESULTS", "WebhookMetrics", "operation_label", "result_label"]

#: An admission is CPU work on one small object: 0.5 ms up to the apiserver's 10 s default timeout.
ADMISSION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: ``admission.k8s.io/v1`` operations; anything else is counted as ``unknown``.
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
RESULTS = ("mutated", "unchanged", "error", "refused")
_RESULT_OF_ACTION = {"patched": "mutated", "skipped": "unchanged", "rejected": "error"}


def operation_label(operation: str) -> str:
    return operation if operation in OPERATIONS else "unknown"


def result_label(decision: Decision | None) -> str:
    """``mutated``, ``unchanged`` or ``error`` (no decision: the request never reached one)."""
    return "error" if decision is None else _RESULT_OF_ACTION.get(decision.action, "error")


class WebhookMetrics:
    """Admission requests, their latency and the serving certificate's reloads and expiry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "tensile_admission_requests_total", "POST /mutate requests by AdmissionReview operation and result "
            "(mutated: allowed with a patch; unchanged: allowed as is; error: HTTP 400/413/500, no review "
            "answered; refused: a caller without the required client certificate, 401/403).",
            ["operation", "result"], registry=registry)
        self.duration = Histogram(
            "tensile_admission_duration_seconds", "Time from receiving a POST /mutate request to its answer, "
            "body read included, by AdmissionReview operation.",
            ["operation"], buckets=ADMISSION_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "tensile_admission_in_flight_requests", "POST /mutate requests being handled now.", registry=registry)
        self.certificate_reloads = Counter(
            "tensile_webhook_certificate_reloads_total", "Attempts to load a changed serving certificate and key "
            "(error: the pair did not load, e.g. caught half-written; the old one keeps serving).",
            ["result"], registry=registry)
        self.certificate_expiry = Gauge(
            "tensile_webhook_certificate_expiration_timestamp_seconds", "When the serving certificate in use "
            "expires (Unix time); 0 when it could not be read.", registry=registry)
        # Series that exist from the start, so rate() and absent() work before the first request.
        for result in RESULTS:
            self.requests.labels("CREATE", result)
        self.duration.labels("CREATE")
        for result in ("success", "error"):
            self.certificate_reloads.labels(result)

    def observe(self, operation: str, result: str, seconds: float) -> None:
        """One ``/mutate`` request: counted by result, timed by operation."""
        op = operation_label(operation)
        self.requests.labels(op, result if result in RESULTS else "error").inc()
        self.duration.labels(op).observe(seconds)
