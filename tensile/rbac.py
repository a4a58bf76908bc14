"""Least-privilege RBAC for every component, in both clusters, as plain manifests. Pure: no I/O.

One source for the rules: ``tensile rbac`` prints them for one virtual node, the Helm chart reads
them (``tensile rbac --chart-rules`` writes ``deploy/chart/files/rbac-rules.yaml``, which a test
keeps equal), and ``tensile join`` applies them. Each function returns PolicyRule dicts.

Upper cluster:

- the virtual node's rights on its own Node, Lease, leader-election Lease and ClusterProfile are
  limited by ``resourceNames`` (list and watch too, which the informers send with a
  ``metadata.name`` field selector); Lease rights exist only in ``kube-node-lease`` (the
  heartbeat) and in its own namespace (leader election);
- the webhook reads only ConfigMaps (the descheduler's avoidance records), the scheduler extender
  only Nodes and ClusterProfiles, and the descheduler what it moves (pods, their budgets, its
  records and backups); none of them may read a Secret.

What RBAC cannot narrow: creating the Node and the Lease (the name of a new object is not
authorized), pods (a Role cannot say "bound to this node"), and the ConfigMaps and Secrets pods
refer to, which RBAC can only grant wholesale. Node credentials under the Node authorizer
(``--node-credentials``) narrow those too.

Lower cluster: the virtual node writes pods and the objects they need in any namespace, which RBAC
can only grant wholesale. :func:`lower_guard_policy` closes that gap inside the lower apiserver: a
ValidatingAdmissionPolicy lets tensile's lower credentials create, change or delete only objects
labelled ``app.kubernetes.io/managed-by=tensile``, so they can never touch a lower object tensile
did not make.
"""

from __future__ import annotations

from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]
COORDINATION = "coordination.k8s.io"
RBAC_API = "rbac.authorization.k8s.io/v1"
#: Stands for the virtual node's name in :func:`chart_rules` (the chart substitutes it).
NODE_PLACEHOLDER = "__NODE__"
#: The descheduler's leader-election Lease (its ``--leader-elect-resource-name`` default).
DESCHEDULER_LEASE = "tensile-descheduler"
#: Lower ServiceAccounts whose names start with this are guarded by :func:`lower_guard_policy`.
LOWER_SERVICE_ACCOUNT_PREFIX = "tensile-lower"
#: Lower resources tensile writes, by API group: the guard policy watches these.
LOWER_WRITTEN: dict[str, list[str]] = {
    "": ["pods", "pods/ephemeralcontainers", "configmaps", "secrets", "persistentvolumeclaims",
         "serviceaccounts", "services", "namespaces"],
    "discovery.k8s.io": ["endpointslices"],
}


