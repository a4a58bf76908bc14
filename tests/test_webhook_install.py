"""The MutatingWebhookConfiguration built by webhook.install (no cluster needed)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tensile.conventions import KUBE_SYSTEM, VIRTUAL_POD_LABEL, VIRTUAL_POD_VALUE
from webhook import install
from webhook.install import ServiceRef, ensure_configuration, parse_service, webhook_configuration

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def only_webhook(manifest: dict[str, Any]) -> dict[str, Any]:
    (hook,) = manifest["webhooks"]
    return hook


def test_url_configuration_shape() -> None:
    manifest = webhook_configuration("tensile-webhook", url="https://127.0.0.1:8443/mutate", ca_bundle_pem=CA)
    assert manifest["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert manifest["kind"] == "MutatingWebhookConfiguration"
    assert manifest["metadata"]["name"] == "tensile-webhook"
    hook = only_webhook(manifest)
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:8443/mutate", "caBundle": base64.b64encode(CA).decode()}
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["objectSelector"] == {"matchLabels": {VIRTUAL_POD_LABEL: VIRTUAL_POD_VALUE}}
    assert hook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [KUBE_SYSTEM]}]
    }
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["timeoutSeconds"] == 10
    assert hook["failurePolicy"] == "Fail"


def test_ca_bundle_is_base64_of_the_pem() -> None:
    hook = only_webhook(webhook_configuration(url="https://127.0.0.1:1/mutate", ca_bundle_pem=CA))
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == CA


def test_webhook_name_is_a_domain_with_three_segments() -> None:
    hook = only_webhook(webhook_configuration("tensile-webhook", url="https://h/mutate", ca_bundle_pem=CA))
    assert hook["name"].count(".") >= 2
    assert hook["name"].startswith("tensile-webhook.")
    named = only_webhook(webhook_configuration("a.b.example.com", url="https://h/mutate", ca_bundle_pem=CA))
    assert named["name"] == "a.b.example.com"


def test_service_configuration_shape() -> None:
    service = ServiceRef("tensile-system", "tensile-webhook", 9443)
    hook = only_webhook(webhook_configuration(service=service, ca_bundle_pem=CA))
    assert hook["clientConfig"]["service"] == {
        "namespace": "tensile-system",
        "name": "tensile-webhook",
        "path": "/mutate",
        "port": 9443,
    }
    assert "url" not in hook["clientConfig"]


def test_failure_policy_is_configurable() -> None:
    hook = only_webhook(webhook_configuration(url="https://h/mutate", ca_bundle_pem=CA, failure_policy="Ignore"))
    assert hook["failurePolicy"] == "Ignore"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither url nor service
        {"url": "https://h/mutate", "service": ServiceRef("ns", "name")},
        {"url": "http://127.0.0.1:8443/mutate"},
        {"url": "https://h/mutate?x=1"},
        {"url": "https://h/mutate", "failure_policy": "Maybe"},
        {"url": "https://h/mutate", "timeout_seconds": 31},
    ],
)
def test_invalid_configurations_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        webhook_configuration(ca_bundle_pem=CA, **kwargs)


def test_non_pem_ca_bundle_is_refused() -> None:
    with pytest.raises(ValueError, match="PEM"):
        webhook_configuration(url="https://h/mutate", ca_bundle_pem=b"garbage")


def test_parse_service() -> None:
    assert parse_service("ns/name") == ServiceRef("ns", "name", 443)
    assert parse_service("ns/name:8443") == ServiceRef("ns", "name", 8443)
    for bad in ("name", "ns/", "/name", "ns/name:http", "ns/name:0", "ns/name:70000"):
        with pytest.raises(ValueError):
            parse_service(bad)


class _ApiException(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _FakeApi:
    """Stands in for AdmissionregistrationV1Api: the configuration exists, one update races."""

    def __init__(self, *, exists: bool, conflicts: int = 0) -> None:
        self.exists = exists
        self.conflicts = conflicts
        self.calls: list[tuple[str, Any]] = []

    def create_mutating_webhook_configuration(self, body: dict) -> None:
        self.calls.append(("create", body))
        if self.exists:
            raise _ApiException(409)
        self.exists = True

    def read_mutating_webhook_configuration(self, name: str) -> Any:
        self.calls.append(("read", name))
        meta = type("Meta", (), {"resource_version": "42"})()
        return type("Obj", (), {"metadata": meta})()

    def replace_mutating_webhook_configuration(self, name: str, body: dict) -> None:
        self.calls.append(("replace", body))
        if self.conflicts:
            self.conflicts -= 1
            raise _ApiException(409)


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, _FakeApi]:
    from kubernetes import client
    from kubernetes.client import exceptions

    holder: dict[str, _FakeApi] = {}
    monkeypatch.setattr(exceptions, "ApiException", _ApiException)
    monkeypatch.setattr(client, "AdmissionregistrationV1Api", lambda _api_client: holder["api"])
    monkeypatch.setattr(install, "_api_client", lambda _kubeconfig: type("C", (), {"close": lambda self: None})())
    monkeypatch.setattr(install, "_sleep", lambda _seconds: None)
    return holder


def test_ensure_configuration_creates(fake_cluster: dict[str, _FakeApi]) -> None:
    fake_cluster["api"] = api = _FakeApi(exists=False)
    manifest = webhook_configuration(url="https://h/mutate", ca_bundle_pem=CA)
    assert ensure_configuration(None, manifest) == "created"
    assert [call for call, _ in api.calls] == ["create"]


def test_ensure_configuration_updates_with_resource_version(fake_cluster: dict[str, _FakeApi]) -> None:
    fake_cluster["api"] = api = _FakeApi(exists=True, conflicts=1)
    manifest = webhook_configuration(url="https://h/mutate", ca_bundle_pem=CA)
    assert ensure_configuration(None, manifest) == "updated"
    assert [call for call, _ in api.calls] == ["create", "read", "replace", "create", "read", "replace"]
    replaced = api.calls[-1][1]
    assert replaced["metadata"]["resourceVersion"] == "42"
    assert "resourceVersion" not in manifest["metadata"]  # the caller's manifest is not modified
