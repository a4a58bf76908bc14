"""The mesh as a picture (PNG, with matplotlib) and as Graphviz DOT text.

Clusters sit on a circle, so a ring reads as a ring and ten clusters stay apart. Each virtual node is
an arrow from the cluster it is a node of to the cluster it leads to, curved so that A -> B and
B -> A (and two pools of one lower cluster) never overlap, labelled with its name and the pods placed
through it. Ring edges are drawn thicker, NotReady ones red and dashed, clusters not among the given
kubeconfigs with a dashed outline.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from topology import graph

READY_COLOUR = "#2b7a3d"
NOT_READY_COLOUR = "#c0392b"
CLUSTER_COLOUR = "#dbe9f6"


def write_png(g: nx.MultiDiGraph, out: Path, title: str = "tensile mesh") -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    n = max(g.number_of_nodes(), 1)
    size = 6.0 + 0.6 * n
    fig, ax = plt.subplots(figsize=(size, size))
    ax.set_axis_off()
    ax.set_title(title, fontsize=14)
    order = sorted(g.nodes, key=lambda u: graph.name_of(g, u))
    pos = {u: (math.cos(2 * math.pi * i / n + math.pi / 2), math.sin(2 * math.pi * i / n + math.pi / 2))
           for i, u in enumerate(order)}
    ring_edges = {(r[i], r[(i + 1) % len(r)]) for r in graph.cycles(g) for i in range(len(r))}
    radius = 0.15 if n <= 6 else 0.12
    # Arrows stop at the clusters' rims: their radius in points (the axes span 2.7 data units).
    rim = radius * size * 72 / 2.7
    seen: dict[tuple[str, str], int] = {}
    for u, v, name, data in sorted(g.edges(keys=True, data=True)):
        vn: graph.VirtualNode = data["vnode"]
        k = seen.get((u, v), 0)
        seen[(u, v)] = k + 1
        rad = 0.18 + 0.12 * k
        (x1, y1), (x2, y2) = pos[u], pos[v]
        colour = READY_COLOUR if vn.ready else NOT_READY_COLOUR
        arrow = FancyArrowPatch((x1, y1), (x2, y2), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                mutation_scale=18, lw=3.0 if (u, v) in ring_edges else 1.6, color=colour,
                                linestyle="-" if vn.ready else "--", shrinkA=rim, shrinkB=rim + 2)
        ax.add_patch(arrow)
        # The midpoint of arc3's quadratic curve: halfway to its control point, off the chord.
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        dx, dy = x2 - x1, y2 - y1
        lx, ly = mx + rad / 2 * dy, my - rad / 2 * dx
        ax.text(lx, ly, f"{name}\n{vn.pods} pod(s){'' if vn.ready else ' NotReady'}", fontsize=9, ha="center",
                va="center", color=colour, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.8})
    for u in order:
        cl: graph.Cluster = g.nodes[u]["cluster"]
        x, y = pos[u]
        circle = matplotlib.patches.Circle((x, y), radius, fc=CLUSTER_COLOUR if cl.known else "white", ec="#1f4e79",
                                           lw=2, linestyle="-" if cl.known else "--", zorder=3)
        ax.add_patch(circle)
        detail = f"{cl.real_nodes} node{'' if cl.real_nodes == 1 else 's'}" if cl.known else "not given"
        ax.text(x, y + 0.02, cl.name, ha="center", va="center", fontsize=11, zorder=4, weight="bold")
        ax.text(x, y - 0.045, detail, ha="center", va="center", fontsize=8, zorder=4)
    ax.text(0, -1.3, "arrow: a virtual node, from the cluster it is a node of to the cluster it leads to; "
                     "thick: part of a ring; red dashed: NotReady", ha="center", fontsize=8, color="#555555")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write(g: nx.MultiDiGraph, out: Path) -> list[Path]:
    """The picture at ``out`` (a .png) and its DOT text beside it; the paths written."""
    dot_path = out.with_suffix(".dot")
    dot_path.write_text(graph.dot(g))
    written = [dot_path]
    if out.suffix.lower() == ".png":
        write_png(g, out)
        written.insert(0, out)
    return written
