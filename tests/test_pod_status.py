"""The upper pod's status as a kubelet would show it (tensile.pod_status)."""

from typing import Any

from tensile import conventions as c
from tensile import pod_status as ps

NOW = "2026-01-01T00:00:00Z"
IP = "172.16.0.1"


def upper(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}], **spec},
            "status": {"phase": "Pending", "qosClass": "Burstable",
                       "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}]}}


def running_lower(**status: Any) -> dict[str, Any]:
    base = {"phase": "Running", "podIP": "10.9.0.5", "podIPs": [{"ip": "10.9.0.5"}], "hostIP": "192.168.1.10",
            "startTime": "t", "qosClass": "BestEffort",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "low"},
                           {"type": "Initialized", "status": "True"},
                           {"type": "ContainersReady", "status": "True"},
                           {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "restartCount": 2, "ready": True,
                                   "state": {"running": {"startedAt": "t"}}}]}
    base.update(status)
    return {"status": base}


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_status_mirrors_lower_with_the_virtual_node_as_host_and_no_unreachable_ip() -> None:
    st = ps.upper_status(running_lower(), upper(), IP, flat_network=False, now=NOW)
    assert st["phase"] == "Running" and "podIP" not in st and "podIPs" not in st
    assert st["hostIP"] == IP and st["hostIPs"] == [{"ip": IP}]
    assert st["qosClass"] == "Burstable"
    assert st["containerStatuses"][0]["restartCount"] == 2
    assert cond(st, "PodScheduled")["lastTransitionTime"] == "t0"  # the upper scheduler's, not the lower one's
    assert cond(st, c.LOWER_POD_CONDITION)["message"] == "10.9.0.5"  # for people, not for routing


def test_flat_network_keeps_the_lower_pod_ip() -> None:
    st = ps.upper_status(running_lower(), upper(), IP, flat_network=True, now=NOW)
    assert st["podIP"] == "10.9.0.5" and st["podIPs"] == [{"ip": "10.9.0.5"}]
    assert all(x["type"] != c.LOWER_POD_CONDITION for x in st["conditions"])


def test_conditions_of_other_writers_are_kept() -> None:
    up = upper()
    up["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True"})
    st = ps.upper_status(running_lower(), up, IP, flat_network=False, now=NOW)
    assert cond(st, "DisruptionTarget")["status"] == "True"


