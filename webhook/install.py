"""Register the webhook with the upper cluster's kube-apiserver.

:func:`webhook_configuration` builds the ``MutatingWebhookConfiguration`` as a plain dict (pure,
unit-tested, printable with ``--dry-run``); :func:`ensure_configuration` creates it or replaces the
existing one, so ``tensile webhook install`` can be re-run after rotating certificates.

Choices baked into the configuration:

- ``failurePolicy: Fail`` by default. With ``Ignore`` an opted-in pod created while the webhook is
  down is admitted unmutated: it keeps its lower-node constraints and lacks the provider-taint
  toleration, so it can never schedule (it stays Pending forever, silently). With ``Fail`` the
  create is refused with an error the user (or the controller's retry) sees and retries. The scope
  is narrow (pod CREATEs labelled ``virtual-pod=true``, never kube-system), so an outage cannot
  block system pods. ``--failure-policy Ignore`` is available for those who prefer availability.
- ``reinvocationPolicy: IfNeeded``: the mutation is idempotent (a pod that already carries the
  ``clusterSelector`` annotation is left alone), so being called again after another webhook
  changed the pod is safe and cheap.
- ``sideEffects: None`` (the webhook only computes a patch), so dry-run requests work.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import time
from typing import Any
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from tensile.conventions import (
    KUBE_SYSTEM,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    NAMESPACE_NAME_LABEL,
    PREFIX,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)

__all__ = [
    "DEFAULT_NAME",
    "FAILURE_POLICIES",
    "ServiceRef",
    "ensure_configuration",
    "parse_service",
    "webhook_configuration",
]

DEFAULT_NAME = "tensile-webhook"
FAILURE_POLICIES = ("Fail", "Ignore")
MUTATE_PATH = "/mutate"
#: Label the apiserver puts on every Namespace (Kubernetes >= 1.21).

JSONObject = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ServiceRef:
    """An in-cluster Service the apiserver calls: ``namespace/name[:port]``."""

    namespace: str
    name: str
    port: int = 443

    def __post_init__(self) -> None:
        if not self.namespace or not self.name:
            raise ValueError("service must be NAMESPACE/NAME[:PORT]")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"service port {self.port} is out of range 1-65535")


def parse_service(value: str) -> ServiceRef:
    """Parse ``namespace/name[:port]``; raises ``ValueError`` with a readable message."""
    namespace, slash, rest = value.partition("/")
    if not slash:
        raise ValueError(f"service {value!r} must be NAMESPACE/NAME[:PORT]")
    name, colon, port = rest.partition(":")
    if not colon:
        return ServiceRef(namespace, name)
    if not port.isdigit():
        raise ValueError(f"service port {port!r} is not a number")
    return ServiceRef(namespace, name, int(port))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"webhook url {url!r} must be https://HOST[:PORT]/PATH")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"webhook url {url!r} must not have a query, fragment or user info")


def webhook_configuration(
    name: str = DEFAULT_NAME,
    *,
    url: str | None = None,
    service: ServiceRef | None = None,
    ca_bundle_pem: bytes,
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
) -> JSONObject:
    """The ``admissionregistration.k8s.io/v1`` MutatingWebhookConfiguration, as a dict.

    Exactly one of ``url`` (e.g. ``https://127.0.0.1:8443/mutate``; an IP host needs an IP SAN in
    the serving certificate) or ``service`` must be given. ``ca_bundle_pem`` is the PEM of the CA
    that signed the serving certificate.
    """
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url or service")
    if failure_policy not in FAILURE_POLICIES:
        raise ValueError(f"failure policy must be one of {', '.join(FAILURE_POLICIES)}, not {failure_policy!r}")
    if not 1 <= timeout_seconds <= 30:
        raise ValueError("timeout seconds must be between 1 and 30")
    if b"-----BEGIN CERTIFICATE-----" not in ca_bundle_pem:
        raise ValueError("CA bundle is not a PEM certificate")
    client_config: JSONObject = {"caBundle": base64.b64encode(ca_bundle_pem).decode("ascii")}
    if url is not None:
        _check_url(url)
        client_config["url"] = url
    else:
        assert service is not None
        client_config["service"] = {
            "namespace": service.namespace,
            "name": service.name,
            "path": MUTATE_PATH,
            "port": service.port,
        }
    # A webhook's name must be a domain with at least three segments.
    webhook_name = name if name.count(".") >= 2 else f"{name}.pods.{PREFIX.rstrip('/')}"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "webhooks": [
            {
                "name": webhook_name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": client_config,
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {"matchLabels": {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE}},
                "namespaceSelector": {
                    "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": [KUBE_SYSTEM]}]
                },
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": timeout_seconds,
                "failurePolicy": failure_policy,
            }
        ],
    }


def _api_client(kubeconfig: str | os.PathLike[str] | None) -> Any:
    from kubernetes import client
    from kubernetes import config as kube_config

    # The config loaders are untyped; the manifest is a plain dict, which the client sends as is.
    config: Any = kube_config
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=None if kubeconfig is None else os.fspath(kubeconfig))


#: How retries wait; a seam so unit tests need not sleep.
_sleep = time.sleep


def ensure_configuration(kubeconfig: str | os.PathLike[str] | None, manifest: JSONObject, attempts: int = 5) -> str:
    """Create the MutatingWebhookConfiguration, or replace it if it exists.

    ``kubeconfig`` ``None`` means ``$KUBECONFIG`` / ``~/.kube/config`` (or the in-cluster config
    inside a Pod). Returns ``"created"`` or ``"updated"``. Raises
    ``kubernetes.client.exceptions.ApiException`` on API errors other than a lost update race, which
    is retried up to ``attempts`` times.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    api_client = _api_client(kubeconfig)
    api: Any = client.AdmissionregistrationV1Api(api_client)  # given plain dicts, not model classes

    def create_or_replace() -> str:
        try:
            api.create_mutating_webhook_configuration(body=manifest)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = api.read_mutating_webhook_configuration(name)
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        api.replace_mutating_webhook_configuration(name, body=body)
        return "updated"

    # 409: changed since we read it; 404: deleted since we read it. Both are races worth another try.
    lost_race = retry_if_exception(lambda e: isinstance(e, ApiException) and e.status in (404, 409))
    try:
        result: str = Retrying(
            stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=lost_race, reraise=True, sleep=_sleep,
        )(create_or_replace)
        return result
    finally:
        api_client.close()
