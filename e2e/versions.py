"""The one place where control-plane versions are pinned.

Kubernetes pins the etcd it is tested with in its own go.mod; keep ETCD in
step with that line when bumping KUBERNETES.
"""

from __future__ import annotations

KUBERNETES = "v1.34.4"
ETCD = "v3.6.4"
KWOK = "v0.8.0"
#: Built from its Go module (it publishes images only, no binaries); serves metrics.k8s.io where a test asks.
METRICS_SERVER = "v0.8.0"
#: Built from its Go module like the control plane; renders and lints deploy/chart in the tests.
HELM = "v3.22.0"
#: The minor of the k8s.io/client-go that HELM's go.mod requires (v0.37.x for v3.22.0), stamped as helm's
#: default Kubernetes version the way its Makefile does.
HELM_K8S_MINOR = "37"
