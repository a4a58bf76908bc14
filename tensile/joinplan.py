"""What ``tensile join`` and ``tensile unjoin`` create, check and remove. Pure: no I/O.

``join`` links a lower cluster to an upper one through a virtual node, the way ``liqoctl peer``
links two clusters: a ServiceAccount in the lower cluster bound to the lower-side role, a
kubeconfig minted for it (TokenRequest), that kubeconfig stored as a Secret upstairs, and the
virtual node's RBAC and Deployment installed (or printed) upstairs. This module holds the names,
the objects, the rights each step needs and the kubeconfig; ``tensile.join`` talks to the clusters.

Every object carries ``app.kubernetes.io/managed-by=tensile`` and the virtual node's name (and the
upper cluster's id downstairs), so ``unjoin`` finds all of it, and so does a test that checks
nothing was left behind.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from typing import Any

from tensile import clusterprofile, manifests, rbac
from tensile import conventions as c

JSON = dict[str, Any]

#: How long a minted lower token lives unless ``--token-duration`` says otherwise (one year).
DEFAULT_TOKEN_SECONDS = 365 * 24 * 3600
#: On the upper Secret: when the lower token expires (RFC 3339), and which lower cluster it reaches.
TOKEN_EXPIRES_ANNOTATION = c.PREFIX + "token-expires"
SECRET_KEY = "kubeconfig"
FIELD_MANAGER = "tensile-join"
APPLY_PATCH = "application/apply-patch+yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class JoinError(Exception):
    """A problem the user must fix; the message says what (exit code 2)."""


def check_name(name: str) -> None:
    """A virtual node's name becomes a Node name and part of other object names: a DNS label here."""
    if not _DNS_LABEL.match(name) or len(name) > 40:
        raise JoinError(f"--name {name!r} must be a DNS label (lower-case letters, digits and '-') of at most "
                        "40 characters")


@dataclasses.dataclass(frozen=True)
class Names:
    """Every name ``join`` gives, derived from the virtual node's name and the upper cluster's id."""

    node: str
    namespace: str
    upper_cluster: str

    @property
    def lower_service_account(self) -> str:
        # Per upper cluster and node: two uppers may join one lower cluster with the same node name.
        return f"{rbac.LOWER_SERVICE_ACCOUNT_PREFIX}-{self.node}-{short_id(self.upper_cluster)}"

    @property
    def upper_service_account(self) -> str:
        return manifests.service_account(self.node)

    @property
    def secret(self) -> str:
        return manifests.lower_kubeconfig_secret(self.node)

    @property
    def labels(self) -> dict[str, str]:
        return {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE, c.OWNER_NODE_LABEL: self.node}

    @property
    def lower_labels(self) -> dict[str, str]:
        return {**self.labels, c.OWNER_CLUSTER_LABEL: self.upper_cluster}


def short_id(cluster_id: str) -> str:
    """Eight characters naming a cluster: its UID's first eight, else a hash of whatever it is."""
    cleaned = re.sub(r"[^a-z0-9]", "", cluster_id.lower())
    return cleaned[:8] if len(cleaned) >= 8 else hashlib.sha256(cluster_id.encode()).hexdigest()[:8]


# --- kinds ------------------------------------------------------------------------------------------

#: kind -> (group/version, plural, namespaced), for the kinds join and unjoin handle.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("v1", "namespaces", False),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "Secret": ("v1", "secrets", True),
    "Node": ("v1", "nodes", False),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Deployment": ("apps/v1", "deployments", True),
    "Lease": ("coordination.k8s.io/v1", "leases", True),
    "ValidatingAdmissionPolicy": ("admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": ("admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings",
                                         False),
    c.PROFILE_KIND: (f"{c.PROFILE_GROUP}/{c.PROFILE_VERSION}", c.PROFILE_PLURAL, False),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}


def object_path(kind: str, name: str, namespace: str = "", collection: bool = False) -> str:
    """The API path of one object (or, with ``collection``, of its kind in ``namespace``)."""
    group_version, plural, namespaced = KINDS[kind]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    ns = f"/namespaces/{namespace}" if namespaced and namespace else ""
    return f"{base}{ns}/{plural}" if collection else f"{base}{ns}/{plural}/{name}"


def path_of(obj: JSON) -> str:
    meta = obj["metadata"]
    return object_path(obj["kind"], meta["name"], meta.get("namespace", ""))


def describe(obj: JSON) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


