"""An upper cluster, lower clusters and the virtual nodes between them, started and stopped as one.

What ``tensile cluster up`` runs in its supervisor and what the pytest plugin's fixtures yield:

    fed = Federation.start(FederationSpec("demo", lowers={"a": nodes, "b": nodes}, webhook=True))
    fed.upper.kubeconfig, fed.lowers["a"].kubeconfig, fed.virtual_nodes["a"].name   # vk-a
    fed.stop()

Start-up is all or nothing: if a part fails, every part already started is stopped before the error
propagates, so nothing is left running.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from e2e.cluster import LocalCluster, wait_for
from e2e.kwok import NodeSpec
from e2e.process import Supervised, free_port
from e2e.schedulerproc import SchedulerProcess, kube_scheduler_config
from e2e.virtualnode import VirtualNodeProcess
from e2e.webhookproc import WebhookProcess

log = logging.getLogger("tensile.federation")

BACKENDS = ("local", "kind")


@dataclasses.dataclass
class FederationSpec:
    name: str
    upper_nodes: list[NodeSpec] = dataclasses.field(default_factory=list)
    #: lower cluster name -> its nodes; each gets a virtual node ``vk-<name>`` in the upper cluster.
    lowers: dict[str, list[NodeSpec]] = dataclasses.field(default_factory=dict)
    webhook: bool = False
    scheduler: bool = False
    #: Where the clusters' directories (kubeconfigs, logs) go; default $TENSILE_E2E_DIR.
    root: Path | None = None
    virtual_node_args: list[str] = dataclasses.field(default_factory=list)
    #: ``local`` (control-plane processes here, no Docker) or ``kind`` (see ``e2e.kindbackend``).
    backend: str = "local"

    def problem(self) -> str | None:
        """Why this spec cannot start here; None when it can."""
        if self.backend not in BACKENDS:
            return f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}"
        if self.backend == "kind":
            from e2e.kindbackend import kind_unavailable

            if reason := kind_unavailable():
                return f"the kind backend cannot run here: {reason} (the local backend needs no Docker)"
            if self.webhook or self.scheduler:
                return ("the kind backend offers no webhook or scheduler extender: kind's apiservers cannot call "
                        "back to this host")
        return None


class BackendUnavailable(RuntimeError):
    """The federation cannot run on this machine; the message says why."""


def _cluster(spec: FederationSpec, name: str, nodes: list[NodeSpec], **kw: Any) -> Any:
    if spec.backend == "kind":
        from e2e.kindbackend import KindCluster

        return KindCluster(name, nodes, root=spec.root)
    return LocalCluster(name, nodes or None, root=spec.root, **kw)


class Federation:
    def __init__(self, spec: FederationSpec) -> None:
        self.spec = spec
        self.upper: LocalCluster | None = None
        self.lowers: dict[str, LocalCluster] = {}
        self.virtual_nodes: dict[str, VirtualNodeProcess] = {}
        self.webhook: WebhookProcess | None = None
        self.extender: SchedulerProcess | None = None
        #: Everything started, in order; stopped in reverse.
        self.parts: list[Supervised] = []
        self.started_in = 0.0

    @classmethod
    def start(cls, spec: FederationSpec) -> Federation:
        """Everything Ready, or nothing left running; ``BackendUnavailable`` when the spec cannot run here."""
        if problem := spec.problem():
            raise BackendUnavailable(problem)
        fed = cls(spec)
        try:
            fed._start()
        except BaseException:
            fed.stop()
            raise
        return fed

    def _add(self, part: Any) -> Any:
        self.parts.append(part)
        return part

    def _start(self) -> None:
        began = time.monotonic()
        spec = self.spec
        upper_name = f"{spec.name}-upper" if spec.lowers else spec.name
        extender_port = free_port() if spec.scheduler else 0
        scheduler_config = kube_scheduler_config(f"http://127.0.0.1:{extender_port}") if spec.scheduler else None
        kw = {"scheduler_config": scheduler_config} if scheduler_config else {}
        self.upper = self._add(_cluster(spec, upper_name, spec.upper_nodes, **kw))
        for name, nodes in spec.lowers.items():
            self.lowers[name] = self._add(_cluster(spec, f"{spec.name}-{name}", nodes))
        # The clusters boot at once: most of a start is waiting for an apiserver to answer.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.parts)) as pool:
            for future in [pool.submit(cluster.start) for cluster in list(self.parts)]:
                future.result()
        if spec.scheduler:
            self.extender = self._add(SchedulerProcess(self.upper, extender_port))
            self.extender.start()
        if spec.webhook:
            self.webhook = self._add(WebhookProcess(self.upper))
            self.webhook.start()
        for name, lower in self.lowers.items():
            kind = spec.backend == "kind"
            vn = VirtualNodeProcess(self.upper, lower, f"vk-{name}", verified_serving_cert=not kind,
                                    extra_args=[*(["--kubelet-port=0"] if kind else []), *spec.virtual_node_args])
            self.virtual_nodes[name] = self._add(vn)
            vn.start()
        for vn in self.virtual_nodes.values():
            wait_for(partial(_node_ready, self.upper, vn.name), 60, what=f"virtual node {vn.name} Ready")
        self.started_in = time.monotonic() - began
        log.info("federation %s ready in %.1fs", spec.name, self.started_in)

    def stop(self) -> None:
        """Stop every part, newest first; one that fails to stop does not keep the others running."""
        problems = []
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - go on stopping the rest, then report
                problems.append(f"{part.label}: {exc}")
        self.parts.clear()
        if problems:
            raise RuntimeError("could not stop cleanly: " + "; ".join(problems))

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every part's logs: each cluster's components, then the processes beside them."""
        out = []
        for part in self.parts:
            if hasattr(part, "log_tails"):
                out.append(part.log_tails(lines))
            else:
                out.append(f"----- {part.label} -----\n{part.log_tail(lines)}")
        return "\n".join(out)

    def mark_failed(self) -> None:
        """Keep every cluster's directory (logs, etcd data) after it stops."""
        for part in self.parts:
            if hasattr(part, "failed"):
                part.failed = True

    @property
    def clusters(self) -> dict[str, LocalCluster]:
        out = {"upper": self.upper} if self.upper is not None else {}
        return {**out, **self.lowers}

    def kubeconfigs(self) -> dict[str, Path]:
        """``upper`` and each lower cluster's name -> its admin kubeconfig."""
        return {name: cluster.kubeconfig for name, cluster in self.clusters.items()}

    def pids(self) -> list[int]:
        """Every process this federation runs."""
        out: list[int] = []
        for part in self.parts:
            for proc in _processes(part):
                if proc.pid is not None:
                    out.append(proc.pid)
        return out


def _processes(part: Any) -> list[Any]:
    if isinstance(part, LocalCluster):
        return list(part.processes.values())
    proc = getattr(part, "proc", None)
    return [proc] if proc is not None else []


def _node_ready(upper: LocalCluster, name: str) -> bool:
    node = upper.core.read_node(name)
    conditions = node.status.conditions if node.status is not None else None
    return any(cond.type == "Ready" and cond.status == "True" for cond in conditions or [])
