"""Mutating admission webhook: lets pods opted in with ``virtual-pod=true`` schedule onto virtual nodes.

``mutate`` holds the pure rules, ``review`` the AdmissionReview handling, ``server`` the HTTPS
endpoint, ``certs`` and ``install`` the set-up, and ``cli`` the ``tensile webhook`` subcommand.
"""