# --- objects --------------------------------------------------------------------------------------

def lower_objects(names: Names) -> list[JSON]:
    """In the lower cluster: namespace, ServiceAccount, the shared role, its binding, the guard policy."""
    return rbac.lower_rbac(names.namespace, names.lower_service_account, names.lower_labels)


def token_request(seconds: int) -> JSON:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds}}


def upper_secret(names: Names, kubeconfig: str, lower_cluster: str, expires: str) -> JSON:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": names.secret, "namespace": names.namespace,
                     "labels": {**names.labels, c.LOWER_CLUSTER_LABEL: lower_cluster},
                     "annotations": {TOKEN_EXPIRES_ANNOTATION: expires}},
        "stringData": {SECRET_KEY: kubeconfig},
    }


def upper_installed(names: Names, deployment: JSON) -> list[JSON]:
    """What ``--install`` applies upstairs (and ``--print`` prints): the CRD, the RBAC, the Deployment."""
    return [clusterprofile.crd(), *upper_rbac(names), deployment]


def upper_rbac(names: Names) -> list[JSON]:
    """The virtual node's upper RBAC, narrowed to its own Node, Leases and profile (no Namespace)."""
    docs = rbac.virtual_node_rbac(names.node, names.namespace, names.upper_service_account)
    return [d for d in docs if d["kind"] != "Namespace"]


def namespace(name: str, labels: dict[str, str]) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


# --- the minted kubeconfig ---------------------------------------------------------------------------

def current_cluster(config: JSON, context: str | None = None) -> tuple[str, JSON]:
    """The (name, cluster entry) of a kubeconfig's current (or given) context."""
    wanted = context or config.get("current-context") or ""
    contexts = {ctx.get("name"): ctx.get("context") or {} for ctx in config.get("contexts") or []}
    if wanted not in contexts:
        raise JoinError(f"the kubeconfig has no context {wanted!r}")
    cluster_name = contexts[wanted].get("cluster", "")
    clusters = {cl.get("name"): cl.get("cluster") or {} for cl in config.get("clusters") or []}
    if cluster_name not in clusters:
        raise JoinError(f"context {wanted!r} names cluster {cluster_name!r}, which the kubeconfig lacks")
    return cluster_name, clusters[cluster_name]


def minted_kubeconfig(cluster: JSON, ca_pem: bytes | None, token: str, user: str,
                      server: str | None = None) -> JSON:
    """A self-contained kubeconfig for ``token`` (the CA inlined, no file references)."""
    entry: JSON = {"server": server or cluster.get("server", "")}
    if ca_pem:
        entry["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    for key in ("tls-server-name", "proxy-url", "insecure-skip-tls-verify"):
        if key in cluster:
            entry[key] = cluster[key]
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "tensile",
        "clusters": [{"name": "lower", "cluster": entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "tensile", "context": {"cluster": "lower", "user": user}}],
    }


# --- rights ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Right:
    """One verb on one resource ``join`` needs, and why."""

    verb: str
    resource: str
    group: str = ""
    namespace: str = ""
    subresource: str = ""
    why: str = ""

    def review(self) -> JSON:
        attrs: JSON = {"verb": self.verb, "resource": self.resource, "group": self.group}
        if self.namespace:
            attrs["namespace"] = self.namespace
        if self.subresource:
            attrs["subresource"] = self.subresource
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}

    def __str__(self) -> str:
        qualified = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.subresource:
            qualified += f"/{self.subresource}"
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.verb} {qualified}{where}" + (f" ({self.why})" if self.why else "")


_RBAC = "rbac.authorization.k8s.io"
_ADMISSION = "admissionregistration.k8s.io"


def _applied(kind: str, namespace: str = "", why: str = "") -> list[Right]:
    """Server-side apply creates or patches: both rights are needed."""
    group_version, plural, namespaced = KINDS[kind]
    group = group_version.rpartition("/")[0]
    ns = namespace if namespaced else ""
    return [Right("create", plural, group, ns, why=why), Right("patch", plural, group, ns, why=why)]


