from typing import Any

from tensile import dependencies as d


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}


def keys(p: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(r.resource, r.name, r.optional) for r in d.pod_dependencies(p)]


def test_volume_configmap_secret_and_pvc_are_found() -> None:
    p = pod({"volumes": [
        {"name": "a", "configMap": {"name": "cm"}},
        {"name": "b", "secret": {"secretName": "s", "optional": True}},
        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
    ], "containers": []})
    assert keys(p) == [("configmaps", "cm", False), ("persistentvolumeclaims", "data", False), ("secrets", "s", True)]


def test_projected_env_envfrom_and_image_pull_secrets_are_found() -> None:
    p = pod({
        "volumes": [{"name": "proj", "projected": {"sources": [
            {"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-s", "optional": True}},
            {"downwardAPI": {"items": []}}]}}],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-s"}}]}],
        "containers": [{"name": "c", "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "env-s", "key": "k", "optional": True}}},
            {"name": "C", "value": "plain"}], "envFrom": [{"configMapRef": {"name": "from-cm"}}]}],
        "imagePullSecrets": [{"name": "pull"}],
    })
    assert keys(p) == [
        ("configmaps", "env-cm", False), ("configmaps", "from-cm", False), ("configmaps", "proj-cm", False),
        ("secrets", "env-s", True), ("secrets", "init-s", False), ("secrets", "proj-s", True),
        ("secrets", "pull", False),
    ]


def test_a_name_required_anywhere_is_required() -> None:
    p = pod({"volumes": [{"name": "a", "configMap": {"name": "cm", "optional": True}}],
             "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}]}]})
    assert keys(p) == [("configmaps", "cm", False)]


def test_service_account_other_than_default_is_a_dependency() -> None:
    assert keys(pod({"serviceAccountName": "robot", "containers": []})) == [("serviceaccounts", "robot", False)]
    assert keys(pod({"serviceAccountName": "default", "containers": []})) == []


def test_root_ca_configmap_of_token_volume_is_never_copied() -> None:
    p = pod({"volumes": [{"name": "kube-api-access-x", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}}],
        "containers": []})
    assert keys(p) == []


def test_odd_shapes_do_not_crash() -> None:
    assert d.pod_dependencies({}) == []
    assert d.pod_dependencies({"metadata": None, "spec": {"volumes": None, "containers": None}}) == []


def test_selector_matching() -> None:
    assert d.selector_matches({"app": "web"}, {"app": "web", "x": "y"})
    assert not d.selector_matches({"app": "web"}, {"app": "db"})
    assert not d.selector_matches({}, {"app": "web"})
    assert not d.selector_matches(None, {"app": "web"})
