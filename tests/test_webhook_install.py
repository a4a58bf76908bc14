"""The objects webhook.install builds and how it creates them (no cluster needed)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tensile.conventions import (
    CLUSTER_SELECTOR_ANNOTATION,
    CLUSTER_SELECTOR_SIGNATURE_ANNOTATION,
    KUBE_SYSTEM,
    VIRTUAL_POD_LABEL,
    VIRTUAL_POD_VALUE,
)
from webhook import install
from webhook.install import (
    ANNOTATIONS_UNCHANGED,
    ServiceRef,
    ensure_configuration,
    ensure_configurations,
    manifests,
    parse_service,
    update_policy,
    update_policy_binding,
    webhook_configuration,
)

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


# --- the update policy -----------------------------------------------------------------------------


def test_update_policy_shape() -> None:
    policy = update_policy("tensile-webhook")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert policy["metadata"]["name"] == "tensile-webhook"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"] == {
        "resourceRules": [
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods", "pods/status"]}
        ]
    }
    (validation,) = spec["validations"]
    assert validation["expression"] == ANNOTATIONS_UNCHANGED
    assert validation["reason"] == "Forbidden"
    assert CLUSTER_SELECTOR_ANNOTATION in validation["message"]


def test_update_policy_binding_denies() -> None:
    binding = update_policy_binding("tensile-webhook")
    assert binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["metadata"]["name"] == "tensile-webhook"
    assert binding["spec"] == {"policyName": "tensile-webhook", "validationActions": ["Deny"]}


def test_cel_expression_compares_both_annotations_with_the_old_object() -> None:
    presence = "(has({0}.metadata.annotations) && k in {0}.metadata.annotations)"
    new, old = presence.format("object"), presence.format("oldObject")
    assert ANNOTATIONS_UNCHANGED == (
        f"['{CLUSTER_SELECTOR_ANNOTATION}', '{CLUSTER_SELECTOR_SIGNATURE_ANNOTATION}'].all(k, "
        f"{new} ? ({old} && oldObject.metadata.annotations[k] == object.metadata.annotations[k]) : !{old})"
    )
    assert ANNOTATIONS_UNCHANGED.count("(") == ANNOTATIONS_UNCHANGED.count(")")


def _cel(old: dict[str, str] | None, new: dict[str, str] | None) -> bool:
    """ANNOTATIONS_UNCHANGED itself, evaluated as Python: a check of its logic (not of CEL typing).

    The expression's shape is ``[KEYS].all(k, COND ? THEN : ELSE)``; ``has(x)`` is "not None", and
    Python's left-to-right ``and`` stands in for CEL's error-absorbing ``&&``.
    """
    keys, _, body = ANNOTATIONS_UNCHANGED.removesuffix(")").partition(".all(k, ")
    condition, _, branches = body.partition(" ? ")
    then, _, otherwise = branches.partition(" : ")

    def python(cel: str) -> str:
        cel = cel.replace("oldObject.metadata.annotations", "old").replace("object.metadata.annotations", "new")
        cel = cel.replace("has(old)", "(old is not None)").replace("has(new)", "(new is not None)")
        return cel.replace("&&", "and").replace("!", "not ").replace("not =", "!=")

    source = f"all(({python(then)}) if ({python(condition)}) else ({python(otherwise)}) for k in {keys})"
    return bool(eval(source, {"old": old, "new": new}))


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (None, None, True),
        (None, {"other": "x"}, True),
        ({CLUSTER_SELECTOR_ANNOTATION: "{}"}, {CLUSTER_SELECTOR_ANNOTATION: "{}", "other": "x"}, True),
        (None, {CLUSTER_SELECTOR_ANNOTATION: "{}"}, False),
        ({"other": "x"}, {CLUSTER_SELECTOR_SIGNATURE_ANNOTATION: "sig", "other": "x"}, False),
        ({CLUSTER_SELECTOR_ANNOTATION: "{}"}, {CLUSTER_SELECTOR_ANNOTATION: '{"nodeSelector":{}}'}, False),
        ({CLUSTER_SELECTOR_ANNOTATION: "{}"}, None, False),
    ],
)
def test_cel_semantics(old: dict[str, str] | None, new: dict[str, str] | None, allowed: bool) -> None:
    assert _cel(old, new) is allowed


def test_manifests_are_the_webhook_then_the_policy_then_its_binding() -> None:
    objects = manifests("t", url="https://h/mutate", ca_bundle_pem=CA, failure_policy="Ignore", timeout_seconds=5)
    assert [o["kind"] for o in objects] == [
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert objects[0] == webhook_configuration(
        "t", url="https://h/mutate", ca_bundle_pem=CA, failure_policy="Ignore", timeout_seconds=5
    )
    assert objects[1:] == [update_policy("t"), update_policy_binding("t")]


# --- creating them ----------------------------------------------------------------------------------


class _ApiException(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_SUFFIXES = ("mutating_webhook_configuration", "validating_admission_policy", "validating_admission_policy_binding")


class _FakeApi:
    """Stands in for AdmissionregistrationV1Api: some objects exist, some replaces race."""

    def __init__(self, *, exists: bool | set[str], conflicts: int = 0) -> None:
        self.existing = set(_SUFFIXES) if exists is True else set(exists or ())
        self.conflicts = conflicts
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, method: str) -> Any:
        verb, _, suffix = method.partition("_")
        if suffix not in _SUFFIXES:
            raise AttributeError(method)
        return lambda *args, **kwargs: getattr(self, "_" + verb)(suffix, *args, **kwargs)

    def _create(self, suffix: str, body: dict) -> None:
        self.calls.append((f"create {suffix}", body))
        if suffix in self.existing:
            raise _ApiException(409)
        self.existing.add(suffix)

    def _read(self, suffix: str, name: str) -> Any:
        self.calls.append((f"read {suffix}", name))
        meta = type("Meta", (), {"resource_version": "42"})()
        return type("Obj", (), {"metadata": meta})()

    def _replace(self, suffix: str, name: str, body: dict) -> None:
        self.calls.append((f"replace {suffix}", body))
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
    assert [call for call, _ in api.calls] == ["create mutating_webhook_configuration"]


def test_ensure_configuration_updates_with_resource_version(fake_cluster: dict[str, _FakeApi]) -> None:
    fake_cluster["api"] = api = _FakeApi(exists=True, conflicts=1)
    manifest = webhook_configuration(url="https://h/mutate", ca_bundle_pem=CA)
    assert ensure_configuration(None, manifest) == "updated"
    assert [call.split()[0] for call, _ in api.calls] == ["create", "read", "replace", "create", "read", "replace"]
    replaced = api.calls[-1][1]
    assert replaced["metadata"]["resourceVersion"] == "42"
    assert "resourceVersion" not in manifest["metadata"]  # the caller's manifest is not modified


def test_ensure_configurations_creates_or_updates_each_kind(fake_cluster: dict[str, _FakeApi]) -> None:
    fake_cluster["api"] = api = _FakeApi(exists={"validating_admission_policy"}, conflicts=1)
    objects = manifests(url="https://h/mutate", ca_bundle_pem=CA)
    assert ensure_configurations(None, objects) == ["created", "updated", "created"]
    assert [call for call, _ in api.calls] == [
        "create mutating_webhook_configuration",
        "create validating_admission_policy",
        "read validating_admission_policy",
        "replace validating_admission_policy",  # lost a race: retried
        "create validating_admission_policy",
        "read validating_admission_policy",
        "replace validating_admission_policy",
        "create validating_admission_policy_binding",
    ]
    assert api.calls[-1][1] == objects[2]


def test_ensure_configurations_stops_at_an_api_error(fake_cluster: dict[str, _FakeApi]) -> None:
    class _Forbidden(_FakeApi):
        def _create(self, suffix: str, body: dict) -> None:
            self.calls.append((f"create {suffix}", body))
            if suffix == "validating_admission_policy":
                raise _ApiException(403)

    fake_cluster["api"] = api = _Forbidden(exists=False)
    with pytest.raises(_ApiException):
        ensure_configurations(None, manifests(url="https://h/mutate", ca_bundle_pem=CA))
    assert [call for call, _ in api.calls] == [
        "create mutating_webhook_configuration",
        "create validating_admission_policy",
    ]