def lower_rights(names: Names) -> list[Right]:
    ns = names.namespace
    return [
        *_applied("Namespace", why="the namespace of tensile's ServiceAccount"),
        *_applied("ServiceAccount", ns, why="the virtual node's lower identity"),
        Right("create", "serviceaccounts", "", ns, "token", why="to mint its kubeconfig"),
        *_applied("ClusterRole", why="the lower-side role"),
        Right("bind", "clusterroles", _RBAC, why="to grant the lower-side role"),
        Right("escalate", "clusterroles", _RBAC, why="to create a role with rights the caller may not hold"),
        *_applied("ClusterRoleBinding", why="the lower-side role's binding"),
        *_applied("ValidatingAdmissionPolicy", why="the policy that limits tensile to its own objects"),
        *_applied("ValidatingAdmissionPolicyBinding", why="the policy's binding"),
        Right("get", "namespaces", "", why="to read the lower cluster's id"),
    ]


def upper_rights(names: Names, install: bool) -> list[Right]:
    ns = names.namespace
    rights = [
        *_applied("Namespace", why="the namespace of the Secret"),
        *_applied("Secret", ns, why="the lower kubeconfig"),
        Right("get", "secrets", "", ns, why="to see whether the name is joined already"),
        Right("get", "nodes", "", why="to see whether the name is a node already"),
    ]
    if install:
        rights += [
            *_applied("ServiceAccount", ns, why="the virtual node's upper identity"),
            *_applied("ClusterRole", why="the virtual node's role"),
            Right("bind", "clusterroles", _RBAC, why="to grant the virtual node's role"),
            Right("escalate", "clusterroles", _RBAC, why="to create a role with rights the caller may not hold"),
            *_applied("ClusterRoleBinding"),
            *_applied("Role", ns), *_applied("RoleBinding", ns),
            *_applied("Role", c.NODE_LEASE_NAMESPACE), *_applied("RoleBinding", c.NODE_LEASE_NAMESPACE),
            *_applied("Deployment", ns, why="the virtual node"),
            *_applied("CustomResourceDefinition", why="the ClusterProfile CRD for the virtual node's capacity profile"),
        ]
    return rights


def missing_message(side: str, user: str, missing: list[Right]) -> str:
    listed = "".join(f"\n  - {right}" for right in missing)
    return f"the {side} kubeconfig ({user or 'its user'}) lacks rights that join needs:{listed}"


# --- what an existing join says ---------------------------------------------------------------------

def joined_elsewhere(secret: JSON | None, node: JSON | None, lower_cluster: str, name: str) -> str | None:
    """Why ``name`` cannot be joined to ``lower_cluster``, or None when it is free or joined there."""
    if secret is not None:
        joined = ((secret.get("metadata") or {}).get("labels") or {}).get(c.LOWER_CLUSTER_LABEL)
        if joined and joined != lower_cluster:
            return (f"{name} is joined to another lower cluster (id {joined}); run `tensile unjoin --name {name}` "
                    "first or pick another --name")
    if node is not None:
        labels = (node.get("metadata") or {}).get("labels") or {}
        leads = labels.get(c.LOWER_CLUSTER_LABEL)
        if leads and leads != lower_cluster:
            return f"node {name} is a virtual node leading to another lower cluster (id {leads})"
        if not leads and labels.get(c.VIRTUAL_NODE_TYPE_LABEL) != c.VIRTUAL_NODE_TYPE_VALUE:
            return f"node {name} exists and is not a virtual node; pick another --name"
    return None


# --- unjoin's report ------------------------------------------------------------------------------------

#: Lower kinds tensile copies, as (plural, group/version), in the order ``--purge`` deletes them.
COPY_KINDS: tuple[tuple[str, str], ...] = (
    ("pods", "v1"),
    ("services", "v1"),
    ("endpointslices", "discovery.k8s.io/v1"),
    ("configmaps", "v1"),
    ("secrets", "v1"),
    ("persistentvolumeclaims", "v1"),
    ("serviceaccounts", "v1"),
)


def copy_selector(names: Names) -> str:
    return f"{c.OWNER_CLUSTER_LABEL}={names.upper_cluster},{c.OWNER_NODE_LABEL}={names.node}"


def leftovers_report(found: dict[str, list[str]], purged: bool) -> str:
    """One line per kind of copy left downstairs (or purged), with up to five names."""
    lines = []
    for kind, keys in found.items():
        if not keys:
            continue
        shown = ", ".join(keys[:5]) + (f", ... ({len(keys) - 5} more)" if len(keys) > 5 else "")
        lines.append(f"  {kind}: {len(keys)} ({shown})")
    if not lines:
        return "no copies were left in the lower cluster"
    head = "removed these copies from the lower cluster:" if purged else (
        "copies left in the lower cluster (remove them with --purge):")
    return "\n".join([head, *lines])
