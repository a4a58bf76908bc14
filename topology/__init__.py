"""``tensile topology``: the clusters, virtual nodes and loops among a set of clusters."""
