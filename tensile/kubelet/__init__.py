"""The kubelet API of a virtual node: logs, exec, attach, port-forward and stats, relayed to the lower cluster."""
