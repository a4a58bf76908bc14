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
