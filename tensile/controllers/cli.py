"""``tensile virtual-node``: flags named like Tensile Kube's and the kubelet's."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from tensile import conventions as c
from tensile import flags, logs, namespacing, profile, selectors
from tensile.controllers.context import Config
from tensile.kube.client import SERVICEACCOUNT_DIR
from tensile.kube.errors import ApiError
from tensile.kube.leader import LeaderElectionConfig
from tensile.kubelet.server import ServingError, ServingOptions

log = logging.getLogger("tensile")


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    return key, val


def kubeconfig_exists(value: str) -> bool:
    """``$KUBECONFIG`` may list several files, as for kubectl; the ones that exist are merged."""
    return any(os.path.exists(os.path.expanduser(part)) for part in value.split(os.pathsep) if part)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "virtual-node",
        help="project a lower cluster into the upper cluster as one node",
        description="Register NODENAME in the upper cluster with the lower cluster's capacity and run "
                    "the pods bound to it in the lower cluster.",
    )
    p.add_argument("--nodename", required=True, help="name of the virtual Node in the upper cluster")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="upper cluster kubeconfig (default: $KUBECONFIG, else in-cluster)")
    p.add_argument("--client-kubeconfig", required=True, help="lower cluster kubeconfig")
    p.add_argument("--cluster-id", default="", help="clusterID label value (default: lower kube-system UID)")
    p.add_argument("--node-label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                   help="extra label on the virtual Node (repeatable)")
    p.add_argument("--disable-taint", action="store_true", help="do not taint the virtual Node")
    p.add_argument("--node-ip", default=os.environ.get("VKUBELET_POD_IP", ""),
                   help="address advertised for the kubelet API (default: $VKUBELET_POD_IP or this host's)")
    k = p.add_argument_group("kubelet API (logs, exec, attach, port-forward, stats)")
    k.add_argument("--kubelet-port", type=flags.port, default=10250,
                   help="port of the kubelet API, served over HTTPS and advertised in the Node (default 10250; "
                        "0: serve none)")
    k.add_argument("--kubelet-address", default="0.0.0.0",
                   help="address the kubelet API binds to, like the kubelet's --address (default 0.0.0.0)")
    k.add_argument("--tls-cert-file", default="",
                   help="serving certificate of the kubelet API, with an IP or DNS SAN for --node-ip, signed by the "
                        "CA the upper apiserver's --kubelet-certificate-authority names (default: self-signed)")
    k.add_argument("--tls-private-key-file", default="", help="key of --tls-cert-file")
    k.add_argument("--rotate-server-certificates", action="store_true",
                   help="ask the upper cluster for the serving certificate with a kubernetes.io/kubelet-serving "
                        "CertificateSigningRequest (an admin approves it: kubectl certificate approve NAME) and "
                        "renew it at 80%% of its lifetime; self-signed until the first is issued")
    k.add_argument("--cert-dir", default="",
                   help="where a self-signed serving certificate is written (default: a private temporary directory)")
    k.add_argument("--client-ca-file", default="",
                   help="client certificates signed by this CA authenticate (the upper apiserver's "
                        "--kubelet-client-certificate is signed by the upper cluster's CA)")
    k.add_argument("--authentication-token-webhook", nargs="?", const=True, default=True, type=flags.parse_bool,
                   metavar="BOOL", help="authenticate bearer tokens with a TokenReview in the upper cluster (default "
                                        "true)")
    k.add_argument("--anonymous-auth", nargs="?", const=True, default=False, type=flags.parse_bool, metavar="BOOL",
                   help="let requests without credentials through as system:anonymous (default false: 401)")
    k.add_argument("--authorization-mode", choices=("Webhook", "AlwaysAllow"), default="Webhook",
                   help="Webhook: a SubjectAccessReview in the upper cluster for nodes/proxy, nodes/stats, ... of this "
                        "node, as the kubelet; AlwaysAllow: every authenticated caller (default Webhook)")
    flags.add_metrics_flag(p, ":10255", "virtual node")
    flags.deprecated(p, "--metrics-port", "--metrics-addr", convert=_port_to_addr)
    p.add_argument("--qps", type=float, default=200.0, help="upper cluster client QPS")
    p.add_argument("--burst", type=int, default=400, help="upper cluster client burst")
    p.add_argument("--client-qps", type=float, default=200.0, help="lower cluster client QPS")
    p.add_argument("--client-burst", type=int, default=400, help="lower cluster client burst")
    p.add_argument("--lower-unreachable-grace", type=float, default=40.0, metavar="SECONDS",
                   help="how long the lower apiserver may be unreachable before the Node turns NotReady")
    p.add_argument("--flat-network", action="store_true",
                   help="pod IPs route between clusters: copy Services without selector plus the upper "
                        "EndpointSlices (Tensile Kube's mode) instead of letting the lower cluster select pods")
    m = p.add_argument_group("mesh (several upper clusters, node pools)")
    m.add_argument("--namespace-mapping", choices=namespacing.MODES, default="same",
                   help="same: upper namespace ns is lower namespace ns, and an object another upper cluster "
                        "already has there is refused, never overwritten; suffixed: it is lower namespace "
                        "<ns>-<upper cluster name>, so upper clusters sharing a lower cluster never collide "
                        "(default same)")
    m.add_argument("--upper-cluster-name", default="", metavar="NAME",
                   help="the suffix of --namespace-mapping suffixed, a DNS label of at most "
                        f"{namespacing.MAX_SUFFIX} characters (default: the first 8 characters of the upper "
                        "cluster's kube-system UID)")
    m.add_argument("--lower-node-selector", default="", metavar="SELECTOR",
                   help="project only the lower nodes this label selector matches (pool=a, 'zone in (x,y)'): their "
                        "capacity alone counts and the copies are pinned to them, so one lower cluster can be "
                        "several virtual nodes, one process each (default: every lower node)")
    p.add_argument("--node-credentials", action="store_true",
                   help="the upper credentials are a kubelet's (system:node:NODENAME under the Node authorizer and "
                        "NodeRestriction): follow only what pods refer to; no role/managed-by labels, no mirror PVs")
    p.add_argument("--pod-sync-workers", type=flags.positive_int, default=8, metavar="N",
                   help="pods synced in parallel (default 8)")
    flags.deprecated(p, "--pod-workers", "--pod-sync-workers", convert=flags.positive_int)
    p.add_argument("--dependency-workers", type=flags.positive_int, default=4, metavar="N",
                   help="ConfigMaps, Secrets, PVCs and ServiceAccounts synced in parallel (default 4)")
    p.add_argument("--service-workers", type=flags.positive_int, default=2, metavar="N",
                   help="Services (and EndpointSlices) synced in parallel (default 2)")
    p.add_argument("--full-resync-period", type=flags.parse_duration, default=300.0, metavar="DURATION",
                   help="how often every upper pod and dependency is looked at again, events or not (default 5m)")
    p.add_argument("--startup-timeout", type=flags.parse_duration, default=120.0, metavar="DURATION",
                   help="how long the caches may take to sync at start-up before the process exits (default 2m; "
                        "0: no limit)")
    p.add_argument("--node-lease-duration-seconds", type=flags.positive_int, default=40, metavar="SECONDS",
                   help="duration of the Node's heartbeat Lease in kube-node-lease, as the kubelet's "
                        "nodeLeaseDurationSeconds (default 40)")
    p.add_argument("--node-lease-renew-interval", type=flags.parse_duration, default=10.0, metavar="DURATION",
                   help="how often the heartbeat Lease is renewed (default 10s, a quarter of its duration)")
    p.add_argument("--node-status-update-frequency", type=flags.parse_duration, default=60.0, metavar="DURATION",
                   help="how often node status is written when nothing changed (default 1m; a change of "
                        "capacity or readiness is written at once)")
    p.add_argument("--dependency-gc-delay", type=float, default=10.0, metavar="SECONDS",
                   help="how long a lower ConfigMap/Secret/PVC/ServiceAccount copy stays after its last pod is gone, "
                        "so a Recreate rollout does not lose it between old and new pods (default 10)")
    g = p.add_argument_group("capacity profile (for `tensile scheduler`)")
    g.add_argument("--capacity-profile", nargs="?", const=True, default=None, type=flags.parse_bool, metavar="BOOL",
                   help="publish the lower cluster's capacity profile as the ClusterProfile named after the node, "
                        "so `tensile scheduler` can tell which pods fit a real lower node (default: on, except with "
                        "--node-credentials, which need an RBAC grant on clusterprofiles for system:node:NAME)")
    g.add_argument("--profile-interval", type=flags.parse_duration, default=2.0, metavar="DURATION",
                   help="at most one profile write per interval; written only when it changed (default 2s)")
    g.add_argument("--profile-heartbeat", type=flags.parse_duration, default=60.0, metavar="DURATION",
                   help="rewrite an unchanged profile this often, so the extender can tell it is current (default 1m)")
    g.add_argument("--profile-max-bytes", type=flags.positive_int, default=profile.DEFAULT_MAX_BYTES, metavar="N",
                   help="size bound of a profile; past it, frontier points are dropped, then the smallest node "
                        f"groups (default {profile.DEFAULT_MAX_BYTES})")
    g.add_argument("--profile-ignore-label", action="append", default=[], metavar="KEY",
                   help="a lower node-label key that names single nodes (an instance id); left out of node groups "
                        "like kubernetes.io/hostname and every label whose value is the node's name (repeatable)")
    g.add_argument("--extra-capacity", type=flags.resource_list, action="append", default=[],
                   metavar="RESOURCE=QTY[,RESOURCE=QTY...]",
                   help="a node shape the lower cluster can add by autoscaling (cpu=8,memory=32Gi,nvidia.com/gpu=4): "
                        "added to the Node's capacity and to the profile, so pods that need it are sent down and the "
                        "lower autoscaler sees them (repeatable)")
    flags.add_leader_election_flags(p, default_on=None, component="virtual node",
                                    default_name="the node name",
                                    default_note=" (default: on, except with --node-credentials)")
    logs.add_flags(p)
    p.set_defaults(func=run)


def _port_to_addr(value: str) -> tuple[str, int] | None:
    return flags.parse_bind_address(f":{value}") if value.strip() not in ("", "0") else None


def default_lease_namespace() -> str:
    """The pod's own namespace in a cluster, else kube-system (as kube-controller-manager's)."""
    sa_dir = os.environ.get("TENSILE_SERVICEACCOUNT_DIR", SERVICEACCOUNT_DIR)
    try:
        with open(os.path.join(sa_dir, "namespace")) as f:
            return f.read().strip() or c.KUBE_SYSTEM
    except OSError:
        return c.KUBE_SYSTEM


def leader_election(args: argparse.Namespace) -> LeaderElectionConfig | None:
    """The election to run, or None; ``ValueError`` for flags that cannot work together."""
    enabled = args.leader_elect
    if enabled is None:
        # Node credentials may write only the node's own Lease in kube-node-lease.
        enabled = not args.node_credentials
    if not enabled:
        return None
    if args.node_credentials:
        raise ValueError("--leader-elect needs a Lease outside kube-node-lease, which node credentials may not "
                         "write; run one replica with --node-credentials, or give it other upper credentials")
    config = LeaderElectionConfig(
        namespace=args.leader_elect_resource_namespace or default_lease_namespace(),
        name=args.leader_elect_resource_name or args.nodename,
        identity=flags.leader_identity(),
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return config


def capacity_profile(args: argparse.Namespace) -> bool:
    """On by default; off by default with node credentials, which RBAC must be told to allow it."""
    return bool(args.capacity_profile) if args.capacity_profile is not None else not args.node_credentials


def serving_options(args: argparse.Namespace) -> ServingOptions | None:
    if not args.kubelet_port:
        return None
    return ServingOptions(
        address=args.kubelet_address, port=args.kubelet_port,
        cert_file=args.tls_cert_file, key_file=args.tls_private_key_file, client_ca_file=args.client_ca_file,
        anonymous=args.anonymous_auth, token_webhook=args.authentication_token_webhook,
        authorization_mode=args.authorization_mode, rotate_certificates=args.rotate_server_certificates,
    )


def run(args: argparse.Namespace) -> int:
    try:
        logs.setup(args.log_level, args.log_format)
        election = leader_election(args)
    except ValueError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return 2
    from tensile.controllers import runner, startup

    config = Config(
        node_name=args.nodename,
        cluster_id=args.cluster_id,
        node_labels=dict(args.node_label),
        taint=not args.disable_taint,
        node_ip=args.node_ip,
        kubelet_port=args.kubelet_port,
        kubelet=serving_options(args),
        cert_dir=args.cert_dir,
        metrics_addr=args.metrics_addr,
        lower_unreachable_grace=args.lower_unreachable_grace,
        lease_duration=args.node_lease_duration_seconds,
        lease_renew_interval=args.node_lease_renew_interval,
        status_interval=args.node_status_update_frequency,
        pod_workers=args.pod_sync_workers,
        dependency_workers=args.dependency_workers,
        service_workers=args.service_workers,
        dependency_gc_delay=args.dependency_gc_delay,
        flat_network=args.flat_network,
        node_credentials=args.node_credentials,
        resync=args.full_resync_period,
        startup_timeout=args.startup_timeout,
        leader_election=election,
        capacity_profile=capacity_profile(args),
        profile_interval=args.profile_interval,
        profile_heartbeat=args.profile_heartbeat,
        profile_max_bytes=args.profile_max_bytes,
        profile_ignored_labels=frozenset(args.profile_ignore_label),
        extra_capacity=tuple(args.extra_capacity),
        namespace_mapping=args.namespace_mapping,
        upper_cluster_name=args.upper_cluster_name,
        lower_node_selector=args.lower_node_selector,
    )
    try:
        try:
            selectors.requirements(args.lower_node_selector)
        except selectors.SelectorError as exc:
            raise ValueError(f"--lower-node-selector: {exc}") from exc
        if args.upper_cluster_name and (problem := namespacing.suffix_problem(args.upper_cluster_name)):
            raise ValueError(f"--upper-cluster-name {problem}")
    except ValueError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return 2
    if args.node_credentials and args.flat_network:
        print("tensile virtual-node: --flat-network copies EndpointSlices, which node credentials may not read",
              file=sys.stderr)
        return 2
    if config.profile_heartbeat < config.profile_interval:
        print("tensile virtual-node: --profile-heartbeat must not be shorter than --profile-interval", file=sys.stderr)
        return 2
    if config.lease_renew_interval >= config.lease_duration:
        print("tensile virtual-node: --node-lease-renew-interval must be shorter than --node-lease-duration-seconds",
              file=sys.stderr)
        return 2
    if args.rotate_server_certificates and args.tls_cert_file:
        print("tensile virtual-node: --rotate-server-certificates asks for the certificate that --tls-cert-file "
              "would give: choose one", file=sys.stderr)
        return 2
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        print("tensile virtual-node: give --tls-cert-file and --tls-private-key-file together", file=sys.stderr)
        return 2
    for f in (args.tls_cert_file, args.tls_private_key_file, args.client_ca_file):
        if f and not os.path.isfile(f):
            print(f"tensile virtual-node: {f} does not exist", file=sys.stderr)
            return 2
    for f in (args.kubeconfig, args.client_kubeconfig):
        if f and not kubeconfig_exists(f):
            print(f"tensile virtual-node: kubeconfig {f} does not exist", file=sys.stderr)
            return 2
    try:
        return asyncio.run(runner.run(
            config, args.kubeconfig, args.client_kubeconfig, (args.qps, args.burst, args.client_qps, args.client_burst)
        ))
    except startup.StartupError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return exc.code
    except ApiError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("tensile virtual-node: caches did not sync in time; is each apiserver reachable?", file=sys.stderr)
        return 1
    except ServingError as exc:
        print(f"tensile virtual-node: {exc}", file=sys.stderr)
        return 1
