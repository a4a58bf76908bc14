"""Scrape a component's ``/metrics`` with prometheus-client's own parser.

A scrape is a ``Samples`` mapping from ``name{label="value",...}`` (labels
sorted) to the value, with ``total(name, **labels)`` to sum the series that
match some labels, so a test reads ``samples.total("tensile_pod_syncs_total",
operation="create", result="success")``.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Samples(dict[str, float]):
    def __init__(self) -> None:
        super().__init__()
        self.series: list[tuple[str, dict[str, str], float]] = []
        self.families: dict[str, str] = {}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self.series.append((name, labels, value))
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        self[key] = value

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(v for n, ls, v in self.series if n == name and all(ls.get(k) == x for k, x in labels.items()))

    def label_values(self, name: str, label: str) -> set[str]:
        return {ls[label] for n, ls, _ in self.series if n == name and label in ls}


def parse(text: str) -> Samples:
    out = Samples()
    for family in text_string_to_metric_families(text):
        out.families[family.name] = family.type
        for sample in family.samples:
            out.add(sample.name, dict(sample.labels), float(sample.value))
    return out


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return parse(r.read().decode())


def quantile(before: Samples, after: Samples, histogram: str, q: float) -> float | None:
    """PromQL's ``histogram_quantile`` over what ``histogram`` observed between two scrapes.

    Linear interpolation inside the bucket, as Prometheus does; None when nothing was observed.
    """
    def buckets(s: Samples) -> dict[float, float]:
        out: dict[float, float] = {}
        for name, labels, value in s.series:
            if name == f"{histogram}_bucket":
                le = float(labels["le"])
                out[le] = out.get(le, 0.0) + value
        return out

    b0, b1 = buckets(before), buckets(after)
    counts = sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            inside = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / inside if inside else 1.0)
        lower_le, lower_count = le, count
    return lower_le
