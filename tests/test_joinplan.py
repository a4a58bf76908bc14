"""What tensile join and unjoin create, check and remove (tensile.joinplan), without clusters."""

from __future__ import annotations

import base64

import pytest

from tensile import conventions as c
from tensile import rbac
from tensile.joinplan import (
    JoinError,
    Names,
    Right,
    check_name,
    current_cluster,
    joined_elsewhere,
    leftovers_report,
    lower_objects,
    lower_rights,
    minted_kubeconfig,
    missing_message,
    object_path,
    short_id,
    upper_rbac,
    upper_rights,
    upper_secret,
)

UPPER = "1f0e3c2a-9b8d-4e6f-a1b2-c3d4e5f60718"
NAMES = Names("vk-east", "tensile-system", UPPER)


def test_names_are_per_upper_cluster_and_node_and_the_guard_policy_matches_the_service_account() -> None:
    assert NAMES.lower_service_account == "tensile-lower-vk-east-1f0e3c2a"
    assert NAMES.lower_service_account.startswith(rbac.LOWER_SERVICE_ACCOUNT_PREFIX)
    assert Names("vk-east", "tensile-system", "another-upper-uid").lower_service_account != \
        NAMES.lower_service_account
    assert NAMES.secret == "tensile-vk-east-lower-kubeconfig"
    assert NAMES.lower_labels[c.OWNER_CLUSTER_LABEL] == UPPER
    assert short_id("x") == short_id("x") and len(short_id("x")) == 8


@pytest.mark.parametrize("name", ["", "VK", "vk_east", "-vk", "vk-", "a" * 41])
def test_a_name_that_cannot_be_a_node_name_is_refused(name: str) -> None:
    with pytest.raises(JoinError, match="DNS label"):
        check_name(name)


def test_lower_objects_bind_only_the_joined_service_account_to_the_lower_role() -> None:
    docs = {d["kind"]: d for d in lower_objects(NAMES)}
    assert set(docs) == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == rbac.LOWER_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAMES.lower_service_account,
                                    "namespace": "tensile-system"}]
    assert docs["ServiceAccount"]["metadata"]["labels"][c.OWNER_NODE_LABEL] == "vk-east"
    assert docs["ClusterRole"]["rules"] == rbac.virtual_node_lower_rules()


def test_the_lower_role_never_writes_nodes_and_the_guard_covers_every_written_resource() -> None:
    rules = rbac.virtual_node_lower_rules()
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules if "nodes" in r["resources"])
    written = {(g, res) for r in rules if set(r["verbs"]) & set(rbac.WRITE)
               for g in r["apiGroups"] for res in r["resources"]}
    guarded = {(g, res) for g, resources in rbac.LOWER_WRITTEN.items() for res in resources}
    # Streams (exec, attach, port-forward) are connections, not objects: nothing to guard.
    streams = {("", "pods/exec"), ("", "pods/attach"), ("", "pods/portforward")}
    assert written - streams <= guarded


def test_the_guard_policy_allows_only_tensile_objects_for_tensile_credentials() -> None:
    policy, binding = rbac.lower_guard_policy("acme-lower")
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "acme-lower-guard"
    assert binding["spec"]["validationActions"] == ["Deny"]
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert condition == "request.userInfo.username.matches('^system:serviceaccount:[^:]+:acme-lower')"
    expression = policy["spec"]["validations"][0]["expression"]
    assert "oldObject" in expression and "'CREATE'" in expression and c.MANAGED_BY_LABEL in expression


def test_no_component_but_the_virtual_node_may_read_secrets() -> None:
    for name, rules in rbac.chart_rules().items():
        reads_secrets = any("secrets" in r["resources"] for r in rules)
        assert reads_secrets == (name in ("virtualNode", "virtualNodeLower")), name


def test_chart_rules_name_the_node_by_placeholder() -> None:
    rules = rbac.chart_rules()
    named = [r for r in rules["virtualNode"] if r.get("resourceNames") and r["resources"] == ["nodes"]]
    assert named and named[0]["resourceNames"] == [rbac.NODE_PLACEHOLDER]


def test_the_minted_kubeconfig_inlines_the_ca_and_keeps_tls_settings() -> None:
    config = {"current-context": "admin", "contexts": [{"name": "admin", "context": {"cluster": "low", "user": "a"}}],
              "clusters": [{"name": "low", "cluster": {"server": "https://10.0.0.1:6443",
                                                       "certificate-authority": "ca.crt",
                                                       "tls-server-name": "api.low"}}]}
    _, cluster = current_cluster(config)
    minted = minted_kubeconfig(cluster, b"PEM", "tok", "sa", server="https://lower.example:6443")
    entry = minted["clusters"][0]["cluster"]
    assert entry == {"server": "https://lower.example:6443", "certificate-authority-data": base64.b64encode(
        b"PEM").decode(), "tls-server-name": "api.low"}
    assert minted["users"][0]["user"] == {"token": "tok"}
    assert minted_kubeconfig(cluster, None, "t", "sa")["clusters"][0]["cluster"]["server"] == "https://10.0.0.1:6443"


