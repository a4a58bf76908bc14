"""The upper pod's status, as a kubelet would show it. Pure: plain dicts in and out.

A kubelet is the only writer of a pod's status in a single cluster, so every
tool (kubectl, Deployments, Jobs, alerting) reads the status as a kubelet
writes it. The virtual node stands in for the kubelet, and this module decides
what it shows:

- ``upper_status``: the lower copy's status mirrored up. The virtual node is
  the host. ``PodScheduled`` stays the upper scheduler's. ``Ready`` also
  honours the upper pod's readiness gates, which the lower copy does not
  carry. The lower pod IP is shown only with a flat pod network: elsewhere it
  is unreachable from the upper cluster, and an upper EndpointSlice listing it
  would send a share of a Service's traffic into the void. The IP is the
  message of the ``tensile.io/LowerPodIP`` condition instead.
- ``held_status``: a pod that cannot be copied down yet (a missing
  ConfigMap, a refused create). Its containers wait with a reason and message,
  as a kubelet shows ``CreateContainerConfigError``.
- ``lower_problem``: why a copy does not start downstairs (unschedulable,
  image pull, crash loop), as (reason, message) for a Warning Event.
- ``failed_status``: the copy vanished out of band.
- ``not_copied_status``: a DaemonSet pod, which the virtual node accepts
  without running it (see ``pods.py`` for why).

Virtual-kubelet's Event reasons are kept where it has one, so alerts written
against virtual-kubelet keep working.
"""

from __future__ import annotations

import copy
from typing import Any

from tensile.conventions import LOWER_POD_CONDITION

JSON = dict[str, Any]

#: Status fields that belong to the upper pod and are kept as they are.
UPPER_OWNED_STATUS = ("qosClass", "nominatedNodeName", "resize", "resourceClaimStatuses")
#: Conditions a kubelet writes; every other type (readiness gates, DisruptionTarget) is someone else's.
KUBELET_CONDITIONS = ("Initialized", "Ready", "ContainersReady", "PodReadyToStartContainers")
SCHEDULED = "PodScheduled"
#: Container waiting reasons that mean the copy will not start without help.
PROBLEM_WAITING_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreCreateHookError",
    "PostStartHookError",
})
#: virtual-kubelet's Event reasons for missing dependencies.
REASON_MANDATORY = {"configmaps": "MandatoryConfigMapNotFound", "secrets": "MandatorySecretNotFound"}
REASON_OPTIONAL = {"configmaps": "OptionalConfigMapNotFound", "secrets": "OptionalSecretNotFound"}
CONFIG_ERROR = "CreateContainerConfigError"
CREATE_ERROR = "CreateContainerError"


def _condition(conds: list[JSON], ctype: str) -> JSON | None:
    return next((cond for cond in conds if cond.get("type") == ctype), None)


def _set_condition(conds: list[JSON], previous: list[JSON], ctype: str, status: str, now: str,
                   reason: str | None = None, message: str | None = None) -> None:
    """Put ``ctype`` into ``conds``, keeping its lastTransitionTime while its status is unchanged."""
    before = _condition(previous, ctype)
    cond: JSON = {"type": ctype, "status": status}
    cond["lastTransitionTime"] = (before.get("lastTransitionTime") if before is not None
                                  and before.get("status") == status else None) or now
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    conds[:] = [c for c in conds if c.get("type") != ctype] + [cond]


def _with_host(status: JSON, node_ip: str) -> None:
    status["hostIP"] = node_ip
    status["hostIPs"] = [{"ip": node_ip}]


def readiness_gates(upper: JSON) -> list[str]:
    return [g.get("conditionType", "") for g in (upper.get("spec") or {}).get("readinessGates") or []
            if g.get("conditionType")]


