"""The mesh as a graph: clusters are vertices, virtual nodes are edges. Pure.

What the discovery found (:class:`Facts`) becomes a networkx ``MultiDiGraph``: an edge
``upper -> lower`` for every virtual node in ``upper`` that leads to ``lower`` (two pools of one
lower cluster are two parallel edges). :func:`cycles` finds the rings and :func:`blocked` says, for
each edge of a ring, which pods the loop rule (``tensile.origin``) stops there.
"""

from __future__ import annotations

import dataclasses

import networkx as nx


@dataclasses.dataclass(frozen=True)
class Cluster:
    uid: str
    name: str
    real_nodes: int = 0
    #: False for a cluster seen only as the target of a virtual node (no kubeconfig given for it).
    known: bool = True


@dataclasses.dataclass(frozen=True)
class VirtualNode:
    name: str
    upper: str  # cluster uid
    lower: str  # cluster uid ("" when the node does not say)
    ready: bool
    pods: int = 0
    #: Copies found downstairs that carry this node's ownership labels (-1: the lower cluster was not read).
    copies: int = -1


@dataclasses.dataclass
class Facts:
    clusters: list[Cluster] = dataclasses.field(default_factory=list)
    virtual_nodes: list[VirtualNode] = dataclasses.field(default_factory=list)


def build(facts: Facts) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph()
    for cl in facts.clusters:
        g.add_node(cl.uid, cluster=cl)
    for vn in facts.virtual_nodes:
        lower = vn.lower or f"unknown:{vn.name}"
        for uid in (vn.upper, lower):
            if uid not in g:
                g.add_node(uid, cluster=Cluster(uid, short(uid) if not uid.startswith("unknown:") else "?",
                                                known=False))
        g.add_edge(vn.upper, lower, key=vn.name, vnode=vn)
    return g


def short(uid: str) -> str:
    return uid[:8]


def name_of(g: nx.MultiDiGraph, uid: str) -> str:
    cluster: Cluster = g.nodes[uid]["cluster"]
    return cluster.name


def cycles(g: nx.MultiDiGraph) -> list[list[str]]:
    """Every ring of clusters (each once, starting at its smallest name), shortest first."""
    found = []
    for cycle in nx.simple_cycles(nx.DiGraph(g)):
        start = min(range(len(cycle)), key=lambda i: name_of(g, cycle[i]))
        found.append(cycle[start:] + cycle[:start])
    return sorted(found, key=lambda cy: (len(cy), [name_of(g, u) for u in cy]))


@dataclasses.dataclass(frozen=True)
class Block:
    """Pods from ``origin`` that came round ``through`` are stopped at the edge ``at -> origin``."""

    origin: str
    at: str
    through: tuple[str, ...]
    virtual_nodes: tuple[str, ...]


def blocked(g: nx.MultiDiGraph, cycle: list[str]) -> list[Block]:
    """For each cluster X of ``cycle``: its pods go round until the edge back into X, which refuses them."""
    out = []
    n = len(cycle)
    for i, start in enumerate(cycle):
        path = tuple(cycle[(i + k) % n] for k in range(n))
        last = path[-1]
        names = tuple(sorted(k for _, v, k in g.out_edges(last, keys=True) if v == start))
        out.append(Block(origin=start, at=last, through=path, virtual_nodes=names))
    return out


def describe(g: nx.MultiDiGraph) -> str:
    """The text report: clusters, virtual nodes (placements, readiness), rings and what the loop rule blocks."""
    lines = [f"clusters ({g.number_of_nodes()}):"]
    for uid in sorted(g.nodes, key=lambda u: name_of(g, u)):
        cl: Cluster = g.nodes[uid]["cluster"]
        detail = f"{cl.real_nodes} real node(s)" if cl.known else "not among the given kubeconfigs"
        lines.append(f"  {cl.name:<16} {short(uid):<9} {detail}")
    edges = sorted(g.edges(keys=True, data=True), key=lambda e: (name_of(g, e[0]), name_of(g, e[1]), e[2]))
    lines.append(f"virtual nodes ({len(edges)}):")
    for u, v, name, data in edges:
        vn: VirtualNode = data["vnode"]
        copies = f", {vn.copies} cop{'y' if vn.copies == 1 else 'ies'} downstairs" if vn.copies >= 0 else ""
        lines.append(f"  {name_of(g, u)} -> {name_of(g, v)}  via {name:<16} {'Ready' if vn.ready else 'NotReady':<9}"
                     f" {vn.pods} pod(s) placed{copies}")
    rings = cycles(g)
    lines.append(f"cycles ({len(rings)}):" if rings else "cycles: none")
    for ring in rings:
        lines.append("  " + " -> ".join(name_of(g, u) for u in [*ring, ring[0]]))
        for b in blocked(g, ring):
            lines.append(f"    pods from {name_of(g, b.origin)} stop in {name_of(g, b.at)}: "
                         f"{', '.join(b.virtual_nodes)} lead(s) back to {name_of(g, b.origin)} "
                         f"(origin chain {' > '.join(name_of(g, u) for u in b.through)})")
    return "\n".join(lines) + "\n"


def _dot_id(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(g: nx.MultiDiGraph) -> str:
    """Graphviz DOT text of the graph; ring edges bold, NotReady ones red and dashed."""
    ring_edges = {(ring[i], ring[(i + 1) % len(ring)]) for ring in cycles(g) for i in range(len(ring))}
    lines = ["digraph tensile {", "  rankdir=LR;", '  node [shape=box, style="rounded"];']
    for uid in sorted(g.nodes):
        cl: Cluster = g.nodes[uid]["cluster"]
        label = f"{cl.name}\\n{cl.real_nodes} real node(s)" if cl.known else f"{cl.name}\\n(not given)"
        lines.append(f"  {_dot_id(uid)} [label={_dot_id(label)}{'' if cl.known else ', style=dashed'}];")
    for u, v, name, data in sorted(g.edges(keys=True, data=True)):
        vn: VirtualNode = data["vnode"]
        attrs = [f"label={_dot_id(f'{name} ({vn.pods} pods)')}"]
        if (u, v) in ring_edges:
            attrs.append("penwidth=2.5")
        if not vn.ready:
            attrs += ["color=red", "style=dashed"]
        lines.append(f"  {_dot_id(u)} -> {_dot_id(v)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
