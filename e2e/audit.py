"""The apiserver's audit log, to see who wrote what and when.

``audit_args(dir)`` are kube-apiserver flags that log every write (create,
update, patch, delete) at Metadata level, without bodies, to a JSON-lines
file; ``writes(log)`` reads it back. Tests tell tensile replicas apart by the
identity in their User-Agent.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")

POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"""


def audit_args(directory: Path, name: str) -> tuple[list[str], Path]:
    """kube-apiserver flags that audit every write of cluster ``name``, and the log they write."""
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / f"audit-policy-{name}.yaml"
    policy.write_text(POLICY)
    log = directory / f"audit-{name}.log"
    return [f"--audit-policy-file={policy}", f"--audit-log-path={log}", "--audit-log-maxbackup=0"], log


def writes(log: Path) -> list[dict[str, Any]]:
    """Every audited write, oldest first, with ``received`` as an aware datetime."""
    out: list[dict[str, Any]] = []
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("verb") not in WRITE_VERBS:
            continue
        stamp = event["requestReceivedTimestamp"].replace("Z", "+00:00")
        event["received"] = datetime.datetime.fromisoformat(stamp)
        out.append(event)
    return sorted(out, key=lambda e: e["received"])
