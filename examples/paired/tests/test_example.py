"""A user's end-to-end test: a pod created upstairs runs in the lower cluster. Only tensile's pytest fixtures."""

import time

import pytest


@pytest.mark.tensile(nodes="2x cpu=8,memory=32Gi,labels=zone=a")
def test_a_pod_bursts_into_the_lower_cluster(tensile_pair):
    pod = {"metadata": {"name": "hello"}, "spec": {
        "nodeName": tensile_pair.virtual_node.name, "containers": [{"name": "app", "image": "nginx"}]}}
    tensile_pair.upper.core.create_namespaced_pod("default", pod)
    deadline = time.monotonic() + 60
    while tensile_pair.upper.core.read_namespaced_pod("hello", "default").status.phase != "Running":
        assert time.monotonic() < deadline, "the pod never ran"
        time.sleep(0.5)
    copy = tensile_pair.lower.core.read_namespaced_pod("hello", "default")
    assert copy.status.phase == "Running" and copy.spec.node_name.startswith("lower-")
