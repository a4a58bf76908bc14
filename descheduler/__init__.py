"""The descheduler: moves pods a lower cluster cannot start to another virtual node.

``policy`` holds its pure rules (candidates, exemptions, other targets, budgets, disruption
budgets); ``tensile.avoidance`` the per-owner avoidance records it writes and the webhook
reads; ``controller`` one pass over the caches (evict with a record, recreate a bare pod,
dry run); ``cli`` the ``tensile descheduler`` command with leader election and metrics.
"""