def _rule(resources: list[str], verbs: list[str], names: list[str] | None = None, group: str = "") -> JSON:
    rule: JSON = {"apiGroups": [group], "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def virtual_node_rules(node: str) -> list[JSON]:
    """The virtual node's ClusterRole in the upper cluster."""
    return [
        _rule(["nodes"], ["create"]),
        _rule(["nodes"], [*READ, "patch"], [node]),
        _rule(["nodes/status"], ["patch"], [node]),
        _rule(["pods"], [*READ, "delete"]),
        _rule(["pods/status"], ["patch"]),
        _rule(["configmaps", "secrets", "persistentvolumeclaims", "services"], READ),
        _rule(["endpointslices"], READ, group="discovery.k8s.io"),
        _rule(["events"], ["create", "patch"]),
        _rule(["namespaces"], ["get"], [c.KUBE_SYSTEM]),
        # Mirror volumes for upper claims: pvc-<claim uid>, so create cannot be narrowed.
        _rule(["persistentvolumes"], ["get", "create", "delete"]),
        # Its capacity profile for the scheduler extender (the CRD is installed by an admin).
        _rule([c.PROFILE_PLURAL], ["create"], group=c.PROFILE_GROUP),
        _rule([c.PROFILE_PLURAL], ["get", "patch"], [node], group=c.PROFILE_GROUP),
        # The kubelet API checks its callers with the upper cluster, as the kubelet's webhook authn/authz.
        _rule(["tokenreviews"], ["create"], group="authentication.k8s.io"),
        _rule(["subjectaccessreviews"], ["create"], group="authorization.k8s.io"),
        # --rotate-server-certificates: its serving certificate (an admin approves it).
        _rule(["certificatesigningrequests"], ["create", "get"], group="certificates.k8s.io"),
    ]


def node_lease_rules(node: str) -> list[JSON]:
    """The heartbeat Lease, in ``kube-node-lease``."""
    return [
        _rule(["leases"], ["create"], group=COORDINATION),
        _rule(["leases"], ["get", "patch"], [node], group=COORDINATION),
    ]


def leader_election_rules(lease: str) -> list[JSON]:
    """A leader-election Lease named ``lease`` in the component's own namespace (client-go updates it)."""
    return [
        _rule(["leases"], ["create"], group=COORDINATION),
        _rule(["leases"], ["get", "update"], [lease], group=COORDINATION),
    ]


def virtual_node_lower_rules() -> list[JSON]:
    """The virtual node's ClusterRole in the lower cluster.

    Reads: nodes and pods (capacity), its copies (label-selected watches), namespaces (the cluster
    id is kube-system's UID; suffixed namespaces), pod metrics (``/stats``). Writes: copies of pods
    and what they need, namespaces it creates (never deleted); the kubelet API relays logs, exec,
    attach and port-forward. :func:`lower_guard_policy` limits every write to tensile's own objects.
    """
    return [
        _rule(["nodes"], READ),
        _rule(["pods"], [*READ, "create", "patch", "delete"]),
        _rule(["pods/ephemeralcontainers"], ["patch"]),
        _rule(["pods/log"], ["get"]),
        # WebSocket upgrades are GETs; since Kubernetes 1.31 they need create as well.
        _rule(["pods/exec", "pods/attach", "pods/portforward"], ["get", "create"]),
        _rule(["configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts", "services"], [*READ, *WRITE]),
        _rule(["endpointslices"], [*READ, *WRITE], group="discovery.k8s.io"),
        _rule(["namespaces"], [*READ, "create"]),
        _rule(["pods"], ["get", "list"], group="metrics.k8s.io"),
    ]


def webhook_rules() -> list[JSON]:
    """The webhook's ClusterRole upstairs: the avoidance records (``--avoidance-records``)."""
    return [_rule(["configmaps"], READ)]


def scheduler_rules() -> list[JSON]:
    """The scheduler extender's ClusterRole upstairs: where virtual nodes lead, and their profiles."""
    return [
        _rule(["nodes"], ["list", "watch"]),
        _rule([c.PROFILE_PLURAL], READ, group=c.PROFILE_GROUP),
    ]


def descheduler_rules() -> list[JSON]:
    """The descheduler's ClusterRole upstairs."""
    return [
        _rule(["pods"], [*READ, "create", "delete"]),  # bare pods are recreated elsewhere
        _rule(["pods/eviction"], ["create"]),
        _rule(["nodes"], ["list", "watch"]),
        # Avoidance records and bare-pod backups (ConfigMaps it labels; RBAC cannot narrow by label).
        _rule(["configmaps"], [*READ, "create", "patch", "delete"]),
        _rule(["poddisruptionbudgets"], ["list", "watch"], group="policy"),
        _rule(["events"], ["create", "patch"]),
    ]


def chart_rules() -> dict[str, list[JSON]]:
    """Every role's rules, as the Helm chart reads them (``NODE_PLACEHOLDER`` stands for a virtual node)."""
    node = NODE_PLACEHOLDER
    return {
        "virtualNode": virtual_node_rules(node),
        "virtualNodeLeases": node_lease_rules(node),
        "virtualNodeLeaderElection": leader_election_rules(node),
        "virtualNodeLower": virtual_node_lower_rules(),
        "webhook": webhook_rules(),
        "scheduler": scheduler_rules(),
        "descheduler": descheduler_rules(),
        "deschedulerLeaderElection": leader_election_rules(DESCHEDULER_LEASE),
    }


def _managed(obj: str) -> str:
    labels = f"{obj}.metadata.labels"
    return (f"has({obj}.metadata.labels) && '{c.MANAGED_BY_LABEL}' in {labels} "
            f"&& {labels}['{c.MANAGED_BY_LABEL}'] == '{c.MANAGED_BY_VALUE}'")


def lower_guard_policy(prefix: str = LOWER_SERVICE_ACCOUNT_PREFIX) -> list[JSON]:
    """A ValidatingAdmissionPolicy named ``<prefix>-guard`` and its binding, for the lower cluster.

    Requests from ServiceAccounts (in any namespace) whose names start with ``prefix`` may create only
    objects labelled ``managed-by=tensile`` and may change or delete only objects that carry it.
    Tensile's own code already refuses to touch what it does not own (``controllers/copies.py``);
    this makes the lower apiserver refuse it too, so a bug or a stolen token cannot.
    """
    name = f"{prefix}-guard"
    labels = {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}
    rules = [{"apiGroups": [group], "apiVersions": ["v1"], "resources": resources,
              "operations": ["CREATE", "UPDATE", "DELETE"]} for group, resources in LOWER_WRITTEN.items()]
    # A subresource write (ephemeral containers) is checked against the pod it changes.
    validation = f"request.operation == 'CREATE' ? ({_managed('object')}) : ({_managed('oldObject')})"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name, "labels": labels},
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": rules},
             "matchConditions": [{
                 "name": "tensile-lower-credentials",
                 "expression": f"request.userInfo.username.matches('^system:serviceaccount:[^:]+:{prefix}')",
             }],
             "validations": [{
                 "expression": validation,
                 "messageExpression": "'tensile may change only objects labelled "
                                      f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}; ' + request.resource.resource "
                                      "+ ' ' + request.namespace + '/' + request.name + ' was not made by tensile'",
                 "reason": "Forbidden",
             }],
         }},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name, "labels": labels},
         "spec": {"policyName": name, "validationActions": ["Deny"]}},
    ]


