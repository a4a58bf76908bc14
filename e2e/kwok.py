"""KWOK configuration: fake nodes and the stages that move them and their pods.

Since v0.8 kwok ships no built-in stages, so a cluster without these would
have nodes that never turn Ready and pods that stay Pending. The stages here
are the minimum a Kubernetes user expects from a node: it becomes Ready, its
pods become Running with an IP, and deleted pods go away.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

#: kwok manages only nodes carrying this annotation, so virtual nodes
#: registered by tensile in the same cluster are never touched by kwok.
MANAGED_ANNOTATION = "kwok.x-k8s.io/node"
MANAGED_VALUE = "fake"

_NODE_INITIALIZE = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}
{{ YAML . 0 }}
{{ else }}
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
{{ end }}
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: "32"
  memory: 256Gi
  pods: "110"
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: "32"
  memory: 256Gi
  pods: "110"
{{ end }}
nodeInfo:
  architecture: {{ or (index .metadata.labels "kubernetes.io/arch") "amd64" | Quote }}
  operatingSystem: {{ or (index .metadata.labels "kubernetes.io/os") "linux" | Quote }}
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
phase: Running
"""

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


#: Pods labelled with this key get a life other than "Running at once", for tests of what tensile
#: does when a lower pod fails, finishes or takes its time to stop:
#: - ``complete``: the containers exit with the code in annotation ``e2e.tensile.io/exit-code``
#:   (default 0), so the pod ends Succeeded or Failed;
#: - ``image-pull-failure``: the containers wait with ErrImagePull, as with an image that does not exist;
#: - ``graceful``: runs, and once deleted stays until its deletionTimestamp (its grace period) passes.
SIMULATE_LABEL = "e2e.tensile.io/simulate"
EXIT_CODE_ANNOTATION = "e2e.tensile.io/exit-code"
_SIMULATE_KEY = f'.metadata.labels["{SIMULATE_LABEL}"]'

def _not_ready_template(prelude: str, reason: str, state: str, phase: str) -> str:
    """A pod status whose containers are not ready: ``state`` is each container's state (YAML)."""
    return f"""\
{{{{ $now := Now }}}}
{prelude}
conditions:
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "True"
  type: Initialized
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  reason: {reason}
  type: Ready
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  reason: {reason}
  type: ContainersReady
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "True"
  type: PodScheduled
containerStatuses:
{{{{ range .spec.containers }}}}
- image: {{{{ .image | Quote }}}}
  name: {{{{ .name | Quote }}}}
  ready: false
  started: false
  restartCount: 0
  state:
{state}
{{{{ end }}}}
hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
podIP: {{{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}}}
phase: {phase}
startTime: {{{{ $now | Quote }}}}
"""


_POD_COMPLETE = _not_ready_template(
    '{{ $code := "0" }}{{ with .metadata.annotations }}{{ with index . "' + EXIT_CODE_ANNOTATION
    + '" }}{{ $code = . }}{{ end }}{{ end }}',
    "PodCompleted",
    """\
    terminated:
      exitCode: {{ $code }}
      reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}""",
    '{{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}',
)

_POD_IMAGE_PULL_FAILURE = _not_ready_template(
    "",
    "ContainersNotReady",
    """\
    waiting:
      reason: ErrImagePull
      message: {{ printf "failed to pull and unpack image %q: not found" .image | Quote }}""",
    "Pending",
)


def _stage(name: str, kind: str, match: list[dict[str, Any]], nxt: dict[str, Any],
           delay: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": match},
        "next": nxt,
    }
    if delay:
        spec["delay"] = delay
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _simulated(*modes: str) -> dict[str, Any]:
    return {"key": _SIMULATE_KEY, "operator": "In", "values": list(modes)}


def _not_simulated(*modes: str) -> dict[str, Any]:
    return {"key": _SIMULATE_KEY, "operator": "NotIn", "values": list(modes)}


def stages() -> list[dict[str, Any]]:
    return [
        _stage(
            "node-initialize", "Node",
            [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
              "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_INITIALIZE},
        ),
        _stage(
            "pod-ready", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
             {"key": ".status.podIP", "operator": "DoesNotExist"},
             _not_simulated("complete", "image-pull-failure")],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-complete", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
             {"key": ".status.podIP", "operator": "DoesNotExist"},
             _simulated("complete")],
            {"statusTemplate": _POD_COMPLETE},
            delay={"durationMilliseconds": 1000},
        ),
        _stage(
            "pod-image-pull-failure", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
             {"key": ".status.podIP", "operator": "DoesNotExist"},
             _simulated("image-pull-failure")],
            {"statusTemplate": _POD_IMAGE_PULL_FAILURE},
        ),
        _stage(
            "pod-delete", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}, _not_simulated("graceful")],
            {"finalizers": {"empty": True}, "delete": True},
        ),
        _stage(
            "pod-delete-graceful", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}, _simulated("graceful")],
            {"finalizers": {"empty": True}, "delete": True},
            delay={"durationMilliseconds": 0, "durationFrom": {"expressionFrom": ".metadata.deletionTimestamp"}},
        ),
    ]


#: kwok serves every fake node's resource metrics under one port, a path per node; metrics-server
#: reads the path from this node annotation.
METRICS_PATH_ANNOTATION = "metrics.k8s.io/resource-metrics-path"
#: Pod annotations that set the usage kwok simulates (kwok's own ``usage-from-annotation`` rule).
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"
USAGE_MEMORY_ANNOTATION = "kwok.x-k8s.io/usage-memory"