def test_ready_waits_for_every_readiness_gate() -> None:
    up = upper(readinessGates=[{"conditionType": "example.com/lb"}, {"conditionType": "example.com/db"}])
    st = ps.upper_status(running_lower(), up, IP, flat_network=False, now=NOW)
    ready = cond(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"
    assert "example.com/lb" in ready["message"] and "example.com/db" in ready["message"]
    up["status"]["conditions"] += [{"type": "example.com/lb", "status": "True"},
                                   {"type": "example.com/db", "status": "False"}]
    st = ps.upper_status(running_lower(), up, IP, flat_network=False, now=NOW)
    assert cond(st, "Ready")["status"] == "False" and "example.com/lb" not in cond(st, "Ready")["message"]
    up["status"]["conditions"][-1]["status"] = "True"
    st = ps.upper_status(running_lower(), up, IP, flat_network=False, now=NOW)
    assert cond(st, "Ready")["status"] == "True"
    assert cond(st, "example.com/lb")["status"] == "True"  # gates are kept, never overwritten


def test_readiness_gates_do_not_make_an_unready_pod_ready() -> None:
    lower = running_lower()
    for item in lower["status"]["conditions"]:
        if item["type"] in ("Ready", "ContainersReady"):
            item["status"] = "False"
    up = upper(readinessGates=[{"conditionType": "g"}])
    up["status"]["conditions"].append({"type": "g", "status": "True"})
    assert cond(ps.upper_status(lower, up, IP, flat_network=False, now=NOW), "Ready")["status"] == "False"


def test_lower_unschedulable_shows_as_not_ready_with_the_lower_message() -> None:
    lower = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 Insufficient cpu."}]}}
    st = ps.upper_status(lower, upper(), IP, flat_network=False, now=NOW)
    assert cond(st, "PodScheduled")["status"] == "True"
    ready = cond(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"
    assert "Insufficient cpu" in ready["message"]
    assert ps.lower_problem(lower) == ("FailedScheduling", "0/2 nodes are available: 2 Insufficient cpu.")


def test_lower_problem_names_the_waiting_reason() -> None:
    lower = running_lower(phase="Pending", containerStatuses=[
        {"name": "app", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}])
    assert ps.lower_problem(lower) == ("ErrImagePull", "container app: not found")
    starting = running_lower(containerStatuses=[{"name": "app", "state": {"waiting": {
        "reason": "ContainerCreating"}}}])
    assert ps.lower_problem(starting) is None
    assert ps.lower_problem(running_lower()) is None
    evicted = running_lower(phase="Failed", reason="Evicted", message="low on memory")
    assert ps.lower_problem(evicted) == ("Evicted", "low on memory")


def test_held_pod_waits_like_create_container_config_error() -> None:
    up = upper(initContainers=[{"name": "init", "image": "busybox"}])
    st = ps.held_status(up, IP, ps.CONFIG_ERROR, 'configmap "late" not found', NOW)
    assert st["phase"] == "Pending" and st["hostIP"] == IP and st["startTime"] == NOW
    waiting = st["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "CreateContainerConfigError", "message": 'configmap "late" not found'}
    assert st["initContainerStatuses"][0]["name"] == "init"
    assert cond(st, "Ready")["status"] == "False" and cond(st, "PodScheduled")["status"] == "True"
    # Held again later: the transition times stay, so status writes stop once nothing changes.
    up["status"] = st
    assert ps.held_status(up, IP, ps.CONFIG_ERROR, 'configmap "late" not found', "later") == st


def test_not_copied_pod_is_ready_without_an_ip_and_says_why() -> None:
    st = ps.not_copied_status(upper(), IP, "DaemonSetPodNotCopied", "not copied", NOW)
    assert st["phase"] == "Running" and "podIP" not in st
    assert cond(st, "Ready") == {"type": "Ready", "status": "True", "lastTransitionTime": NOW,
                                 "reason": "DaemonSetPodNotCopied", "message": "not copied"}
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "DaemonSetPodNotCopied"
    assert st["containerStatuses"][0]["ready"] is False


def test_failed_status_marks_containers_terminated() -> None:
    up = upper()
    up["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "app", "ready": True, "state": {"running": {"startedAt": "t"}}}]}
    st = ps.failed_status(up, "LowerPodDeleted", "gone")
    assert st["phase"] == "Failed" and st["reason"] == "LowerPodDeleted"
    assert st["containerStatuses"][0]["state"]["terminated"]["reason"] == "LowerPodDeleted"
    assert st["conditions"][0]["status"] == "False"


def test_status_patch_is_none_when_equal_nulls_removed_fields_and_pins_a_revision() -> None:
    assert ps.status_patch({"phase": "Running"}, {"phase": "Running"}) is None
    assert ps.status_patch({"phase": "Pending", "message": "m"}, {"phase": "Running"}) == {
        "status": {"phase": "Running", "message": None}}
    assert ps.status_patch({}, {"phase": "Running"}, "42") == {
        "status": {"phase": "Running"}, "metadata": {"resourceVersion": "42"}}


def test_a_status_already_written_is_not_written_again() -> None:
    # The apiserver answers every pod condition with "lastProbeTime": null (a zero metav1.Time), which
    # the conditions tensile builds itself (Ready with readiness gates, tensile.io/LowerPodIP) do not
    # carry. Compared as they were, every reconcile of every pod sent one more status PATCH upstairs:
    # on each label change, each resync, and under a burst of updates one per round (409s and 429s).
    def as_stored(status: dict[str, Any]) -> dict[str, Any]:
        return {**status, "conditions": [{"lastProbeTime": None, **cd} for cd in status.get("conditions") or []]}

    low = running_lower()
    low["status"] = as_stored(low["status"])
    for spec in ({}, {"readinessGates": [{"conditionType": "example.com/gate"}]}):
        up = upper(**spec)
        up["status"]["conditions"].append({"type": "example.com/gate", "status": "True", "lastTransitionTime": "g"})
        first = ps.upper_status(low, up, IP, flat_network=False, now=NOW)
        assert ps.status_patch(up["status"], first) is not None
        up["status"] = as_stored(first)
        again = ps.upper_status(low, up, IP, flat_network=False, now="2026-01-01T00:01:00Z")
        assert ps.status_patch(up["status"], again, "8") is None, spec
        # A real change is still written, nulls and all.
        changed = ps.upper_status(running_lower(phase="Succeeded"), up, IP, flat_network=False, now=NOW)
        assert ps.status_patch(up["status"], changed) is not None
