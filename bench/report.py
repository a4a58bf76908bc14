"""Pure computations of the pods benchmark (``bench/pods.py``): no I/O, no clusters.

Percentiles, ratios, per-pod rates from counter deltas, ``/proc`` parsing,
apiserver metrics parsing, the lost/duplicated check, a py-spy profile's top
frames, and the Markdown tables. ``tests/test_bench_report.py`` tests them.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: HTTP verbs that change something (tensile counts requests by HTTP method).
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: tensile clients that work by the clock, not per pod (their own rate limiters; see ``Kube.fork``).
PERIODIC_CLIENTS = ("upper-heartbeat", "upper-leader-election")
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Count, min, p50/p90/p99, mean and max of ``values`` (seconds), rounded; all but the count None if empty.

    The minimum shows when a hop measured as the difference of two watches' receipt times came out
    negative: the watches' delivery delays differ by more than the hop took.
    """
    out: dict[str, Any] = {"count": len(values), "min": round(min(values), digits) if values else None}
    for label, q in QUANTILES:
        v = percentile(values, q)
        out[label] = None if v is None else round(v, digits)
    out["mean"] = round(sum(values) / len(values), digits) if values else None
    out["max"] = round(max(values), digits) if values else None
    return out


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """``numerator / denominator`` rounded; None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, digits)


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Counter increases between two snapshots (keys that did not grow are left out)."""
    out: dict[str, float] = {}
    for key, value in after.items():
        d = value - before.get(key, 0.0)
        if d > 0:
            out[key] = d
    return out


def per_pod(counts: Mapping[str, float], pods: int, digits: int = 2) -> dict[str, float]:
    """Each count divided by ``pods``, rounded, sorted by key."""
    if pods <= 0:
        return {}
    return {k: round(v / pods, digits) for k, v in sorted(counts.items())}


def group_sum(counts: Mapping[str, float], key: Any) -> dict[str, float]:
    """Counts summed by ``key(name)`` (names whose key is None are dropped)."""
    out: dict[str, float] = defaultdict(float)
    for name, value in counts.items():
        k = key(name)
        if k is not None:
            out[k] += value
    return dict(out)


# --- /proc -------------------------------------------------------------------------------------------


