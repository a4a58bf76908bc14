"""The descheduler (issue 12): moves pods a lower cluster cannot start to another virtual node.

Built so far: its pure rules, ``policy`` (candidates, exemptions, other targets, budgets) and
``avoidance`` (the per-owner records and the node-affinity merge). The controller, the
``tensile descheduler`` command and the webhook's use of the records are not built yet.
"""
