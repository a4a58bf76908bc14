"""What "converged" means after a fault: the lower cluster mirrors the upper one, nothing more.

Shared by the fault suites (crashes, outages): every live upper pod has exactly one lower copy with
the same phase, image and labels; no copy outlives its pod; every ConfigMap and Secret a live pod
references is copied with current data and nothing else is; no PVC, ServiceAccount or Service copy is
left. Lists are decoded as plain dicts, so hundreds of pods check in milliseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from e2e.cluster import LocalCluster, wait_for
from tensile import conventions as c


def items(list_fn: Callable[..., Any], *args: Any, **kw: Any) -> list[dict[str, Any]]:
    """A list call's items as plain dicts: hundreds of pods decode in milliseconds, not model objects."""
    resp = list_fn(*args, _preload_content=False, **kw)
    return list(json.loads(resp.data)["items"])


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def pod_refs(pod: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The ConfigMaps and Secrets a pod uses through volumes and env, read from the upper spec."""
    cms: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for v in spec.get("volumes") or []:
        if "configMap" in v:
            cms.add(v["configMap"]["name"])
        if "secret" in v:
            secrets.add(v["secret"]["secretName"])
    for ctr in spec.get("containers") or []:
        for env in ctr.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                cms.add(source["configMapKeyRef"]["name"])
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"]["name"])
    return cms, secrets


def convergence_problems(upper: LocalCluster, lower: LocalCluster, ns: str, expected: dict[str, str],
                         node: str) -> list[str]:
    """Why the lower cluster does not (yet) mirror the upper one; empty once it does.

    ``expected``: pod name -> uid of every pod the workload created and did not delete; ``node``: the
    virtual node whose copies are checked.
    """
    owned = f"{c.OWNER_NODE_LABEL}={node}"
    problems: list[str] = []
    up = items(upper.core.list_namespaced_pod, ns)
    low = items(lower.core.list_namespaced_pod, ns, label_selector=owned)
    terminating = sorted(meta(p)["name"] for p in up if meta(p).get("deletionTimestamp"))
    if terminating:
        problems.append(f"{len(terminating)} upper pods still terminating: {terminating[:5]}")
    live = {meta(p)["name"]: p for p in up if not meta(p).get("deletionTimestamp")}
    lost = sorted(set(expected) - set(live))
    if lost:
        problems.append(f"{len(lost)} upper pods lost: {lost[:5]}")
    unknown = sorted(set(live) - set(expected))
    if unknown:
        problems.append(f"{len(unknown)} upper pods nobody created: {unknown[:5]}")
    replaced = sorted(n for n in set(live) & set(expected) if meta(live[n])["uid"] != expected[n])
    if replaced:
        problems.append(f"{len(replaced)} upper pods replaced by another uid: {replaced[:5]}")
    copies: dict[str, list[dict[str, Any]]] = {}
    for p in low:
        copies.setdefault(meta(p).get("annotations", {}).get(c.UPPER_UID_ANNOTATION, ""), []).append(p)
    live_uids = {meta(p)["uid"] for p in live.values()}
    orphans = sorted(meta(p)["name"] for uid, ps in copies.items() if uid not in live_uids for p in ps)
    if orphans:
        problems.append(f"{len(orphans)} lower copies without a live upper pod: {orphans[:5]}")
    for name, pod in sorted(live.items()):
        mine = copies.get(meta(pod)["uid"], [])
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} lower copies")
            continue
        copy = mine[0]
        up_phase, low_phase = (pod.get("status") or {}).get("phase"), (copy.get("status") or {}).get("phase")
        if not up_phase or up_phase != low_phase:
            problems.append(f"{name}: upper phase {up_phase}, lower {low_phase}")
        up_image, low_image = pod["spec"]["containers"][0]["image"], copy["spec"]["containers"][0]["image"]
        if up_image != low_image:
            problems.append(f"{name}: upper image {up_image}, lower {low_image}")
        low_labels = meta(copy).get("labels") or {}
        stale = {k: v for k, v in (meta(pod).get("labels") or {}).items() if low_labels.get(k) != v}
        if stale:
            problems.append(f"{name}: labels {stale} not on the copy")
    wanted_cms: set[str] = set()
    wanted_secrets: set[str] = set()
    for pod in live.values():
        cms, secrets = pod_refs(pod)
        wanted_cms |= cms
        wanted_secrets |= secrets
    for kind, list_fn, wanted in (("configmap", "list_namespaced_config_map", wanted_cms),
                                  ("secret", "list_namespaced_secret", wanted_secrets)):
        upper_data = {meta(o)["name"]: o.get("data") for o in items(getattr(upper.core, list_fn), ns)}
        lower_data = {meta(o)["name"]: o.get("data") for o in items(getattr(lower.core, list_fn), ns,
                                                                     label_selector=owned)}
        leaked = sorted(set(lower_data) - wanted)
        if leaked:
            problems.append(f"{len(leaked)} {kind} copies no live pod references: {leaked[:5]}")
        missing = sorted(wanted - set(lower_data))
        if missing:
            problems.append(f"{len(missing)} referenced {kind}s not copied: {missing[:5]}")
        stale_data = sorted(n for n in wanted & set(lower_data) if lower_data[n] != upper_data.get(n))
        if stale_data:
            problems.append(f"{len(stale_data)} {kind} copies with stale data: {stale_data[:5]}")
    for kind, list_name in (("claim", "list_namespaced_persistent_volume_claim"),
                            ("serviceaccount", "list_namespaced_service_account"),
                            ("service", "list_namespaced_service")):
        extra = sorted(meta(o)["name"] for o in items(getattr(lower.core, list_name), ns, label_selector=owned))
        if extra:
            problems.append(f"{len(extra)} {kind} copies no pod references: {extra[:5]}")
    return problems


def wait_converged(check: Callable[[], list[str]], since: float, timeout: float, what: str) -> float:
    """Seconds from ``since`` (monotonic) until ``check`` finds nothing wrong; fails with what is still wrong."""
    last: list[str] = []

    def converged() -> bool:
        nonlocal last
        last = check()
        return not last

    try:
        wait_for(converged, timeout, interval=0.3, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; still wrong:\n  " + "\n  ".join(last[:25])) from exc
    return time.monotonic() - since
