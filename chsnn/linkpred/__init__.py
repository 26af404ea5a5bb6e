"""Cannistraci-Hebb link prediction on length-3 paths of sparse bipartite layers.

A sparse layer with mask ``M`` of shape ``(n_out, n_in)`` is the bipartite graph
with input nodes X, output nodes Y and a link wherever ``M[y, x]`` is set
(CH-SPEC section 1). For an absent link ``(x, y)`` every L3 path
``x - y1 - x1 - y`` contributes a path term that is the product of one factor
per intermediate node (CH-SPEC section 2):

    f(z, endpoint) = sqrt(h(deg(z), c)),   c = common neighbours of z and the
                                           far endpoint of the path
    RA:    h = 1 / deg               CH2:  h = (1 + di) / (1 + de)
    CH3:   h = 1 / (1 + de)          CH3.1: h = 1 / (1 / (1 + di) + de)

with ``di = c`` and ``de = deg - 1 - c`` (the bipartite reduction of the local
community's internal and external degrees).

Exact scores are computed as one sparse-sparse product over *wedges* (pairs
of links sharing a node): ``S^T = P @ Q`` where ``P`` (outputs by middle
links) holds the factor of y1 and ``Q`` (middle links by inputs) the factor of
x1. Its work is the number of L3 paths; beyond writing the dense result,
nothing scales with the dense layer size (co-neighbour counting uses a dense
histogram only while it is small, and sorting beyond).

Its wedge tables grow with density squared, so dense layers (CHT-Conv's VGG16
at 50% sparsity) are scored by a second exact kernel, ``dense``, that groups
the L3 paths by their middle node x1 (an input node) and works in blocks of
such nodes, with dense matrix products:

    S^T[N(x1), :] += (F^T[N(x1), N(x1)] @ M[N(x1), :]) * G[x1, :]

``F`` (outputs by outputs) holds the factors of y1 relative to y, ``G`` the
factors of x1 relative to x, computed block by block from co-neighbour counts
``M[:, block]^T @ M``. Its memory is the dense layer (mask, result) plus the
output side's n_out^2 factors plus one block: it does not grow with density.
Both kernels compute the same sums, equal to rounding (float64).

The node approximation (L3n) likewise has a sparse kernel over the wedge
tables and a ``dense`` one of blocked matrix products in O(n_in x n_out) memory.

Which kernel runs is chosen per call: the fastest by a cost model among those
whose peak memory fits the budget (``memory_gb``, else $CHSNN_LINKPRED_MEMORY_GB,
else 0.7 x MemAvailable or CUDA free memory). ``method="auto"`` runs the exact
scores when any exact kernel fits and the node approximation otherwise. The
choice of the last call in this thread is ``last_choice()``.

The modules: ``scores`` (the API and the dispatch to a kernel), ``wedge`` (the
wedge kernels) with ``spgemm`` (their sparse products), ``dense`` (the dense
kernels), ``planner`` (memory estimate, budget, cost model, kernel choice).
"""

from chsnn.linkpred.dense import dense_exact, dense_node
from chsnn.linkpred.planner import MEMORY_ENV, LinkPredictionMemoryError, estimate_memory, kernel_plans, wedge_counts  # noqa: F401  (re-exported)
from chsnn.linkpred.scores import (
    KERNELS,
    METHODS,
    MODELS,
    ch_scores,
    ch_scores_batched,
    count_l3_paths,
    last_choice,
    node_terms,
    take_choice,
)
from chsnn.linkpred.spgemm import spgemm_dense_cpu, spgemm_dense_torch
from chsnn.linkpred.wedge import DENSE_COUNT_BINS, INT32_LIMIT, Wedges

# Names of the single-module chsnn.linkpred that the tests (and code written
# against it) use. The same objects, but read-only here: the kernels read the
# tuning constants and spgemm_dense_cpu from their own modules
# (chsnn.linkpred.wedge, chsnn.linkpred.spgemm), so a patch must go there.
_node_terms = node_terms
_dense_exact, _dense_node = dense_exact, dense_node
_Wedges, _wedge_counts, _plans = Wedges, wedge_counts, kernel_plans
_spgemm_dense_cpu, _spgemm_dense_torch = spgemm_dense_cpu, spgemm_dense_torch
_DENSE_COUNT_BINS, _INT32_LIMIT = DENSE_COUNT_BINS, INT32_LIMIT

__all__ = [
    "MODELS",
    "METHODS",
    "KERNELS",
    "ch_scores",
    "ch_scores_batched",
    "count_l3_paths",
    "last_choice",
    "take_choice",
    "LinkPredictionMemoryError",
]