def _apply_readiness_gates(status: JSON, upper: JSON, now: str) -> None:
    """Ready = ContainersReady AND every readiness gate, as the kubelet computes it."""
    gates = readiness_gates(upper)
    if not gates:
        return
    conds: list[JSON] = status.setdefault("conditions", [])
    containers = _condition(conds, "ContainersReady")
    if containers is None or containers.get("status") != "True":
        return  # not ready for container reasons already
    missing = [g for g in gates if (_condition(conds, g) or {}).get("status") != "True"]
    previous = (upper.get("status") or {}).get("conditions") or []
    if missing:
        message = "; ".join(f'the status of pod readiness gate "{g}" is not "True"' for g in missing)
        _set_condition(conds, previous, "Ready", "False", now, "ReadinessGatesNotReady", message)
    else:
        _set_condition(conds, previous, "Ready", "True", now)


def upper_status(lower: JSON, upper: JSON, node_ip: str, *, flat_network: bool, now: str) -> JSON:
    """The status the upper pod should have, given its lower copy."""
    lstatus = copy.deepcopy(lower.get("status") or {})
    ustatus = upper.get("status") or {}
    drop = {"hostIP", "hostIPs", *UPPER_OWNED_STATUS} | (set() if flat_network else {"podIP", "podIPs"})
    status: JSON = {k: v for k, v in lstatus.items() if k not in drop}
    for k in UPPER_OWNED_STATUS:
        if k in ustatus:
            status[k] = ustatus[k]
    if "phase" in status:
        _with_host(status, node_ip)
    lower_conds = [cond for cond in status.get("conditions") or [] if cond.get("type") != SCHEDULED]
    kept = [cond for cond in ustatus.get("conditions") or []
            if cond.get("type") == SCHEDULED
            or (cond.get("type") not in KUBELET_CONDITIONS and _condition(lower_conds, cond.get("type", "")) is None)]
    conds = kept + lower_conds
    scheduled = _condition(status.get("conditions") or [], SCHEDULED)
    if scheduled is not None and scheduled.get("status") == "False":
        # The lower scheduler cannot place the copy. Upstairs the pod is bound (that stays True);
        # what a user needs to see is that it is not ready, and why.
        message = f"lower cluster: {scheduled.get('message') or 'the pod cannot be scheduled'}"
        reason = scheduled.get("reason") or "Unschedulable"
        for ctype in ("ContainersReady", "Ready"):
            _set_condition(conds, ustatus.get("conditions") or [], ctype, "False", now, reason, message)
    lower_ip = lstatus.get("podIP")
    if lower_ip and not flat_network:
        _set_condition(conds, ustatus.get("conditions") or [], LOWER_POD_CONDITION, "True", now, "LowerPodIP",
                       str(lower_ip))
    if conds:
        status["conditions"] = conds
    else:
        status.pop("conditions", None)
    _apply_readiness_gates(status, upper, now)
    return status


def lower_problem(lower: JSON) -> tuple[str, str] | None:
    """Why the lower copy does not start, as the lower cluster says it; None if nothing is wrong."""
    status = lower.get("status") or {}
    scheduled = _condition(status.get("conditions") or [], SCHEDULED)
    if scheduled is not None and scheduled.get("status") == "False":
        return "FailedScheduling", scheduled.get("message") or scheduled.get("reason") or "unschedulable"
    for field in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(field) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PROBLEM_WAITING_REASONS:
                name = cs.get("name", "")
                return str(waiting["reason"]), f"container {name}: {waiting.get('message') or waiting['reason']}"
    if status.get("phase") == "Failed" and status.get("reason"):
        return str(status["reason"]), status.get("message") or str(status["reason"])
    return None


def _waiting_statuses(upper: JSON, field: str, reason: str, message: str) -> list[JSON]:
    return [{"name": c.get("name", ""), "image": c.get("image", ""), "imageID": "", "ready": False,
             "started": False, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}
            for c in (upper.get("spec") or {}).get(field) or []]


