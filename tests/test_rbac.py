"""The per-node RBAC manifests (tensile.rbac)."""

from tensile import conventions as c
from tensile.rbac import virtual_node_rbac


def test_own_node_and_lease_are_narrowed_by_name_and_leases_live_only_in_kube_node_lease() -> None:
    docs = {d["kind"]: d for d in virtual_node_rbac("vk-a", "ops", "robot")}
    cluster_rules = docs["ClusterRole"]["rules"]
    node_rules = [r for r in cluster_rules if r["resources"] in (["nodes"], ["nodes/status"])]
    assert all(r.get("resourceNames") == ["vk-a"] or r["verbs"] == ["create"] for r in node_rules)
    assert not any("leases" in r["resources"] for r in cluster_rules)
    roles = {d["metadata"]["namespace"]: d for d in virtual_node_rbac("vk-a", "ops", "robot") if d["kind"] == "Role"}
    assert set(roles) == {c.NODE_LEASE_NAMESPACE, "ops"}
    assert {tuple(r["verbs"]): r.get("resourceNames") for r in roles[c.NODE_LEASE_NAMESPACE]["rules"]} == {
        ("create",): None, ("get", "patch"): ["vk-a"]}
    # The leader-election Lease: in its own namespace, updated (client-go's verb) by name only.
    assert {tuple(r["verbs"]): r.get("resourceNames") for r in roles["ops"]["rules"]} == {
        ("create",): None, ("get", "update"): ["vk-a"]}
    bindings = [d for d in virtual_node_rbac("vk-a", "ops", "robot") if d["kind"].endswith("Binding")]
    assert len(bindings) == 3
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "robot", "namespace": "ops"}]
    assert docs["ServiceAccount"]["metadata"] == {"name": "robot", "namespace": "ops", "labels": {
        c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE, c.OWNER_NODE_LABEL: "vk-a"}}
    namespaces = [r for r in cluster_rules if r["resources"] == ["namespaces"]]
    assert namespaces == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"],
                           "resourceNames": [c.KUBE_SYSTEM]}]
