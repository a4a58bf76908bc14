"""Least-privilege RBAC for one virtual node, as plain manifests. Pure: no I/O.

``deploy/rbac.yaml`` lets one ServiceAccount run any virtual node. This is the
tighter alternative for one node, for clusters that cannot give tensile node
credentials (``--node-credentials``): rights on its own Node and Lease are
limited by ``resourceNames`` (list and watch too, which the informers send
with a ``metadata.name`` field selector). Lease rights exist only in
``kube-node-lease`` (the heartbeat) and in the virtual node's own namespace
(its leader-election Lease, named after the node, which is where
``--leader-elect`` puts it in a pod), so no other component's
leader-election Lease in ``kube-system`` can be touched.

What RBAC cannot narrow: creating the Node and the Lease (the name of a new
object is not authorized), pods (a Role cannot say "bound to this node"), and
the ConfigMaps and Secrets pods refer to, which RBAC can only grant wholesale.
Node credentials under the Node authorizer narrow those too.
"""

from __future__ import annotations

from typing import Any

from tensile import conventions as c

JSON = dict[str, Any]

READ = ["get", "list", "watch"]


def _rule(resources: list[str], verbs: list[str], names: list[str] | None = None, group: str = "") -> JSON:
    rule: JSON = {"apiGroups": [group], "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def virtual_node_rbac(node: str, namespace: str = "tensile-system",
                      service_account: str = "tensile-virtual-node") -> list[JSON]:
    """Namespace, ServiceAccount, ClusterRole and binding, and the Lease Role and binding for ``node``."""
    name = f"tensile-virtual-node-{node}"
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    labels = {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE, c.OWNER_NODE_LABEL: node}
    cluster_rules = [
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
    lease_rules = [
        _rule(["leases"], ["create"], group="coordination.k8s.io"),
        _rule(["leases"], ["get", "patch"], [node], group="coordination.k8s.io"),
    ]
    # The leader-election Lease, named after the node, in the virtual node's own namespace.
    election_rules = [
        _rule(["leases"], ["create"], group="coordination.k8s.io"),
        _rule(["leases"], ["get", "update"], [node], group="coordination.k8s.io"),
    ]
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
