"""Which namespaced objects a pod needs before it can start in the lower cluster.

Tensile Kube copies only ConfigMaps and Secrets named by volumes and
imagePullSecrets, so a pod reading a key through ``env.valueFrom``,
``envFrom`` or a projected volume starts without it downstairs. This module
finds every reference Kubernetes allows, and remembers whether each is
optional: a missing optional reference does not hold the pod.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

JSON = dict[str, Any]

CONFIGMAP = "configmaps"
SECRET = "secrets"
PVC = "persistentvolumeclaims"
SERVICEACCOUNT = "serviceaccounts"
#: Published into every namespace of every cluster by kube-controller-manager;
#: the token volume projects it. Never copied.
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"


@dataclasses.dataclass(frozen=True, order=True)
class Ref:
    """A dependency: ``resource`` is the plural API resource name."""

    resource: str
    namespace: str
    name: str
    optional: bool = dataclasses.field(default=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.resource}/{self.namespace}/{self.name}"


def _containers(spec: JSON) -> Iterator[JSON]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(field) or []


def _volume_refs(ns: str, volume: JSON) -> Iterator[Ref]:
    if cm := volume.get("configMap"):
        yield Ref(CONFIGMAP, ns, cm.get("name", ""), bool(cm.get("optional")))
    if secret := volume.get("secret"):
        yield Ref(SECRET, ns, secret.get("secretName", ""), bool(secret.get("optional")))
    if pvc := volume.get("persistentVolumeClaim"):
        yield Ref(PVC, ns, pvc.get("claimName", ""))
    for source in (volume.get("projected") or {}).get("sources") or []:
        if cm := source.get("configMap"):
            yield Ref(CONFIGMAP, ns, cm.get("name", ""), bool(cm.get("optional")))
        if secret := source.get("secret"):
            yield Ref(SECRET, ns, secret.get("name", ""), bool(secret.get("optional")))
    # Secret references of volume plugins that read credentials from a Secret.
    for plugin in ("cephfs", "cinder", "flexVolume", "iscsi", "rbd", "scaleIO", "storageos", "azureFile", "csi"):
        src = volume.get(plugin)
        if not isinstance(src, dict):
            continue
        for field in ("secretRef", "nodePublishSecretRef"):
            if ref := src.get(field):
                yield Ref(SECRET, ns, ref.get("name", ""))
        if plugin == "azureFile" and src.get("secretName"):
            yield Ref(SECRET, ns, src["secretName"])


def _env_refs(ns: str, container: JSON) -> Iterator[Ref]:
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        if ref := source.get("configMapKeyRef"):
            yield Ref(CONFIGMAP, ns, ref.get("name", ""), bool(ref.get("optional")))
        if ref := source.get("secretKeyRef"):
            yield Ref(SECRET, ns, ref.get("name", ""), bool(ref.get("optional")))
    for env_from in container.get("envFrom") or []:
        if ref := env_from.get("configMapRef"):
            yield Ref(CONFIGMAP, ns, ref.get("name", ""), bool(ref.get("optional")))
        if ref := env_from.get("secretRef"):
            yield Ref(SECRET, ns, ref.get("name", ""), bool(ref.get("optional")))


def pod_dependencies(pod: JSON, *, include_service_account: bool = True, namespace: str | None = None) -> list[Ref]:
    """Every dependency of ``pod``, deduplicated; a name required anywhere is required.

    Call it on the translated lower pod: the upper service-account token
    volume (which names ``kube-root-ca.crt``) is gone by then. ``namespace`` overrides the
    pod's own (a lower copy's references are named in its upper namespace).
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ns = namespace or meta.get("namespace") or "default"
    found: dict[tuple[str, str], Ref] = {}

    def add(ref: Ref) -> None:
        if not ref.name or (ref.resource == CONFIGMAP and ref.name == ROOT_CA_CONFIGMAP):
            return
        prev = found.get((ref.resource, ref.name))
        if prev is None or (prev.optional and not ref.optional):
            found[(ref.resource, ref.name)] = ref

    for volume in spec.get("volumes") or []:
        for ref in _volume_refs(ns, volume):
            add(ref)
    for container in _containers(spec):
        for ref in _env_refs(ns, container):
            add(ref)
    for pull in spec.get("imagePullSecrets") or []:
        add(Ref(SECRET, ns, pull.get("name", "")))
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if include_service_account and sa and sa != "default":
        add(Ref(SERVICEACCOUNT, ns, sa))
    return sorted(found.values())


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's equality selector against pod labels; an empty selector selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
