"""Make the e2e fixtures, the failure hook and the Secret-leak check available to every test under e2e/tests."""

from e2e.fixtures import (  # noqa: F401 - pytest finds fixtures and hooks by name
    cluster_pair,
    federation,
    make_cluster,
    make_virtual_node,
    pytest_runtest_makereport,
)
from e2e.secretscan import (  # noqa: F401 - after every test: no Secret value in any log or Event
    pytest_runtest_call,
    secret_values_stay_out_of_logs_at_module_end,
)