@dataclasses.dataclass(frozen=True)
class DebugFiles:
    """What kwok's kubelet API serves for every fake pod: logs, attach output, exec, port-forward."""

    logs: str
    previous_logs: str
    attach: str
    exec_dir: str
    #: port-forward connects to this local TCP port (an echo server in the harness).
    forward_port: int


def _rule(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _metric(name: str, dimension: str, kind: str, value: str, labels: tuple[str, ...]) -> dict[str, Any]:
    sources = {"container": "container.name", "namespace": "pod.metadata.namespace", "pod": "pod.metadata.name"}
    return {"name": name, "dimension": dimension, "kind": kind, "help": name, "value": value,
            "labels": [{"name": label, "value": sources[label]} for label in labels]}


def debugging_rules(files: DebugFiles) -> list[dict[str, Any]]:
    """kwok's ClusterLogs/Attach/Exec/PortForward rules, and usage plus ``/metrics/resource`` for metrics-server."""
    container = ("container", "namespace", "pod")
    pod = ("namespace", "pod")
    usage = {
        resource: {"expression": f'"{annotation}" in pod.metadata.annotations ? '
                                 f'Quantity(pod.metadata.annotations["{annotation}"]) : Quantity("{default}")'}
        for resource, annotation, default in (("cpu", USAGE_CPU_ANNOTATION, "1m"),
                                              ("memory", USAGE_MEMORY_ANNOTATION, "1Mi"))
    }
    return [
        _rule("ClusterLogs", "logs", {"logs": [{"logsFile": files.logs, "previousLogsFile": files.previous_logs,
                                                 "follow": True}]}),
        _rule("ClusterAttach", "attach", {"attaches": [{"logsFile": files.attach}]}),
        _rule("ClusterExec", "exec", {"execs": [{"local": {"workDir": files.exec_dir}}]}),
        _rule("ClusterPortForward", "port-forward", {"forwards": [
            {"target": {"address": "127.0.0.1", "port": files.forward_port}}]}),
        _rule("ClusterResourceUsage", "usage-from-annotation", {"usages": [{"usage": usage}]}),
        _rule("Metric", "metrics-resource", {
            "path": "/metrics/nodes/{nodeName}/metrics/resource",
            "metrics": [
                _metric("scrape_error", "node", "gauge", "0", ()),
                _metric("container_start_time_seconds", "container", "gauge", "pod.SinceSecond()", container),
                _metric("container_cpu_usage_seconds_total", "container", "counter",
                        'pod.CumulativeUsage("cpu", container.name)', container),
                _metric("container_memory_working_set_bytes", "container", "gauge",
                        'pod.Usage("memory", container.name)', container),
                _metric("pod_cpu_usage_seconds_total", "pod", "counter", 'pod.CumulativeUsage("cpu")', pod),
                _metric("pod_memory_working_set_bytes", "pod", "gauge", 'pod.Usage("memory")', pod),
                _metric("node_cpu_usage_seconds_total", "node", "counter", 'node.CumulativeUsage("cpu")', ()),
                _metric("node_memory_working_set_bytes", "node", "gauge", 'node.Usage("memory")', ()),
            ],
        }),
    ]


def config_yaml(pod_cidr: str, node_ip: str, debug: DebugFiles | None = None) -> str:
    """The multi-document file given to ``kwok --config``."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {
                "cidr": pod_cidr,
                "nodeIP": node_ip,
                "manageAllNodes": False,
                "manageNodesWithAnnotationSelector": f"{MANAGED_ANNOTATION}={MANAGED_VALUE}",
                "nodeLeaseDurationSeconds": 40,
                # Defaults kwok documents but does not apply when a config file is given.
                "nodeLeaseParallelism": 4,
                "nodePlayStageParallelism": 4,
                "podPlayStageParallelism": 8,
                # Logs, exec, attach and port-forward of fake pods (off by default when a config is given).
                "enableDebuggingHandlers": debug is not None,
            },
        },
        *stages(),
        *(debugging_rules(debug) if debug is not None else []),
    ]
    return str(yaml.safe_dump_all(docs, sort_keys=False))


@dataclasses.dataclass
class NodeSpec:
    """A fake node: its name, capacity, labels and taints."""

    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    taints: list[dict[str, str]] = dataclasses.field(default_factory=list)
    extended: dict[str, str] = dataclasses.field(default_factory=dict)
    arch: str = "amd64"
    unschedulable: bool = False

    def manifest(self) -> dict[str, Any]:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, **self.extended}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {MANAGED_ANNOTATION: MANAGED_VALUE, "node.alpha.kubernetes.io/ttl": "0",
                                METRICS_PATH_ANNOTATION: f"/metrics/nodes/{self.name}/metrics/resource"},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": self.arch,
                    # A kubelet still sets the deprecated beta twins; old manifests select on them.
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": self.arch,
                    "type": "kwok",
                    **self.labels,
                },
            },
            "spec": {"taints": list(self.taints), "unschedulable": self.unschedulable},
            # Only an address the apiserver can dial: it tries Hostname first and a fake node's name
            # does not resolve (kwok would add one when none is given).
            "status": {"capacity": resources, "allocatable": resources,
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
        }
