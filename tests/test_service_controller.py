"""The service controller: copy a Service while a pod of the node matches it, collect it after."""

from __future__ import annotations

from tensile.controllers.context import Config, Context
from tensile.controllers.copies import LowerCopies
from tensile.controllers.namespaces import NamespaceEnsurer
from tensile.controllers.services import ServiceController
from tests.fakes import FakeKube, pod, seed


async def test_a_service_is_copied_while_a_pod_matches_and_collected_after() -> None:
    upper, lower = FakeKube("upper"), FakeKube("lower")
    ctx = Context.build(Config(node_name="vk-a", cluster_id="low"), upper, lower, "up")  # type: ignore[arg-type]
    seed(ctx.lower_namespaces, {"metadata": {"name": "ns"}})
    services = ServiceController(ctx, LowerCopies(ctx, NamespaceEnsurer(
        lower, ctx.owner, ctx.lower_namespaces)))  # type: ignore[arg-type]
    svc = {"metadata": {"name": "web", "namespace": "ns", "resourceVersion": "1"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], "clusterIP": "10.0.0.9"}}
    seed(ctx.upper_deps["services"], svc)
    seed(ctx.upper_pods, pod("other", ns="elsewhere", metadata={"labels": {"app": "web"}}))
    assert not services.wanted(svc)  # a matching pod in another namespace does not count
    seed(ctx.upper_pods, pod("web-0", metadata={"labels": {"app": "web"}}))
    assert services.wanted(svc)
    await services.reconcile("ns/web")
    (url, body), = lower.of("POST")
    assert url == "/api/v1/namespaces/ns/services" and body["spec"]["selector"] == {"app": "web"}
    assert "clusterIP" not in body["spec"]
    seed(ctx.lower_deps["services"], {**body, "metadata": {**body["metadata"], "uid": "low-web"}})
    del ctx.upper_pods.store["ns/web-0"]
    ctx.upper_pods._reindex("ns/web-0", pod("web-0", metadata={"labels": {"app": "web"}}), None)
    await services.reconcile("ns/web")
    assert [u for u, _ in lower.of("DELETE")] == ["/api/v1/namespaces/ns/services/web"]