def cpu_ticks(stat_text: str) -> int:
    """utime + stime of a ``/proc/<pid>/stat`` line, in clock ticks (the command may hold spaces and parens)."""
    rest = stat_text[stat_text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def status_kib(status_text: str, field: str) -> int | None:
    """A ``/proc/<pid>/status`` memory field (``VmHWM``, ``VmRSS``) in KiB; None if absent."""
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


# --- metrics ----------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_requests(metrics_text: str) -> dict[str, float]:
    """``apiserver_request_total`` summed by ``VERB resource[/subresource]`` (WATCH and errors included)."""
    out: dict[str, float] = defaultdict(float)
    for line in metrics_text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        resource = labels.get("resource", "") or "-"
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        out[f"{labels.get('verb', '?')} {resource}"] += float(m.group(2))
    return dict(out)


def by_verb(counts: Mapping[str, float]) -> dict[str, float]:
    """``VERB rest`` (or ``client:VERB``) keys summed by the verb."""
    return group_sum(counts, lambda k: k.split(":")[-1].split(" ")[0])


def tensile_requests(series: Iterable[tuple[Mapping[str, str], float]]) -> dict[str, float]:
    """``tensile_api_requests_total`` series (labels, value) summed by ``client:VERB``."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in series:
        out[f"{labels.get('cluster', '?')}:{labels.get('verb', '?')}"] += value
    return dict(out)


def side_of(client: str) -> str:
    """``upper`` or ``lower`` for a tensile client name (``upper``, ``upper-heartbeat``, ``lower-kubelet-api``)."""
    return "lower" if client.startswith("lower") else "upper"


def tensile_writes(requests: Mapping[str, float], include_periodic: bool = False) -> dict[str, float]:
    """tensile's writes (``client:VERB`` counts) by ``side:VERB``, without the clock-driven clients."""
    def key(name: str) -> str | None:
        client, _, verb = name.rpartition(":")
        if verb not in WRITE_VERBS or (not include_periodic and client in PERIODIC_CLIENTS):
            return None
        return f"{side_of(client)}:{verb}"

    return group_sum(requests, key)


def ratios(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """tensile against the lower cluster alone (what a user feels) and against upper + lower (the limit
    on a CPU-bound machine), for creation and for deletion; None where a case did not run."""
    def seconds(case: str, phase: str) -> float | None:
        value = cases.get(case, {}).get(f"{phase}_seconds")
        return None if value is None else float(value)

    out: dict[str, float | None] = {}
    for phase, prefix in (("create", ""), ("delete", "delete_")):
        t, lo, up = seconds("tensile", phase), seconds("lower", phase), seconds("upper", phase)
        out[f"{prefix}tensile_over_lower"] = ratio(t, lo)
        out[f"{prefix}tensile_over_upper_plus_lower"] = ratio(t, None if lo is None or up is None else lo + up)
    return out


def agent_of(user_agent: str) -> str:
    """The program in a User-Agent (``kube-scheduler/v1.34.4 (linux/amd64) ...`` -> ``kube-scheduler``)."""
    return user_agent.split("/")[0].split(" ")[0] or "?"


def audit_counts(events: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Audited writes counted by ``client verb resource[/subresource]``."""
    out: dict[str, float] = defaultdict(float)
    for e in events:
        ref = e.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out[f"{agent_of(str(e.get('userAgent', '')))} {e.get('verb', '?')} {resource}"] += 1
    return dict(out)


# --- correctness -----------------------------------------------------------------------------------


def copies_check(upper_uids: Iterable[str], lower_copies: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Lost and duplicated pods from the lower copies ever seen, as ``(lower uid, upper uid)`` pairs.

    - ``lost``: upper pods no lower copy was ever seen for;
    - ``duplicated``: upper pods that had more than one lower copy (even one after the other);
    - ``orphans``: lower copies whose upper pod is not among ``upper_uids``.
    """
    uppers = set(upper_uids)
    copies: dict[str, set[str]] = defaultdict(set)
    orphans = 0
    for lower_uid, upper_uid in lower_copies:
        if upper_uid in uppers:
            copies[upper_uid].add(lower_uid)
        else:
            orphans += 1
    return {
        "lost": sum(1 for u in uppers if not copies.get(u)),
        "duplicated": sum(1 for c in copies.values() if len(c) > 1),
        "orphans": orphans,
    }


# --- profiles ----------------------------------------------------------------------------------------


def top_frames(collapsed: str, k: int = 15, only: str | None = None, max_share: float = 1.0) -> dict[str, Any]:
    """The costliest frames of a collapsed-stack profile (``py-spy record -f raw``: ``a;b;c COUNT`` lines).

    ``self``: samples where the frame is on top; ``inclusive``: samples where it is anywhere on the
    stack (counted once per sample). Shares are of all samples. ``only`` keeps frames whose text
    contains it (e.g. ``tensile/``) in the inclusive list; frames on more than ``max_share`` of the
    samples (the entry points: ``main``, the event loop) are left out of it, as they say nothing.
    """
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            if only is None or only in f:
                incl[f] += n

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "share": round(n / total, 4)} for f, n in counter.most_common(k)]

    incl = Counter({f: n for f, n in incl.items() if n <= max_share * total})
    return {"samples": total, "self": rows(self_counts), "inclusive": rows(incl)}


# --- Markdown ----------------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    """A table cell: ``-`` for missing, numbers rounded, an optional unit."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip() if unit else text


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def quantiles_cell(s: Mapping[str, Any] | None) -> str:
    """``p50 / p90 / p99`` of a ``summary`` in milliseconds."""
    if not s or s.get("p50") is None:
        return "-"
    return " / ".join(ms(s.get(label)) for label, _ in QUANTILES)


def verbs_cell(counts: Mapping[str, float] | None) -> str:
    """``POST 1.00, PATCH 2.05`` from per-pod counts by verb; ``0`` when empty."""
    if not counts:
        return "0"
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


CASES = ("lower", "upper", "tensile")


def summary_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per pod count: wall times of the three cases and the ratios."""
    rows = []
    for r in results:
        cases = r["cases"]
        rows.append([
            fmt(r["pods"]),
            *(fmt(cases.get(c, {}).get("create_seconds"), "s", 1) for c in CASES),
            fmt(r["ratios"].get("tensile_over_lower"), "x"),
            fmt(r["ratios"].get("tensile_over_upper_plus_lower"), "x"),
            " / ".join(fmt(cases.get(c, {}).get("delete_seconds"), "s", 1) for c in CASES),
            fmt(r["ratios"].get("delete_tensile_over_upper_plus_lower"), "x"),
        ])
    return table(["pods", "lower", "upper", "tensile", "tensile / lower", "tensile / (upper + lower)",
                  "delete: lower / upper / tensile", "delete: tensile / (upper + lower)"], rows)


def tensile_table(r: Mapping[str, Any]) -> str:
    """What tensile did for one pod count: latency, requests, writes, CPU, memory, correctness."""
    t = r["cases"]["tensile"]
    lat = t.get("latency", {})
    own = t.get("tensile", {})
    req = t.get("requests_per_pod", {})
    rows = [
        ["upper create → Running upstairs, p50 / p90 / p99", quantiles_cell(lat.get("end_to_end"))],
        ["tensile: upper bind → lower create, p50 / p90 / p99", quantiles_cell(lat.get("bind_to_lower_create"))],
        ["tensile: lower Running → upper Running, p50 / p90 / p99",
         quantiles_cell(lat.get("lower_running_to_upper_running"))],
        ["deletion: upper delete → both gone, p50 / p90 / p99", quantiles_cell(lat.get("delete_to_gone"))],
        ["tensile requests per pod, create → Running (upper; lower)",
         f"{verbs_cell(own.get('requests_per_pod', {}).get('create', {}).get('upper'))}; "
         f"{verbs_cell(own.get('requests_per_pod', {}).get('create', {}).get('lower'))}"],
        ["tensile writes per pod: create → Running / deletion / both",
         " / ".join(fmt(own.get("writes_per_pod", {}).get(p)) for p in ("create", "delete", "total"))],
        ["tensile work-queue retries / API retries", f"{fmt(own.get('workqueue_retries'))} / "
                                                     f"{fmt(own.get('api_retries'))}"],
        ["tensile CPU per 1,000 pods (create → Running → delete)", fmt(own.get("cpu_seconds_per_1000_pods"), "s")],
        ["tensile peak RSS", fmt(own.get("peak_rss_mib"), "MiB", 1)],
        ["lost / duplicated / orphaned pods", " / ".join(fmt(t.get("copies", {}).get(k))
                                                       for k in ("lost", "duplicated", "orphans"))],
        ["all clients, requests per pod, create → Running (upper; lower)",
         f"{verbs_cell(req.get('create', {}).get('upper'))}; {verbs_cell(req.get('create', {}).get('lower'))}"],
    ]
    return table([f"tensile, {r['pods']:,} pods", ""], rows)


def baseline_table(r: Mapping[str, Any]) -> str:
    """Requests per pod on each apiserver (all clients) and CPU by component, for every case."""
    rows = []
    for c in CASES:
        case = r["cases"].get(c)
        if not case:
            continue
        req = case.get("requests_per_pod", {}).get("create", {})
        cpu = case.get("cpu_seconds", {}).get("create", {})
        top = sorted(cpu.items(), key=lambda kv: -kv[1])[:4]
        rows.append([c, verbs_cell(req.get("upper")), verbs_cell(req.get("lower")),
                     ", ".join(f"{k} {v:.1f}" for k, v in top)])
    return table([f"{r['pods']:,} pods, create → Running", "upper apiserver, per pod", "lower apiserver, per pod",
                  "CPU seconds, top components"], rows)


def steady_table(s: Mapping[str, Any]) -> str:
    lat = s.get("latency", {})
    own = s.get("tensile", {})
    rows = [
        ["pods created / rate achieved", f"{fmt(s.get('pods'))} / {fmt(s.get('achieved_rate'), '/s', 1)}"],
        ["tensile: upper bind → lower create, p50 / p90 / p99", quantiles_cell(lat.get("bind_to_lower_create"))],
        ["tensile: lower Running → upper Running, p50 / p90 / p99",
         quantiles_cell(lat.get("lower_running_to_upper_running"))],
        ["upper create → Running upstairs, p50 / p90 / p99", quantiles_cell(lat.get("end_to_end"))],
        ["lower: create → Running, p50 / p90 / p99 (the lower cluster's own)",
         quantiles_cell(lat.get("lower_create_to_running"))],
        ["tensile writes per pod", fmt(own.get("writes_per_pod", {}).get("create"))],
        ["tensile CPU per 1,000 pods (create → Running → delete)", fmt(own.get("cpu_seconds_per_1000_pods"), "s")],
        ["lost / duplicated / orphaned pods", " / ".join(fmt(s.get("copies", {}).get(k))
                                                       for k in ("lost", "duplicated", "orphans"))],
    ]
    return table([f"steady load, {float(s.get('rate', 0)):g}/s for {float(s.get('seconds', 0)):g} s", ""], rows)


def markdown(results: Sequence[Mapping[str, Any]], steady: Mapping[str, Any] | None,
             environment: Mapping[str, Any]) -> str:
    """The whole ``pods.md``: environment, the summary table, then details per pod count and the steady run."""
    env = environment
    parts = [
        "# Pods benchmark (`bench/pods.py`)",
        "",
        f"Machine: {env.get('cpus')} CPUs ({env.get('cpu_model', '?')}), {fmt(env.get('memory_gib'), 'GiB', 1)}; "
        f"Kubernetes {env.get('kubernetes')}, etcd {env.get('etcd')}, kwok {env.get('kwok')}, "
        f"Python {env.get('python')}; tensile {env.get('commit')}; {env.get('date')}.",
        f"Lower cluster: {env.get('lower_nodes')} kwok nodes; upper: one kwok node and the virtual node; "
        f"virtual node flags: `{' '.join(env.get('virtual_node_args', []))}`; profiler: {env.get('profile')}.",
        "",
        "Seconds from the first create to the last pod Running (create), and from the first delete to "
        "the last pod gone on both sides (delete). `tensile`: Running upstairs. Latencies from watch events "
        "as this process received them.",
        "",
    ]
    if results:
        parts += [summary_table(results), ""]
    for r in results:
        if "tensile" in r["cases"]:
            parts += [tensile_table(r), ""]
        parts += [baseline_table(r), ""]
        prof = r.get("profile")
        if prof and prof.get("top"):
            top = prof["top"]
            parts += [f"Profile of tensile ({prof['tool']}, `{prof['file']}`, {top['samples']:,} samples of CPU). "
                      "Where the CPU goes (self):", ""]
            parts += [f"- {row['share'] * 100:.1f}% {row['frame']}" for row in top["self"][:8]]
            parts += ["", "tensile's functions by inclusive share (entry points left out):", ""]
            parts += [f"- {row['share'] * 100:.1f}% {row['frame']}" for row in top["inclusive"][:10]]
            parts += [""]
        elif prof and prof.get("file"):
            parts += [f"Profile of tensile ({prof['tool']}): `{prof['file']}`.", ""]
    if steady:
        parts += [steady_table(steady), ""]
    return "\n".join(parts)
