"""The ``KubeSchedulerConfiguration`` that wires kube-scheduler to ``tensile scheduler``.

Two shapes (``tensile scheduler config``):

- into the default profile: every pod goes through the extender; pods that do not target a
  virtual node pass untouched, so only placement on virtual nodes changes;
- ``--as-profile NAME``: a second profile ``NAME`` beside ``default-scheduler``, for pods that
  set ``schedulerName: NAME``. kube-scheduler shares its extenders among all its profiles, so the
  extender is given a URL prefix ``.../profile/NAME`` and acts only on that profile's pods.

Defaults chosen for an SRE: ``nodeCacheCapable`` (kube-scheduler sends node names, not whole
Nodes), ``ignorable`` (an extender outage degrades to today's placement instead of stopping all
scheduling), a 5 s timeout and weight 1.

Pure: a dict.
"""

from __future__ import annotations

from typing import Any

JSONObject = dict[str, Any]

API_VERSION = "kubescheduler.config.k8s.io/v1"
DEFAULT_SCHEDULER = "default-scheduler"


def scheduler_config(url: str, *, as_profile: str | None = None, weight: int = 1, node_cache_capable: bool = True,
                     ignorable: bool = True, timeout: str = "5s", kubeconfig: str | None = None,
                     ca_file: str | None = None) -> JSONObject:
    """Raises ``ValueError`` for a URL or profile name kube-scheduler would refuse."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url must be an http:// or https:// URL, not {url!r}")
    if weight < 1:
        raise ValueError("--weight must be at least 1 (kube-scheduler requires a positive weight)")
    if as_profile == DEFAULT_SCHEDULER:
        raise ValueError(f"--as-profile names a second profile; {DEFAULT_SCHEDULER} is the first one")
    prefix = url.rstrip("/") + (f"/profile/{as_profile}" if as_profile else "")
    extender: JSONObject = {
        "urlPrefix": prefix,
        "filterVerb": "filter",
        "prioritizeVerb": "prioritize",
        "weight": weight,
        "nodeCacheCapable": node_cache_capable,
        "enableHTTPS": url.startswith("https://"),
        "httpTimeout": timeout,
        "ignorable": ignorable,
    }
    if ca_file and url.startswith("https://"):
        extender["tlsConfig"] = {"caFile": ca_file}
    config: JSONObject = {"apiVersion": API_VERSION, "kind": "KubeSchedulerConfiguration"}
    if kubeconfig:
        config["clientConnection"] = {"kubeconfig": kubeconfig}
    if as_profile:
        config["profiles"] = [{"schedulerName": DEFAULT_SCHEDULER}, {"schedulerName": as_profile}]
    config["extenders"] = [extender]
    return config
