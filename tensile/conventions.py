"""Every label, annotation, taint and finalizer name tensile reads or writes.

The Tensile Kube names are kept verbatim so existing users can switch. Names
new in tensile carry the ``tensile.io/`` prefix. No other module spells any
of these strings.
"""

from __future__ import annotations

from typing import Final

# --- Tensile Kube compatible --------------------------------------------------
VIRTUAL_NODE_TYPE_LABEL: Final = "type"
VIRTUAL_NODE_TYPE_VALUE: Final = "virtual-kubelet"
ROLE_LABEL: Final = "kubernetes.io/role"
ROLE_VALUE: Final = "agent"
CLUSTER_ID_LABEL: Final = "clusterID"

PROVIDER_TAINT_KEY: Final = "virtual-kubelet.io/provider"
PROVIDER_TAINT_VALUE: Final = "tensile"
PROVIDER_TAINT_EFFECT: Final = "NoSchedule"

VIRTUAL_POD_LABEL: Final = "virtual-pod"
VIRTUAL_POD_VALUE: Final = "true"

CLUSTER_SELECTOR_ANNOTATION: Final = "clusterSelector"
GLOBAL_ANNOTATION: Final = "global"
GLOBAL_VALUE: Final = "true"

UNSCHEDULABLE_NODE_ANNOTATION: Final = "unschedulable-node"
CREATED_BY_DESCHEDULER_LABEL: Final = "create-by-descheduler"

# --- Well-known Kubernetes names ---------------------------------------------
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
OS_LABEL: Final = "kubernetes.io/os"
ARCH_LABEL: Final = "kubernetes.io/arch"
NOT_READY_TAINT: Final = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT: Final = "node.kubernetes.io/unreachable"
UNSCHEDULABLE_TAINT: Final = "node.kubernetes.io/unschedulable"
NODE_LEASE_NAMESPACE: Final = "kube-node-lease"
KUBE_SYSTEM: Final = "kube-system"
SERVICE_ACCOUNT_TOKEN_PREFIX: Final = "kube-api-access-"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
ENDPOINTSLICE_MANAGED_BY_LABEL: Final = "endpointslice.kubernetes.io/managed-by"
LAST_APPLIED_ANNOTATION: Final = "kubectl.kubernetes.io/last-applied-configuration"
#: Annotations that controllers of the *upper* cluster wrote about upper state
#: (PV binding, provisioning, SA tokens). Copied down they lie: a PVC with
#: ``pv.kubernetes.io/bind-completed`` is declared Lost by the lower PV controller.
CONTROLLER_ANNOTATION_PREFIXES: Final = (
    "pv.kubernetes.io/",
    "volume.kubernetes.io/",
    "volume.beta.kubernetes.io/",
    "kubernetes.io/service-account.",
    "control-plane.alpha.kubernetes.io/",
    "endpoints.kubernetes.io/",
)

# --- New in tensile -------------------------------------------------------------
PREFIX: Final = "tensile.io/"
MANAGED_BY_VALUE: Final = "tensile"
#: On every lower object: the upper cluster that owns it.
OWNER_CLUSTER_LABEL: Final = PREFIX + "upper-cluster"
#: On every lower object: the virtual node that owns it.
OWNER_NODE_LABEL: Final = PREFIX + "virtual-node"
#: On lower pods: the upper pod's UID.
UPPER_UID_ANNOTATION: Final = PREFIX + "upper-uid"
#: On lower objects in ``--namespace-mapping suffixed`` mode: the upper namespace they came from.
UPPER_NAMESPACE_ANNOTATION: Final = PREFIX + "upper-namespace"
#: On lower pods: the clusters the pod came through, oldest first, as kube-system UIDs joined by
#: commas (the cluster it was created in, ..., the cluster the copy is in). A virtual node leading
#: to a cluster in the chain is never a place for it: that is what keeps a ring of clusters safe.
ORIGIN_CHAIN_ANNOTATION: Final = PREFIX + "origin-chain"
#: On virtual nodes: the kube-system UID of the lower cluster they lead to (``clusterID`` may be a
#: name the operator chose; this is always the UID, the identity origin chains record).
LOWER_CLUSTER_LABEL: Final = PREFIX + "lower-cluster"
#: On lower dependencies: which upper object revision was copied.
UPPER_RESOURCE_VERSION_ANNOTATION: Final = PREFIX + "upper-resource-version"
#: On lower namespaces tensile created.
NAMESPACE_CREATED_LABEL: Final = PREFIX + "created-namespace"
#: On upper pods, beside ``clusterSelector``: the webhook's HMAC of it, so a later admission can
#: tell the webhook's annotation from one the pod's author wrote.
CLUSTER_SELECTOR_SIGNATURE_ANNOTATION: Final = PREFIX + "cluster-selector-signature"

#: managed-by value on EndpointSlices tensile copies (``--flat-network``), so the
#: lower EndpointSlice controller leaves them alone.
ENDPOINTSLICE_MANAGER: Final = "tensile.io"
#: Component name in Events.
EVENT_COMPONENT: Final = "tensile-virtual-node"
#: On lower pods: which label and annotation keys tensile wrote (JSON), so an update removes only
#: those and never what the lower cluster added (Istio, Calico, Multus annotations).
MANAGED_METADATA_ANNOTATION: Final = PREFIX + "managed-metadata"
#: Condition on upper pods without a flat pod network; its message is the lower pod IP, kept out of
#: ``status.podIP`` because upper clients cannot reach it. A condition, not an annotation: it rides
#: the status patch (no extra write) and needs no right to change pods, only their status.
LOWER_POD_CONDITION: Final = PREFIX + "LowerPodIP"
#: Deprecated twins of the os/arch labels; kubelets still set them and old manifests select on them.
BETA_OS_LABEL: Final = "beta.kubernetes.io/os"
BETA_ARCH_LABEL: Final = "beta.kubernetes.io/arch"
#: On mirror PersistentVolumes upstairs: the name of the lower volume they stand for.
LOWER_VOLUME_ANNOTATION: Final = PREFIX + "lower-volume"
#: The capacity profile a virtual node publishes upstairs for the scheduler extender: a
#: cluster-scoped ``ClusterProfile`` named after the virtual node (see ``tensile.clusterprofile``).
PROFILE_GROUP: Final = "tensile.io"
PROFILE_VERSION: Final = "v1alpha1"
PROFILE_KIND: Final = "ClusterProfile"
PROFILE_PLURAL: Final = "clusterprofiles"
PROFILE_SHORT_NAME: Final = "cprof"
#: Component name of the scheduler extender (User-Agent, logs).
SCHEDULER_COMPONENT: Final = "tensile-scheduler"
