"""Mutating admission webhook: lets pods opted in with ``virtual-pod=true`` schedule onto virtual nodes.

``mutate`` holds the pure rules (with ``signing``, which tells the webhook's own annotation from a
hand-written one, and ``reinvocation``, which folds in what later webhooks added), ``review`` the
AdmissionReview handling, ``server`` the HTTPS endpoint, ``certs`` and ``install`` the set-up, and
``cli`` the ``tensile webhook`` subcommand.
"""