def test_a_kubeconfig_without_its_context_or_cluster_is_a_clear_error() -> None:
    with pytest.raises(JoinError, match="no context 'x'"):
        current_cluster({"current-context": "x"})
    with pytest.raises(JoinError, match="lacks"):
        current_cluster({"current-context": "a", "contexts": [{"name": "a", "context": {"cluster": "gone"}}]})


def test_the_secret_records_where_it_leads_and_when_the_token_expires() -> None:
    secret = upper_secret(NAMES, "kubeconfig: yes", "lower-uid", "2027-12-04T00:00:00Z")
    assert secret["metadata"]["labels"][c.LOWER_CLUSTER_LABEL] == "lower-uid"
    assert secret["stringData"] == {"kubeconfig": "kubeconfig: yes"}
    assert secret["metadata"]["annotations"][c.PREFIX + "token-expires"] == "2027-12-04T00:00:00Z"


def test_a_name_joined_to_another_lower_cluster_or_a_real_node_is_refused() -> None:
    secret = upper_secret(NAMES, "", "lower-1", "")
    assert joined_elsewhere(secret, None, "lower-1", "vk-east") is None  # joined here: a re-run
    assert "another lower cluster" in (joined_elsewhere(secret, None, "lower-2", "vk-east") or "")
    real = {"metadata": {"name": "vk-east", "labels": {}}}
    assert "not a virtual node" in (joined_elsewhere(None, real, "lower-1", "vk-east") or "")
    virtual = {"metadata": {"labels": {c.LOWER_CLUSTER_LABEL: "lower-9", c.VIRTUAL_NODE_TYPE_LABEL: "virtual-kubelet"}}}
    assert "another lower cluster" in (joined_elsewhere(None, virtual, "lower-1", "vk-east") or "")
    assert joined_elsewhere(None, None, "lower-1", "vk-east") is None


def test_rights_name_the_verb_and_the_resource() -> None:
    lower = [str(r) for r in lower_rights(NAMES)]
    assert "create serviceaccounts/token in namespace tensile-system (to mint its kubeconfig)" in lower
    assert any(s.startswith("create validatingadmissionpolicies.admissionregistration.k8s.io") for s in lower)
    printed = [str(r) for r in upper_rights(NAMES, install=False)]
    installed = [str(r) for r in upper_rights(NAMES, install=True)]
    assert not any("deployments" in s for s in printed) and any("deployments.apps" in s for s in installed)
    message = missing_message("lower", "alice", [Right("create", "clusterroles", "rbac.authorization.k8s.io")])
    assert message == ("the lower kubeconfig (alice) lacks rights that join needs:\n"
                       "  - create clusterroles.rbac.authorization.k8s.io")
    review = Right("create", "serviceaccounts", "", "ns", "token").review()
    assert review["spec"]["resourceAttributes"] == {"verb": "create", "resource": "serviceaccounts", "group": "",
                                                    "namespace": "ns", "subresource": "token"}


def test_upper_rbac_is_the_narrow_per_node_rbac_without_the_namespace() -> None:
    docs = upper_rbac(NAMES)
    assert "Namespace" not in {d["kind"] for d in docs}
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == rbac.virtual_node_rules("vk-east")


def test_paths() -> None:
    assert object_path("Secret", "s", "ns") == "/api/v1/namespaces/ns/secrets/s"
    assert object_path("ClusterRole", "r", "ignored") == "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"
    assert object_path("Lease", "", "kube-node-lease", collection=True) == \
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def test_leftovers_report() -> None:
    assert leftovers_report({"pods": []}, purged=False) == "no copies were left in the lower cluster"
    text = leftovers_report({"pods": [f"ns/p{i}" for i in range(7)], "secrets": ["ns/s"]}, purged=False)
    assert text.splitlines() == ["copies left in the lower cluster (remove them with --purge):",
                                 "  pods: 7 (ns/p0, ns/p1, ns/p2, ns/p3, ns/p4, ... (2 more))",
                                 "  secrets: 1 (ns/s)"]
    assert leftovers_report({"pods": ["a/b"]}, purged=True).startswith("removed these copies")
