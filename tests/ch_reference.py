"""A slow, obviously correct CH L3 reference, written from CH-SPEC section 2.

For every absent link (x, y) it enumerates the L3 paths x - y1 - x1 - y,
builds the local community (all intermediate nodes), and takes each
intermediate node's internal degree (links to other LC nodes) and external
degree (deg - internal - links to x or y) from that explicit set, without the
bipartite shortcuts the fast code uses.
"""

from __future__ import annotations

import math

import numpy as np


def _path_term(model: str, y1: tuple, x1: tuple) -> float:
    # Each argument is (deg, di, de) of one intermediate node.
    (dy, iy, ey), (dx, ix, ex) = y1, x1
    if model == "RA":
        return 1.0 / math.sqrt(dy * dx)
    if model == "CH2":
        return math.sqrt((1 + iy) * (1 + ix)) / math.sqrt((1 + ey) * (1 + ex))
    if model == "CH3":
        return 1.0 / math.sqrt((1 + ey) * (1 + ex))
    if model == "CH3.1":
        return 1.0 / math.sqrt((1.0 / (1 + iy) + ey) * (1.0 / (1 + ix) + ex))
    raise ValueError(model)


def reference_scores(mask, model: str = "CH3") -> np.ndarray:
    """Exact scores of a (n_out, n_in) 0/1 mask; linked positions are 0."""
    m = np.asarray(mask).astype(bool)
    n_out, n_in = m.shape
    # Nodes: ("x", i) inputs and ("y", j) outputs; neighbours as sets.
    nbr = {("x", i): {("y", j) for j in range(n_out) if m[j, i]} for i in range(n_in)}
    nbr.update({("y", j): {("x", i) for i in range(n_in) if m[j, i]} for j in range(n_out)})
    scores = np.zeros((n_out, n_in))
    for j in range(n_out):
        for i in range(n_in):
            if m[j, i]:
                continue
            x, y = ("x", i), ("y", j)
            paths = [(y1, x1) for y1 in nbr[x] for x1 in nbr[y1] if x1 != x and y in nbr[x1]]
            if not paths:
                continue
            community = {node for path in paths for node in path}

            def degrees(z):
                deg = len(nbr[z])
                internal = len(nbr[z] & community)
                to_ends = (x in nbr[z]) + (y in nbr[z])
                return deg, internal, deg - internal - to_ends

            scores[j, i] = sum(_path_term(model, degrees(y1), degrees(x1)) for y1, x1 in paths)
    return scores


def reference_node_scores(mask, model: str = "CH3") -> np.ndarray:
    """L3n of CH-SPEC section 2: a sum of per-node terms h(z) over the
    intermediate nodes adjacent to an endpoint that share a neighbour with the
    other endpoint; h(z) is the path term with both nodes equal to z."""
    m = np.asarray(mask).astype(bool)
    n_out, n_in = m.shape
    scores = np.zeros((n_out, n_in))
    for j in range(n_out):
        for i in range(n_in):
            if m[j, i]:
                continue
            total = 0.0
            for x1 in range(n_in):  # x1 in N(y) sharing an output with x
                if m[j, x1] and x1 != i:
                    common = int((m[:, x1] & m[:, i]).sum())
                    if common:
                        deg = int(m[:, x1].sum())
                        node = (deg, common, deg - 1 - common)
                        total += _path_term(model, node, node)
            for y1 in range(n_out):  # y1 in N(x) sharing an input with y
                if m[y1, i] and y1 != j:
                    common = int((m[y1] & m[j]).sum())
                    if common:
                        deg = int(m[y1].sum())
                        node = (deg, common, deg - 1 - common)
                        total += _path_term(model, node, node)
            scores[j, i] = total
    return scores
