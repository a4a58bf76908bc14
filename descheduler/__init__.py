"""The descheduler (issue 12): moves pods a lower cluster cannot start to another virtual node.

``policy`` holds its pure rules (candidates, exemptions, other targets, budgets);
``tensile.avoidance`` the per-owner avoidance records it writes and the webhook reads;
``controller`` one pass over the caches (evict with a record, recreate a bare pod, dry run).
Not built yet: the ``tensile descheduler`` command, leader election, metrics, the webhook's
reading of the records, and the e2e tests.
"""
