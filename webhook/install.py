"""Register the webhook with the upper cluster's kube-apiserver.

:func:`manifests` builds, as plain dicts (pure, unit-tested, printable with ``--dry-run``), the
``MutatingWebhookConfiguration`` (:func:`webhook_configuration`) and a ``ValidatingAdmissionPolicy``
with its binding (:func:`update_policy`, :func:`update_policy_binding`), all with the same name.
:func:`ensure_configurations` creates them or replaces the existing ones, so ``tensile webhook
install`` can be re-run after rotating certificates.

Choices baked into the configuration:

- ``failurePolicy: Fail`` by default. With ``Ignore`` an opted-in pod created while the webhook is
  down is admitted unmutated: it keeps its lower-node constraints and lacks the provider-taint
  toleration, so it can never schedule (it stays Pending forever, silently). With ``Fail`` the
  create is refused with an error the user (or the controller's retry) sees and retries. The scope
  is narrow (pod CREATEs labelled ``virtual-pod=true``, never kube-system), so an outage cannot
  block system pods. ``--failure-policy Ignore`` is available for those who prefer availability.
- ``reinvocationPolicy: IfNeeded``: on a second call the webhook recognises its own annotation by
  its signature, folds in what a later webhook added (so that webhook's lower-node constraints do
  not strand the pod upstairs) and otherwise changes nothing.
- ``sideEffects: None`` (the webhook only computes a patch), so dry-run requests work.
- The webhook sees pod CREATEs only, so on its own it could not stop a later UPDATE from editing
  ``clusterSelector`` (annotations are mutable) and steering the lower copy. The policy denies every
  pod UPDATE that adds, changes or removes that annotation or its signature. It is a
  ValidatingAdmissionPolicy (GA in Kubernetes 1.30): CEL inside the apiserver, so the webhook
  process needs no UPDATE traffic and an outage of it cannot block pod updates.
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
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    KUBE_SYSTEM,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    NAMESPACE_NAME_LABEL,
    PREFIX,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)

__all__ = [
    "ANNOTATIONS_UNCHANGED",
    "DEFAULT_NAME",
    "FAILURE_POLICIES",
    "ServiceRef",
    "ensure_configuration",
    "ensure_configurations",
    "manifests",
    "parse_service",
    "update_policy",
    "update_policy_binding",
    "webhook_configuration",
]

DEFAULT_NAME = "tensile-webhook"
FAILURE_POLICIES = ("Fail", "Ignore")
MUTATE_PATH = "/mutate"
API_VERSION = "admissionregistration.k8s.io/v1"

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
        "apiVersion": API_VERSION,
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


def _annotations_unchanged(keys: tuple[str, ...]) -> str:
    """CEL, true when the update leaves each annotation in ``keys`` as it was (absent stays absent).

    ``has()`` guards every access, so pods without annotations evaluate without error; CEL's ``&&``
    is false as soon as one side is, whatever the other side's error.
    """

    def present(obj: str) -> str:
        return f"(has({obj}.metadata.annotations) && k in {obj}.metadata.annotations)"

    listed = ", ".join(f"'{key}'" for key in keys)
    same = "oldObject.metadata.annotations[k] == object.metadata.annotations[k]"
    return f"[{listed}].all(k, {present('object')} ? ({present('oldObject')} && {same}) : !{present('oldObject')})"


#: The policy's validation: the webhook's annotations are never edited after creation.
ANNOTATIONS_UNCHANGED = _annotations_unchanged((CLUSTER_SELECTOR_ANNOTATION, CLUSTER_SELECTOR_SIGNATURE_ANNOTATION))


def update_policy(name: str = DEFAULT_NAME) -> JSONObject:
    """The ValidatingAdmissionPolicy that denies pod UPDATEs touching the clusterSelector annotations.

    It matches every pod, labelled or not, and ``pods/status`` too (status updates may change a pod's
    metadata). ``failurePolicy: Fail``: an error in the policy must not open the hole it closes.
    """
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["pods", "pods/status"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": ANNOTATIONS_UNCHANGED,
                    "message": f"the {CLUSTER_SELECTOR_ANNOTATION} and {CLUSTER_SELECTOR_SIGNATURE_ANNOTATION} "
                    "annotations are set by the tensile webhook when a pod is created and cannot be changed",
                    "reason": "Forbidden",
                }
            ],
        },
    }


def update_policy_binding(name: str = DEFAULT_NAME) -> JSONObject:
    """The binding that puts :func:`update_policy` (of the same name) in force, denying violations."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


def manifests(
    name: str = DEFAULT_NAME,
    *,
    url: str | None = None,
    service: ServiceRef | None = None,
    ca_bundle_pem: bytes,
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
) -> list[JSONObject]:
    """Everything ``install`` creates, in creation order: :func:`webhook_configuration` (given the
    same arguments), then :func:`update_policy` and its binding."""
    webhook = webhook_configuration(
        name,
        url=url,
        service=service,
        ca_bundle_pem=ca_bundle_pem,
        failure_policy=failure_policy,
        timeout_seconds=timeout_seconds,
    )
    return [webhook, update_policy(name), update_policy_binding(name)]


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


#: The AdmissionregistrationV1Api method suffix of each kind ``install`` manages.
_API_NAMES = {
    "MutatingWebhookConfiguration": "mutating_webhook_configuration",
    "ValidatingAdmissionPolicy": "validating_admission_policy",
    "ValidatingAdmissionPolicyBinding": "validating_admission_policy_binding",
}


def ensure_configuration(kubeconfig: str | os.PathLike[str] | None, manifest: JSONObject, attempts: int = 5) -> str:
    """Create one object of :func:`manifests`, or replace it if it exists; ``"created"`` or ``"updated"``."""
    return ensure_configurations(kubeconfig, [manifest], attempts)[0]


def ensure_configurations(
    kubeconfig: str | os.PathLike[str] | None, objects: list[JSONObject], attempts: int = 5
) -> list[str]:
    """Create each of ``objects`` (from :func:`manifests`) in order, or replace it if it exists.

    ``kubeconfig`` ``None`` means ``$KUBECONFIG`` / ``~/.kube/config`` (or the in-cluster config
    inside a Pod). Returns ``"created"`` or ``"updated"`` per object. Raises
    ``kubernetes.client.exceptions.ApiException`` on API errors other than a lost update race, which
    is retried up to ``attempts`` times per object.
    """
    from kubernetes import client

    api_client = _api_client(kubeconfig)
    try:
        api: Any = client.AdmissionregistrationV1Api(api_client)  # given plain dicts, not model classes
        return [_ensure(api, manifest, attempts) for manifest in objects]
    finally:
        api_client.close()


def _ensure(api: Any, manifest: JSONObject, attempts: int) -> str:
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    suffix = _API_NAMES[manifest["kind"]]

    def create_or_replace() -> str:
        try:
            getattr(api, f"create_{suffix}")(body=manifest)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = getattr(api, f"read_{suffix}")(name)
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        getattr(api, f"replace_{suffix}")(name, body=body)
        return "updated"

    # 409: changed since we read it; 404: deleted since we read it. Both are races worth another try.
    lost_race = retry_if_exception(lambda e: isinstance(e, ApiException) and e.status in (404, 409))
    result: str = Retrying(
        stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=lost_race, reraise=True, sleep=_sleep,
    )(create_or_replace)
    return result
