"""The descheduler (issue 12): moves pods a lower cluster cannot start to another virtual node.

``policy`` holds its pure rules (candidates, exemptions, other targets, budgets);
``tensile.avoidance`` the per-owner avoidance records it writes and the webhook reads.
"""