def virtual_node_rbac(node: str, namespace: str = "tensile-system",
                      service_account: str = "tensile-virtual-node") -> list[JSON]:
    """Namespace, ServiceAccount, ClusterRole and binding, and the Lease Role and binding for ``node``."""
    name = f"tensile-virtual-node-{node}"
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    labels = {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE, c.OWNER_NODE_LABEL: node}
    cluster_rules = virtual_node_rules(node)
    lease_rules = node_lease_rules(node)
    # The leader-election Lease, named after the node, in the virtual node's own namespace.
    election_rules = leader_election_rules(node)
    meta = {"name": name, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": service_account, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
         "rules": cluster_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [subject]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {**meta, "namespace": c.NODE_LEASE_NAMESPACE}, "rules": lease_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {**meta, "namespace": c.NODE_LEASE_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [subject]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {**meta, "name": f"{name}-leader-election", "namespace": namespace}, "rules": election_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {**meta, "name": f"{name}-leader-election", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-leader-election"},
         "subjects": [subject]},
    ]


def _binding(kind: str, name: str, role: str, subject: JSON, labels: dict[str, str],
             namespace: str | None = None) -> JSON:
    meta: JSON = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": RBAC_API, "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind.removesuffix("Binding"), "name": role},
            "subjects": [subject]}


#: The lower ClusterRole, shared by every ServiceAccount joined to the lower cluster.
LOWER_ROLE = "tensile-lower"


def lower_role() -> JSON:
    return {"apiVersion": RBAC_API, "kind": "ClusterRole",
            "metadata": {"name": LOWER_ROLE, "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}},
            "rules": virtual_node_lower_rules()}


def lower_rbac(namespace: str = "tensile-system", service_account: str = LOWER_SERVICE_ACCOUNT_PREFIX,
               labels: dict[str, str] | None = None) -> list[JSON]:
    """Everything a virtual node's credentials need in the lower cluster, and the guard policy."""
    labels = {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE, **(labels or {})}
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": service_account, "namespace": namespace, "labels": labels}},
        lower_role(),
        _binding("ClusterRoleBinding", service_account, LOWER_ROLE, subject, labels),
        *lower_guard_policy(),
    ]
