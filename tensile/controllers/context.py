"""What every controller of one virtual node shares: config, clients, caches.

One informer per resource type per cluster, filtered server-side to what
this virtual node owns wherever possible, is created here and handed to the
controllers, so no two controllers watch the same thing twice.
"""

from __future__ import annotations

import dataclasses
import logging
import socket

from prometheus_client import CollectorRegistry

from tensile import capacity, namespacing, profile, selectors, translate
from tensile import conventions as c
from tensile.controllers.metrics import VirtualNodeMetrics
from tensile.kube.client import JSON, Kube, path
from tensile.kube.events import EventRecorder
from tensile.kube.informer import NAMESPACE, Informer, namespace_index
from tensile.kube.leader import LeaderElectionConfig
from tensile.kube.objects import ObjectWatches
from tensile.kube.workqueue import WorkQueue
from tensile.kubelet.server import ServingOptions
from tensile.quantity import ResourceList
from tensile.translate import Owner
from tensile.usage import Usage

log = logging.getLogger("tensile")

DEPENDENCY_RESOURCES = ("configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts", "services")
ENDPOINTSLICES = "endpointslices"
#: The heartbeat client's own budget: a Lease every 10 s and node status at most once a second.
HEARTBEAT_QPS = 5.0
HEARTBEAT_BURST = 10
#: Pods that still hold their requests (the field selector of the capacity caches).
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
#: API group/version of resources outside the core group.
GROUP_VERSIONS = {ENDPOINTSLICES: "discovery.k8s.io/v1"}


@dataclasses.dataclass
class Config:
    node_name: str
    cluster_id: str = ""
    node_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    taint: bool = True
    node_ip: str = ""
    kubelet_port: int = 10250
    #: How the kubelet API is served (address, certificates, authn/authz); None: not served.
    kubelet: ServingOptions | None = None
    #: Where a self-signed serving certificate is written when none is given.
    cert_dir: str = ""
    #: Where /metrics, /healthz and /readyz are served; None: nowhere.
    metrics_addr: tuple[str, int] | None = ("0.0.0.0", 10255)
    lower_unreachable_grace: float = 40.0
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    status_interval: float = 60.0
    ping_interval: float = 10.0
    pod_workers: int = 8
    dependency_workers: int = 4
    service_workers: int = 2
    #: How long a copy must stay unreferenced before it is deleted.
    dependency_gc_delay: float = 10.0
    flat_network: bool = False
    #: The upper credentials are a kubelet's (system:node:NAME under the Node authorizer and
    #: NodeRestriction): follow only the objects pods refer to, and skip what a node may not do.
    node_credentials: bool = False
    resync: float = 300.0
    #: How long caches may take to sync at start-up before the process gives up (0: no limit).
    startup_timeout: float = 120.0
    #: None: this process writes without electing a leader (one replica only).
    leader_election: LeaderElectionConfig | None = None
    #: Publish the lower cluster's capacity profile (a ClusterProfile) for the scheduler extender.
    capacity_profile: bool = True
    #: At most one profile write per this many seconds; a write at least this often (heartbeat).
    profile_interval: float = 2.0
    profile_heartbeat: float = 60.0
    profile_max_bytes: int = profile.DEFAULT_MAX_BYTES
    #: Node-label keys left out of the profile's node signatures (beside kubernetes.io/hostname).
    profile_ignored_labels: frozenset[str] = frozenset()
    #: Node shapes the lower cluster can add by autoscaling (``--extra-capacity``), advertised on
    #: the Node and in the profile.
    extra_capacity: tuple[ResourceList, ...] = ()
    #: ``--namespace-mapping``: ``same`` or ``suffixed``; the suffix names the upper cluster
    #: (``--upper-cluster-name``; "" means the first 8 characters of its kube-system UID).
    namespace_mapping: str = "same"
    upper_cluster_name: str = ""
    #: ``--lower-node-selector``: only the lower nodes it matches are this virtual node's (a pool).
    lower_node_selector: str = ""

    @property
    def pool(self) -> tuple[JSON, ...]:
        """The pool's node-selector requirements; raises ``SelectorError`` on a bad selector."""
        return tuple(selectors.requirements(self.lower_node_selector))

    def lower_nodes_selector(self) -> str:
        """The server-side selector of the lower node watch: the pool, never a virtual node.

        Copies never run on the lower cluster's virtual nodes (their provider toleration is
        stripped), so those add nothing; counting them would also feed a ring of clusters its own
        capacity back, growing without bound.
        """
        not_virtual = f"{c.VIRTUAL_NODE_TYPE_LABEL}!={c.VIRTUAL_NODE_TYPE_VALUE}"
        pool = self.lower_node_selector.strip()
        return f"{pool},{not_virtual}" if pool else not_virtual


