"""The kubelet API's metrics: requests by route and code, open streams, bytes relayed, reviews."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Route labels: a fixed set, never a pod or path.
ROUTES = ("containerLogs", "exec", "attach", "portForward", "stats", "metrics", "pods", "runningpods", "healthz",
          "other")


class KubeletMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tensile_kubelet_requests", "Kubelet API requests by route and HTTP status code",
            ["route", "code"], registry=registry)
        self.duration = Histogram(
            "tensile_kubelet_request_duration_seconds",
            "Time to answer a kubelet API request (to the switch of protocols for streams)", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.streams = Gauge(
            "tensile_kubelet_open_streams", "Log follows and exec, attach and port-forward streams now relayed",
            ["route"], registry=registry)
        self.bytes = Counter(
            "tensile_kubelet_relayed_bytes", "Bytes relayed between the upper and the lower apiserver",
            ["route", "direction"], registry=registry)
        self.reviews = Counter(
            "tensile_kubelet_auth_reviews", "TokenReviews and SubjectAccessReviews sent to the upper cluster",
            ["kind"], registry=registry)


def route_label(route: str) -> str:
    return route if route in ROUTES else "other"