def held_status(upper: JSON, node_ip: str, reason: str, message: str, now: str) -> JSON:
    """A pod accepted by the node but not started: its containers wait with ``reason``."""
    ustatus = upper.get("status") or {}
    previous = ustatus.get("conditions") or []
    status: JSON = {k: ustatus[k] for k in UPPER_OWNED_STATUS if k in ustatus}
    status["phase"] = "Pending"
    _with_host(status, node_ip)
    if ustatus.get("startTime"):
        status["startTime"] = ustatus["startTime"]
    else:
        status["startTime"] = now
    conds = [cond for cond in previous if cond.get("type") not in KUBELET_CONDITIONS]
    names = [c.get("name", "") for c in (upper.get("spec") or {}).get("containers") or []]
    not_ready = f"containers with unready status: [{' '.join(names)}]"
    _set_condition(conds, previous, "PodReadyToStartContainers", "False", now)
    _set_condition(conds, previous, "Initialized", "True", now)
    _set_condition(conds, previous, "ContainersReady", "False", now, "ContainersNotReady", not_ready)
    _set_condition(conds, previous, "Ready", "False", now, "ContainersNotReady", not_ready)
    status["conditions"] = conds
    status["containerStatuses"] = _waiting_statuses(upper, "containers", reason, message)
    init = _waiting_statuses(upper, "initContainers", reason, message)
    if init:
        status["initContainerStatuses"] = init
    return status


def not_copied_status(upper: JSON, node_ip: str, reason: str, message: str, now: str) -> JSON:
    """Running and Ready without running anything: the containers say so, and there is no pod IP.

    The Ready condition lets the owner's rollout proceed; the waiting containers (``0/1`` in
    ``kubectl get pods``, the reason as its STATUS) and the missing IP (no Service endpoint) keep
    anyone from mistaking it for a running workload.
    """
    status = held_status(upper, node_ip, reason, message, now)
    status["phase"] = "Running"
    previous = (upper.get("status") or {}).get("conditions") or []
    conds = status["conditions"]
    for ctype in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
        _set_condition(conds, previous, ctype, "True", now, reason if ctype == "Ready" else None,
                       message if ctype == "Ready" else None)
    return status


def failed_status(upper: JSON, reason: str, message: str) -> JSON:
    """The upper pod's status once its lower copy vanished out of band."""
    status = copy.deepcopy(upper.get("status") or {})
    status.update({"phase": "Failed", "reason": reason, "message": message})
    for cs in status.get("containerStatuses") or []:
        cs["ready"] = False
        if "running" in (cs.get("state") or {}):
            cs["state"] = {"terminated": {"exitCode": 137, "reason": reason,
                                          "startedAt": cs["state"]["running"].get("startedAt")}}
    conds = []
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Ready", "ContainersReady"):
            cond = {**cond, "status": "False", "reason": reason}
        conds.append(cond)
    if conds:
        status["conditions"] = conds
    return status


def _without_nulls(value: Any) -> Any:
    """``value`` without null fields, at any depth (a merge patch's null only deletes)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def status_patch(current: JSON, desired: JSON, resource_version: str | None = None) -> JSON | None:
    """A merge patch for ``/status`` turning ``current`` into ``desired``; None if equal.

    With ``resource_version`` the patch only applies to that revision: conditions are a list that
    a merge patch replaces whole, so a readiness-gate controller writing between our read and our
    write would otherwise lose its condition.
    """
    # Compared as the apiserver stores them: it answers zero times as null ("lastProbeTime": null on
    # every condition), which conditions built here do not carry. Compared as they were, every
    # reconcile sent one more PATCH for a status already written.
    now, want = _without_nulls(current), _without_nulls(desired)
    if now == want:
        return None
    patch: JSON = {k: v for k, v in desired.items() if now.get(k) != want.get(k)}
    patch.update({k: None for k in now if k not in want})
    if not patch:
        return None
    out: JSON = {"status": patch}
    if resource_version:
        out["metadata"] = {"resourceVersion": resource_version}
    return out
