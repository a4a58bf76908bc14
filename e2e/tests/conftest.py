"""Make the e2e fixtures and the failure hook available to every test under e2e/tests."""

from e2e.fixtures import (  # noqa: F401 - pytest finds fixtures and hooks by name
    cluster_pair,
    federation,
    make_cluster,
    make_virtual_node,
    pytest_runtest_makereport,
)