def default_node_ip() -> str:
    """The address the upper apiserver should use to reach this process."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            ip: str = s.getsockname()[0]
            return ip
    except OSError:
        return "127.0.0.1"


@dataclasses.dataclass
class Context:
    config: Config
    upper: Kube
    #: The upper cluster again, with a rate limiter and connections of its own: Lease and node
    #: status never wait behind pod traffic (see ``Kube.fork``).
    heartbeat: Kube
    lower: Kube
    owner: Owner
    recorder: EventRecorder
    upper_pods: Informer
    upper_node: Informer
    upper_deps: dict[str, Informer]
    lower_nodes: Informer
    #: The lower pods that are not this virtual node's copies and not finished, trimmed to what
    #: capacity reads: another upper cluster's or nobody's, and this upper cluster's other virtual
    #: nodes'. With ``lower_pods`` (the copies) they are every lower pod, each in one watch only.
    lower_pods_others: tuple[Informer, ...]
    lower_pods: Informer
    lower_deps: dict[str, Informer]
    lower_namespaces: Informer
    metrics: VirtualNodeMetrics
    #: Requests of the active lower pods per lower node, kept from ``lower_pods_active()``'s events.
    lower_usage: Usage
    #: ``--lower-node-selector`` as node-selector requirements, pinned into every copy.
    pool: tuple[JSON, ...] = ()

    @classmethod
    def build(cls, config: Config, upper: Kube, lower: Kube, upper_cluster_id: str,
              registry: CollectorRegistry | None = None, lower_cluster_id: str = "") -> Context:
        """``registry``: the process's; a private one when not given (unit tests).

        Raises ``ValueError`` for a namespace mapping or node selector that cannot work.
        """
        mapping = namespacing.mapping(config.namespace_mapping,
                                      config.upper_cluster_name or namespacing.default_suffix(upper_cluster_id))
        owner = Owner(upper_cluster=upper_cluster_id, node_name=config.node_name, namespaces=mapping,
                      lower_cluster=lower_cluster_id)
        sel = owner.selector
        upper_deps: dict[str, Informer] = {
            r: Informer(upper, path(r), name=f"upper-{r}", resync=config.resync)
            for r in DEPENDENCY_RESOURCES if r != "serviceaccounts"
        }
        if config.node_credentials:
            # A node may read a ConfigMap or Secret only while one of its pods refers to it (list and
            # watch by name), and a claim only by GET: follow them one by one. Services it may list.
            for r in ("configmaps", "secrets", "persistentvolumeclaims"):
                upper_deps[r] = ObjectWatches(upper, r, name=f"upper-{r}", watch=r != "persistentvolumeclaims")
        lower_deps = {
            r: Informer(lower, path(r), label_selector=sel, name=f"lower-{r}") for r in DEPENDENCY_RESOURCES
        }
        if config.flat_network:
            slices = path(ENDPOINTSLICES, group_version=GROUP_VERSIONS[ENDPOINTSLICES])
            upper_deps[ENDPOINTSLICES] = Informer(upper, slices, name="upper-endpointslices")
            lower_deps[ENDPOINTSLICES] = Informer(lower, slices, label_selector=sel, name="lower-endpointslices")
        ctx = cls(
            config=config,
            upper=upper,
            heartbeat=upper.fork("upper-heartbeat", HEARTBEAT_QPS, HEARTBEAT_BURST),
            lower=lower,
            owner=owner,
            recorder=EventRecorder(upper, c.EVENT_COMPONENT, config.node_name),
            upper_pods=Informer(
                upper, path("pods"), field_selector=f"spec.nodeName={config.node_name}", name="upper-pods",
                resync=config.resync,
            ),
            upper_node=Informer(upper, path("nodes"), field_selector=f"metadata.name={config.node_name}",
                                name="upper-node"),
            upper_deps=upper_deps,
            lower_nodes=Informer(lower, path("nodes"), label_selector=config.lower_nodes_selector(),
                                 name="lower-nodes"),
            lower_pods_others=tuple(
                Informer(lower, path("pods"), label_selector=others, field_selector=ACTIVE_PODS,
                         transform=capacity.shrink_pod, name=f"lower-pods-{name}")
                for name, others in zip(("foreign", "siblings"), owner.others_selectors, strict=True)),
            lower_pods=Informer(lower, path("pods"), label_selector=sel, name="lower-pods"),
            lower_deps=lower_deps,
            lower_namespaces=Informer(lower, path("namespaces"), transform=_namespace_meta, name="lower-namespaces"),
            metrics=VirtualNodeMetrics(registry if registry is not None else CollectorRegistry()),
            lower_usage=Usage(owner.owns),
            pool=config.pool,  # parsed once here: a bad selector stops the start
        )
        for informer in ctx.lower_pods_active():
            informer.add_handler(ctx.lower_usage.handler(informer.name))
        # Indexes, so handlers stay O(matches) per event instead of scanning a store.
        ctx.upper_pods.add_index(NAMESPACE, namespace_index)
        for side in (upper_deps, lower_deps):
            side["services"].add_index(NAMESPACE, namespace_index)
            if ENDPOINTSLICES in side:
                side[ENDPOINTSLICES].add_index(SERVICE_INDEX, slice_service)
        return ctx

    def retry_failed_on_reconnect(self, queue: WorkQueue) -> None:
        """Keys that failed while either apiserver was away are retried as soon as it answers again.

        Their backoff grew during the outage (to a minute after twenty seconds of failures); the
        failure's cause is gone, so they should not wait it out.
        """
        for kube in (self.upper, self.lower):
            kube.reachability.on_reconnect(queue.retry_failed_now)

    def informers(self) -> list[Informer]:
        return [
            self.upper_pods, self.upper_node, *self.upper_deps.values(),
            self.lower_nodes, *self.lower_pods_others, self.lower_pods, *self.lower_deps.values(),
            self.lower_namespaces,
        ]

    def lower_pods_active(self) -> tuple[Informer, ...]:
        """Every cache of lower pods: together they hold each lower pod once (the copies finished too)."""
        return (*self.lower_pods_others, self.lower_pods)

    # --- where copies live: upper keys are ``namespace/name`` upstairs ---------------------------

    def lower_ns(self, upper_namespace: str) -> str:
        return self.owner.namespaces.lower(upper_namespace)

    def lower_key(self, upper_key: str) -> str:
        return self.owner.namespaces.lower_key(upper_key)

    def upper_key(self, lower_obj: JSON) -> str:
        """The upper ``namespace/name`` of a lower copy."""
        return self.owner.namespaces.upper_key(lower_obj)

    def upper_ns(self, lower_obj: JSON) -> str:
        return self.owner.namespaces.upper(lower_obj)

    @property
    def upper_only_keys(self) -> frozenset[str]:
        """Node-label keys only this virtual node carries (see ``translate.virtual_node_keys``)."""
        return translate.virtual_node_keys(self.config.node_labels)


#: EndpointSlices by their Service: ``namespace/service``.
SERVICE_INDEX = "service"


def slice_service(obj: JSON) -> list[str]:
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(c.SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{service}"] if service else []


def _namespace_meta(ns: JSON) -> JSON:
    """Only what ``NamespaceEnsurer`` reads (name and deletion) and the upper namespace it stands for."""
    meta = ns.get("metadata") or {}
    out = {k: meta[k] for k in ("name", "uid", "resourceVersion", "deletionTimestamp") if k in meta}
    upper = (meta.get("annotations") or {}).get(c.UPPER_NAMESPACE_ANNOTATION)
    if upper:
        out["annotations"] = {c.UPPER_NAMESPACE_ANNOTATION: upper}
    return {"metadata": out}
