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
"""

from __future__ import annotations

import math
import os
import threading
from typing import Callable

import numpy as np
import torch

__all__ = ["MODELS", "METHODS", "KERNELS", "ch_scores", "ch_scores_batched", "count_l3_paths", "last_choice", "take_choice", "LinkPredictionMemoryError"]

MODELS = ("RA", "CH2", "CH3", "CH3.1")
# "auto": exact when it fits the memory budget, else the node approximation.
METHODS = ("exact", "node", "auto")
# How the scores are computed (same values, to rounding): sparse products over
# the wedge tables, or blocked dense matrix products.
KERNELS = ("wedge", "dense")

# Count co-neighbours with a dense histogram while it stays below this many
# bins (64 MiB of int32); beyond it, sort-based counting keeps memory at O(wedges).
_DENSE_COUNT_BINS = 1 << 24
# Index arrays are 32-bit below this size.
_INT32_LIMIT = 2**31

# Peak memory model of _scores: bytes per wedge entry (P entries plus Q
# entries) plus bytes per cell of the dense result. Calibrated on CPU with
# ru_maxrss deltas of fresh processes (64-bit indices, which every layer of
# more than a few million wedges gets): exact 60-85 B/wedge (128x450 and
# 256x900 at density 0.5: 85 and 75; 1000x1000 at 0.1: 63; 2000x500 at 0.2:
# 73; 4200x4200 at 0.01, sort-based counting: 61 including the dense result),
# node 46-66 B/wedge (the node method builds the same wedge tables). Rounded
# up for a conservative estimate; cuSPARSE's work buffers on CUDA are not
# measured and the safety fraction below must cover them.
_BYTES_PER_WEDGE = {"exact": 96, "node": 72}
_BYTES_PER_CELL = 24
# Fraction of the available memory the estimate may use.
_MEMORY_FRACTION = 0.7
# Overrides the budget, in GiB (shared machines, tests).
MEMORY_ENV = "CHSNN_LINKPRED_MEMORY_GB"


class LinkPredictionMemoryError(MemoryError):
    """The wedge tables of CH link prediction would not fit in memory."""


def _node_terms(model: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """h(deg, c): the node term of an intermediate node of degree ``deg`` that
    shares ``c`` neighbours with the path's far endpoint."""

    def ra(deg, c):
        return 1.0 / deg

    def ch2(deg, c):
        return (1.0 + c) / (deg - c)

    def ch3(deg, c):
        return 1.0 / (deg - c)

    def ch31(deg, c):
        return 1.0 / (1.0 / (1.0 + c) + (deg - 1.0 - c))

    return {"RA": ra, "CH2": ch2, "CH3": ch3, "CH3.1": ch31}[model]


def _check_names(model: str, method: str, kernel: str | None = None, chunk: int | None = None) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown link predictor model {model!r}; valid models are {', '.join(MODELS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels are {', '.join(KERNELS)}")
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunk must be a whole number >= 1 (middle nodes per block), got {chunk!r}")
    if chunk is not None and kernel == "wedge":
        raise ValueError("chunk applies to the dense kernel only; the wedge kernel has no blocks")


def _as_bool_mask(mask, ndim: int, what: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.dim() != ndim:
        raise ValueError(f"{what} must be a {ndim}-D tensor, got shape {tuple(mask.shape)}")
    if mask.layout != torch.strided:
        mask = mask.to_dense()
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{what} must be binary (bool or 0/1 values); found other values")
    return mask != 0


def ch_scores(
    mask,
    model: str = "CH3",
    method: str = "exact",
    *,
    dtype: torch.dtype | None = None,
    memory_gb: float | None = None,
    kernel: str | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """CH L3 link-prediction scores of every position of a sparse layer's mask.

    Args:
        mask: 2-D bool or 0/1 tensor, any orientation, any device.
        model: ``"RA"``, ``"CH2"``, ``"CH3"`` or ``"CH3.1"``.
        method: ``"exact"`` (path-based, CH-SPEC section 2), ``"node"``
            (the L3n node-based *approximation*, for very large layers) or
            ``"auto"`` (exact if it fits the memory budget, else node).
        dtype: float dtype of the result (default float64).
        memory_gb: memory budget in GiB (default: $CHSNN_LINKPRED_MEMORY_GB,
            else 0.7 x the available host or CUDA memory).
        kernel: force ``"wedge"`` or ``"dense"`` (default: the fastest that
            fits the budget).
        chunk: middle nodes per block of the ``dense`` kernel (default: the
            largest block that fits the budget, capped); implies ``dense``.

    Returns:
        A float tensor of ``mask``'s shape and device. Absent links hold their
        score; linked positions hold 0.

    Raises:
        LinkPredictionMemoryError: no kernel fits the budget, not even with
            blocks of one node.
    """
    _check_names(model, method, kernel, chunk)
    mask = _as_bool_mask(mask, 2, "mask")
    return _scores(mask.unsqueeze(0), model, method, dtype or torch.float64, memory_gb, kernel, chunk)[0]


def ch_scores_batched(
    masks,
    model: str = "CH3",
    method: str = "exact",
    *,
    dtype: torch.dtype | None = None,
    memory_gb: float | None = None,
    kernel: str | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """``ch_scores`` for a stack of independent graphs of one shape (attention
    heads, groups): ``masks`` is ``(B, n_out, n_in)``, the result likewise.
    The wedge kernel scores all graphs in one pass, as one block-diagonal
    graph; the dense kernel one graph after the other."""
    _check_names(model, method, kernel, chunk)
    masks = _as_bool_mask(masks, 3, "masks")
    return _scores(masks, model, method, dtype or torch.float64, memory_gb, kernel, chunk)


_LAST = threading.local()


def last_choice() -> dict:
    """How the last ``ch_scores``/``ch_scores_batched`` call of this thread
    computed its scores: ``linkpred`` (``exact`` or ``node``, the method that
    ran), ``linkpred_kernel`` (``wedge``, ``dense`` or ``none`` for an empty
    mask), ``linkpred_chunk`` (nodes per block of the dense kernel) and
    ``linkpred_est_gb`` (estimated peak); ``{}`` before any call."""
    return dict(getattr(_LAST, "choice", {}))


def take_choice() -> dict:
    """``last_choice()``, then forgotten: for per-layer records, so that a
    layer scored without CH link prediction does not inherit another's."""
    choice = last_choice()
    _LAST.choice = {}
    return choice


def count_l3_paths(mask) -> int:
    """Number of L3 paths ``x - y1 - x1 - y`` over all ordered node pairs
    (the work of the exact method): the sum over links (x1, y1) of
    ``deg(x1) * deg(y1)``."""
    mask = _as_bool_mask(mask, 2, "mask")
    deg_in = mask.sum(0, dtype=torch.int64)
    deg_out = mask.sum(1, dtype=torch.int64)
    y, x = mask.nonzero(as_tuple=True)
    return int((deg_in[x] * deg_out[y]).sum())


class _Wedges:
    """Both wedge tables of a stack of bipartite graphs, in CSR form.

    Node ids are global over the stack (output y of graph b is ``b*n_y + y``,
    input x is ``b*n_x + x``); middle links are numbered input-major.

    ``P`` (outputs by middle links): row y holds one entry per middle link
    (x1, y1) with x1 a neighbour of y; the entry carries the factor of y1 on
    the paths that end at y.
    ``Q`` (middle links by inputs): row (x1, y1) holds one entry per input x
    neighbouring y1; the entry carries the factor of x1 on paths from x.

    Each entry keeps the intermediate node's degree and a key naming the
    (intermediate, far endpoint) pair: the number of entries that share a key
    is that pair's number of common neighbours.
    """

    def __init__(self, masks: torch.Tensor, links):
        B, n_y, n_x = masks.shape
        dev = masks.device
        self.shape = (B, n_y, n_x)
        b, y_loc, x_loc = links  # output-major: sorted by (graph, y, x)
        self.n_links = n_links = y_loc.numel()
        # 32-bit indices halve the memory traffic whenever they fit.
        wide = max(B * n_y, B * n_x, n_links * max(n_y, n_x) ** 2) >= _INT32_LIMIT
        it = torch.int64 if wide else torch.int32
        b, y_loc, x_loc = b.to(it), y_loc.to(it), x_loc.to(it)
        y_of, x_of = b * n_y + y_loc, b * n_x + x_loc
        bt, x_mid, y_mid = (t.to(it) for t in masks.transpose(1, 2).nonzero(as_tuple=True))  # input-major
        x_mid_g, y_mid_g = bt * n_x + x_mid, bt * n_y + y_mid
        self.deg_out = deg_out = torch.bincount(y_of, minlength=B * n_y).to(it)
        self.deg_in = deg_in = torch.bincount(x_mid_g, minlength=B * n_x).to(it)
        out_start = torch.cumsum(deg_out, 0, dtype=it) - deg_out
        in_start = torch.cumsum(deg_in, 0, dtype=it) - deg_in
        zero = torch.zeros(1, dtype=it, device=dev)
        self.mask_crow = torch.cat([out_start, torch.full((1,), n_links, dtype=it, device=dev)])
        self.mask_col = x_of

        # P: for each output-major link (x1, y), the block of middle links of x1.
        lens = deg_in.index_select(0, x_of)
        total = int(lens.sum(dtype=torch.int64))
        self.p_crow = torch.cat([zero, torch.cumsum(lens, 0, dtype=it)]).index_select(0, self.mask_crow)
        self.p_col = mid = _block_positions(in_start.index_select(0, x_of), lens, total)
        self.p_deg = deg_out.index_select(0, y_mid_g).index_select(0, mid)
        # key (y, y1): rows ascending, so the histogram fills cache-friendly
        self.p_key = torch.repeat_interleave(y_of * n_y, lens, output_size=total).add_(y_mid.index_select(0, mid))
        # Q: for each middle link (x1, y1), the inputs linked to y1.
        lens = deg_out.index_select(0, y_mid_g)
        total = int(lens.sum(dtype=torch.int64))
        self.q_crow = torch.cat([zero, torch.cumsum(lens, 0, dtype=it)])
        link = _block_positions(out_start.index_select(0, y_mid_g), lens, total)
        self.q_col = x_of.index_select(0, link)
        self.q_deg = torch.repeat_interleave(deg_in.index_select(0, x_mid_g), lens, output_size=total)
        x_near = self.q_col if B == 1 else x_loc.index_select(0, link)
        self.q_key = torch.repeat_interleave(x_mid_g * n_x, lens, output_size=total).add_(x_near)  # (x1, x)

    def common(self, keys: torch.Tensor, n: int) -> torch.Tensor:
        """Common neighbours of each entry's pair (n: nodes per side per graph)."""
        bins = self.shape[0] * n * n
        if bins <= _DENSE_COUNT_BINS:
            # scatter_add_ into int32 bins is several times faster than bincount
            ones = torch.ones(1, dtype=torch.int32, device=keys.device).expand(keys.numel())
            hist = torch.zeros(bins, dtype=torch.int32, device=keys.device).scatter_add_(0, keys.long(), ones)
            return hist.index_select(0, keys)
        _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        return counts[inverse]


def _block_positions(starts: torch.Tensor, lens: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenated ranges ``[starts[i], starts[i] + lens[i])``, in item order."""
    first = torch.cumsum(lens, 0, dtype=lens.dtype) - lens
    shift = torch.repeat_interleave(starts - first, lens, output_size=total)
    return shift.add_(torch.arange(total, device=lens.device, dtype=lens.dtype))


def _factor_csr(h, crow, col, deg, common, n_cols, dtype, square: bool = False):
    """CSR of sqrt(h(deg, c)) (or h itself) over the entries where c < deg.

    Entries with ``c >= deg`` are dropped: there the far endpoint already
    neighbours every neighbour of the intermediate node, so they lie only on
    paths of existing links, or are the node itself. In ultra-sparse layers
    they are a third of all entries, so dropping them saves product work."""
    keep = common < deg
    kept_before = torch.zeros(col.numel() + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(keep, 0, dtype=crow.dtype, out=kept_before[1:])
    idx = keep.nonzero().squeeze(1)
    term = h(deg.index_select(0, idx).to(dtype), common.index_select(0, idx).to(dtype))
    return kept_before.index_select(0, crow), col.index_select(0, idx), term if square else term.sqrt_(), n_cols


def _wedge_counts(masks: torch.Tensor) -> tuple[int, int]:
    """Entries of the wedge tables P and Q of a (B, n_y, n_x) stack: the sums
    of squared input degrees and of squared output degrees."""
    deg_in = masks.sum(1, dtype=torch.int64)
    deg_out = masks.sum(2, dtype=torch.int64)
    return int((deg_in * deg_in).sum()), int((deg_out * deg_out).sum())


def estimate_memory(masks: torch.Tensor, method: str = "exact") -> tuple[int, int]:
    """(wedge entries, conservative peak bytes) of scoring a (B, n_y, n_x)
    bool stack with ``method``; costs only the degree sums."""
    n_p, n_q = _wedge_counts(masks)
    wedges = n_p + n_q
    return wedges, wedges * _BYTES_PER_WEDGE[method] + masks.numel() * _BYTES_PER_CELL


def _memory_budget(device: torch.device, memory_gb: float | None = None) -> int | None:
    """Bytes the link prediction may use: ``memory_gb`` GiB if given, else
    $CHSNN_LINKPRED_MEMORY_GB GiB if set, else a fraction of the available
    host (CPU) or device (CUDA) memory; None when unknown (no check)."""
    if memory_gb is not None:
        if not isinstance(memory_gb, (int, float)) or isinstance(memory_gb, bool) or not memory_gb > 0:
            raise ValueError(f"memory_gb must be a positive number of GiB, got {memory_gb!r}")
        return int(memory_gb * 2**30)
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise ValueError(f"{MEMORY_ENV} must be a number of GiB, got {env!r}") from None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # reusable cache
        return int(free * _MEMORY_FRACTION)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(int(line.split()[1]) * 1024 * _MEMORY_FRACTION)
        except (OSError, ValueError, IndexError):
            return None
    return None


# Cost model of the kernel choice (CPU, float64, 2 cores; only the ratios
# between kernels matter, measured against each other): sparse products cost
# about 2 ns per L3 path and 50 ns per wedge entry; the dense kernels' large
# products (co-neighbour counts, L3n) run at about 2.5e10 multiply-adds per
# second, the dense exact kernel's batched small ones at about 1e10, and its
# gathers and scatter about 5 ns per (link, column) element.
_SEC_PER_PATH = 2e-9
_SEC_PER_WEDGE = 5e-8
_SEC_PER_CALL = 2e-3
_DENSE_FMA_PER_SEC = 2.5e10
_BATCHED_FMA_PER_SEC = 1e10
_SEC_PER_DENSE_ELEMENT = 5e-9
_SEC_PER_DENSE_CALL = 5e-3
# Largest block of the dense kernels: in middle nodes (exact) and in bytes
# (beyond these, larger blocks save no time).
_DENSE_EXACT_MAX_CHUNK = 256
_DENSE_BLOCK_BYTES = 256 * 2**20


class _Plan:
    """One way to compute the scores: its peak memory (bytes) as a function of
    the block size, its estimated seconds, the largest useful block."""

    def __init__(self, method, kernel, need, seconds, max_chunk=None, wedges=None, cap_bytes=None):
        self.method, self.kernel, self.need, self.seconds = method, kernel, need, seconds
        self.max_chunk, self.wedges, self.cap_bytes = max_chunk, wedges, cap_bytes
        self.chunk = None

    def min_bytes(self) -> int:
        return self.need(1)

    def fit(self, budget: int | None, chunk: int | None) -> bool:
        """Pick the block size (the given one, else the largest that fits and
        is useful); False when even that does not fit."""
        if self.max_chunk is None:
            return budget is None or self.need(None) <= budget
        if chunk is not None:
            self.chunk = min(chunk, self.max_chunk)
            return budget is None or self.need(self.chunk) <= budget
        if budget is not None and self.need(1) > budget:
            return False
        lo, hi = 1, self.max_chunk  # largest c with need(c) <= budget, need(c) - need(0) <= cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            ok = (budget is None or self.need(mid) <= budget) and (self.cap_bytes is None or self.need(mid) - self.need(0) <= self.cap_bytes)
            lo, hi = (mid, hi) if ok else (lo, mid - 1)
        self.chunk = lo
        return True


def _plans(masks: torch.Tensor, method: str, links=None) -> list[_Plan]:
    """The kernels that compute ``method`` on this stack, with their costs
    (``links``: ``masks.nonzero(as_tuple=True)`` when already at hand)."""
    B, n_y, n_x = masks.shape
    deg_in_i = masks.sum(1, dtype=torch.int64)  # (B, n_x): degrees of input nodes
    deg_out_i = masks.sum(2, dtype=torch.int64)  # (B, n_y)
    deg_in, deg_out = deg_in_i.double(), deg_out_i.double()
    cells = masks.numel()
    item = 8
    wedges = int((deg_in_i * deg_in_i).sum()) + int((deg_out_i * deg_out_i).sum())
    wedge_bytes = wedges * _BYTES_PER_WEDGE[method] + cells * _BYTES_PER_CELL
    if links is None:
        links = masks.nonzero(as_tuple=True)
    b, y, x = links
    paths = float((deg_in[b, x] * deg_out[b, y]).sum()) if wedges else 0.0  # sum over links of deg(x1) deg(y1)
    plans = [_Plan(method, "wedge", lambda c: wedge_bytes, _SEC_PER_CALL + _SEC_PER_PATH * paths + _SEC_PER_WEDGE * wedges, wedges=wedges)]
    out_bytes = cells * item
    if method == "exact":
        for side in ("in", "out"):
            # group by middle nodes of this side: n_g of them, degree deg_g,
            # factors of the other side's n_o nodes kept whole (n_o^2)
            n_g, n_o, deg_g = (n_x, n_y, deg_in) if side == "in" else (n_y, n_x, deg_out)
            d_max = int(deg_g.max()) if deg_g.numel() else 0
            fixed = out_bytes + (3 + (side == "out")) * n_y * n_x * item + 3 * n_o * n_o * item + 32 * int(masks.sum())
            per_node = (4 * n_g + d_max * d_max + 2 * d_max * n_g) * item

            def need(c, fixed=fixed, per_node=per_node):
                return fixed + (0 if c == 0 else (c or 1) * per_node)

            small = float((deg_g * deg_g).sum()) * n_g
            large = B * (n_o * n_o * n_g + n_g * n_g * n_o)
            elements = float(deg_g.sum()) * n_g + B * (n_o * n_o + n_g * n_g)
            seconds = _SEC_PER_DENSE_CALL * B + small / _BATCHED_FMA_PER_SEC + large / _DENSE_FMA_PER_SEC + _SEC_PER_DENSE_ELEMENT * elements
            plan = _Plan(method, "dense", need, seconds, max_chunk=max(1, min(n_g, _DENSE_EXACT_MAX_CHUNK)), cap_bytes=_DENSE_BLOCK_BYTES)
            plan.side = side
            plans.append(plan)
    else:
        fixed = out_bytes + 2 * n_y * n_x * item

        def need(c, fixed=fixed):
            return fixed + (0 if c == 0 else 4 * (c or 1) * (n_x + n_y) * item)

        fma = 2.0 * B * (n_x * n_x * n_y + n_y * n_y * n_x)
        seconds = _SEC_PER_DENSE_CALL * B + fma / _DENSE_FMA_PER_SEC + _SEC_PER_DENSE_ELEMENT * B * (n_x * n_x + n_y * n_y)
        plan = _Plan(method, "dense", need, seconds, max_chunk=max(1, n_x, n_y), cap_bytes=max(_DENSE_BLOCK_BYTES, n_x * n_y * item))
        plan.side = "in"
        plans.append(plan)
    return plans


def _choose(masks: torch.Tensor, method: str, memory_gb, kernel, chunk, links=None) -> _Plan:
    """The fastest kernel that fits the budget; for ``auto``, exact first."""
    budget = _memory_budget(masks.device, memory_gb)
    if chunk is not None and kernel is None:
        kernel = "dense"
    tried = {}
    for m in (("exact", "node") if method == "auto" else (method,)):
        plans = [p for p in _plans(masks, m, links) if kernel is None or p.kernel == kernel]
        tried[m] = plans
        fitting = [p for p in plans if p.fit(budget, chunk)]
        if fitting:
            return min(fitting, key=lambda p: p.seconds)
    _raise_memory(masks, method, budget, kernel, chunk, tried)


def _raise_memory(masks, method, budget, kernel, chunk, tried) -> None:
    B, n_y, n_x = masks.shape
    density = int(masks.sum()) / max(1, masks.numel())
    shape = f"{n_y}x{n_x}" if B == 1 else f"{B} graphs of {n_y}x{n_x}"
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    needs = []
    for m, plans in tried.items():
        for p in plans:
            if p.kernel == "wedge":
                needs.append(f"{m}/wedge: {p.wedges:,} wedge entries, about {gib(p.need(None))}")
            else:
                size = f"blocks of {chunk}" if chunk is not None else "blocks of one node (the smallest chunk)"
                needs.append(f"{m}/dense in {size}: about {gib(p.need(chunk or 1))}")
    fixes = []
    if method == "exact":
        node_need = min(p.min_bytes() for p in _plans(masks, "node"))
        fixes.append(f'method="node" (engine option `linkpred: node`, or `linkpred: auto`; an approximation, estimated {gib(node_need)})')
    if kernel is not None or chunk is not None:
        fixes.append("leave kernel and chunk unset, to let the fastest kernel that fits be chosen")
    fixes.append("a lower density (e.g. a lower `initial_density` of a sigmoid density schedule: wedges grow with density squared)")
    fixes.append(f"{MEMORY_ENV}=<GiB> (or memory_gb=) to raise the budget")
    raise LinkPredictionMemoryError(
        f"CH link prediction (method={method!r}) on a {shape} layer at density {density:.3g} does not fit "
        f"the budget of {gib(budget)} on {masks.device.type}, even one chunk: it needs "
        + "; ".join(needs)
        + ". Fixes: "
        + "; ".join(fixes)
    )


def _scores(masks: torch.Tensor, model: str, method: str, dtype, memory_gb=None, kernel=None, chunk=None) -> torch.Tensor:
    links = masks.nonzero(as_tuple=True)
    if links[0].numel() == 0:
        _LAST.choice = {"linkpred": "exact" if method == "auto" else method, "linkpred_kernel": "none"}
        return torch.zeros(masks.shape, dtype=dtype, device=masks.device)
    plan = _choose(masks, method, memory_gb, kernel, chunk, links)  # before any large allocation
    _LAST.choice = {
        "linkpred": plan.method,
        "linkpred_kernel": plan.kernel,
        "linkpred_chunk": plan.chunk,
        "linkpred_est_gb": round(plan.need(plan.chunk) / 2**30, 4),
    }
    h = _node_terms(model)
    if plan.kernel == "dense":
        out = torch.empty(masks.shape, dtype=dtype, device=masks.device)
        dense = _dense_exact if plan.method == "exact" else _dense_node
        for b in range(masks.shape[0]):
            if plan.side == "in":
                out[b] = dense(masks[b], h, dtype, plan.chunk)
            else:  # the scores are symmetric in the two sides: group by output nodes
                out[b] = dense(masks[b].t().contiguous(), h, dtype, plan.chunk).t()
        return out.masked_fill_(masks, 0.0)
    w = _Wedges(masks, links)
    B, n_y, n_x = masks.shape
    if plan.method == "exact":
        p = _factor_csr(h, w.p_crow, w.p_col, w.p_deg, w.common(w.p_key, n_y), w.n_links, dtype)
        q = _factor_csr(h, w.q_crow, w.q_col, w.q_deg, w.common(w.q_key, n_x), B * n_x, dtype)
        out = _spgemm_dense(p, q, masks.shape)
    else:
        out = _node_scores(w, h, dtype)
    return out.masked_fill_(masks, 0.0)


def _factor_dense(h, deg: torch.Tensor, common: torch.Tensor, square: bool = False, positive: bool = False) -> torch.Tensor:
    """Dense sqrt(h(deg, c)) (or h), 0 where ``c >= deg`` (only on paths of
    existing links, or the node itself) and, with ``positive``, where c = 0."""
    keep = common < deg
    if positive:
        keep &= common > 0
    safe = torch.where(keep, common, deg - 1)  # finite terms everywhere
    term = h(deg.expand_as(common), safe)
    if not square:
        term = term.clamp_(min=0).sqrt_()
    return term.masked_fill_(~keep, 0.0)


def _dense_exact(m: torch.Tensor, h, dtype, chunk: int) -> torch.Tensor:
    """Exact scores of one (n_y, n_x) mask, grouped by the middle input node x1:
    S^T[y, x] = sum_{x1 in N(y)} G[x1, x] sum_{y1 in N(x1)} F[y1, y] M[y1, x],
    ``chunk`` middle nodes at a time (one batched product per block; nodes
    sorted by degree so that the padding of a block to its largest degree
    stays small)."""
    n_y, n_x = m.shape
    dev = m.device
    # one zero row (and column) at index n_y: the padding of short neighbour lists
    M = torch.zeros(n_y + 1, n_x, dtype=dtype, device=dev)
    M[:n_y] = m
    deg_in = m.sum(0, dtype=torch.int64)
    deg_out = m.sum(1, dtype=torch.int64).to(dtype)
    # Ft[y, y1] = F[y1, y]: factor of y1 on paths that end at y (counts exact in float)
    ft = torch.zeros(n_y + 1, n_y + 1, dtype=dtype, device=dev)
    ft[:n_y, :n_y] = _factor_dense(h, deg_out.unsqueeze(0), M[:n_y] @ M[:n_y].t())
    out = torch.zeros(n_y + 1, n_x, dtype=dtype, device=dev)
    deg_cpu = deg_in.cpu()
    order = torch.argsort(deg_cpu, stable=True)
    order = order[deg_cpu[order] > 0]  # isolated inputs are on no path
    x_of, y_of = m.t().nonzero(as_tuple=True)  # input-major: the neighbours of each x1
    starts = (torch.cumsum(deg_cpu, 0) - deg_cpu).to(dev)
    for i in range(0, order.numel(), chunk):
        x1s = order[i : i + chunk]
        width = int(deg_cpu[x1s].max())
        x1s = x1s.to(dev)
        deg_b = deg_in.index_select(0, x1s)
        # ys[j, k]: the k-th output neighbour of x1s[j], n_y (the zero row) past its degree
        k = torch.arange(width, device=dev)
        pos = starts.index_select(0, x1s).unsqueeze(1) + k
        ys = torch.where(k < deg_b.unsqueeze(1), y_of.index_select(0, pos.clamp_(max=y_of.numel() - 1).view(-1)).view(pos.shape), n_y)
        # G[x1, x]: factor of x1 on paths that start at x
        mx = M[:n_y].index_select(1, x1s)
        g = _factor_dense(h, deg_b.to(dtype).unsqueeze(1), mx.t() @ M[:n_y])
        t = torch.bmm(ft[ys.unsqueeze(2), ys.unsqueeze(1)], M[ys])  # (b, width, n_x)
        out.index_add_(0, ys.view(-1), t.mul_(g.unsqueeze(1)).view(-1, n_x))
    return out[:n_y]


def _dense_node(m: torch.Tensor, h, dtype, chunk: int) -> torch.Tensor:
    """L3n of one (n_y, n_x) mask with blocked dense products:
    S^T = M @ H_in + H_out @ M, H_in[x1, x] = h(deg(x1), C_X[x1, x]) and
    H_out[y, y1] = h(deg(y1), C_Y[y, y1]) where 0 < C < deg."""
    n_y, n_x = m.shape
    M = m.to(dtype)
    deg_in = m.sum(0, dtype=torch.int64).to(dtype)
    deg_out = m.sum(1, dtype=torch.int64).to(dtype)
    out = torch.empty(n_y, n_x, dtype=dtype, device=m.device)
    for x0 in range(0, n_x, chunk):  # columns x of the first term
        x1 = min(n_x, x0 + chunk)
        h_in = _factor_dense(h, deg_in.unsqueeze(1), M.t() @ M[:, x0:x1], square=True, positive=True)
        out[:, x0:x1] = M @ h_in
    for y0 in range(0, n_y, chunk):  # rows y of the second term
        y1 = min(n_y, y0 + chunk)
        h_out = _factor_dense(h, deg_out.unsqueeze(0), M[y0:y1] @ M.t(), square=True, positive=True)
        out[y0:y1].addmm_(h_out, M)
    return out


def _node_scores(w: _Wedges, h, dtype) -> torch.Tensor:
    """L3n: S[y, x] = sum_{x1 in N(y)} h(x1; x) + sum_{y1 in N(x)} h(y1; y),
    each over intermediate nodes sharing a neighbour with the far endpoint."""
    B, n_y, n_x = w.shape
    ones = torch.ones(w.mask_col.numel(), dtype=dtype, device=w.mask_col.device)
    mask_csr = (w.mask_crow, w.mask_col, ones, B * n_x)
    h_in = _pair_terms(h, w.q_key, n_x, w.deg_in, dtype, node_is_row=True)  # (x1, x)
    h_out_t = _pair_terms(h, w.p_key, n_y, w.deg_out, dtype, node_is_row=False)  # (y, y1)
    return _spgemm_dense(mask_csr, h_in, w.shape) + _spgemm_dense(h_out_t, mask_csr, w.shape)


def _pair_terms(h, keys, n, deg, dtype, node_is_row: bool):
    """CSR over one side's nodes of h(deg(node), c) for every distinct pair in
    ``keys`` (``row * n + local column``), c being the pair's multiplicity."""
    pairs, counts = torch.unique(keys, return_counts=True)
    rows = pairs // n
    cols = rows - rows % n + pairs % n
    node_deg = deg.index_select(0, rows if node_is_row else cols)
    n_nodes = deg.numel()
    crow = torch.zeros(n_nodes + 1, dtype=keys.dtype, device=keys.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_nodes), 0)
    return _factor_csr(h, crow, cols, node_deg, counts.to(keys.dtype), n_nodes, dtype, square=True)


def _spgemm_dense(a, b, shape) -> torch.Tensor:
    """Dense (B, n_y, n_x) block diagonal of A @ B for CSR operands
    ``(crow, col, values, n_cols)`` over the stacked graphs (A has B*n_y rows,
    B has B*n_x columns)."""
    if a[0].device.type == "cpu":
        return _spgemm_dense_cpu(a, b, shape)
    return _spgemm_dense_torch(a, b, shape)


def _spgemm_dense_torch(a, b, shape) -> torch.Tensor:
    # On accelerators: torch's sparse CSR product (cuSPARSE), no host round trip.
    B, n_y, n_x = shape
    a_crow, a_col, a_val, inner = a
    b_crow, b_col, b_val, n_cols = b
    out = torch.zeros(shape, dtype=a_val.dtype, device=a_val.device)
    if a_col.numel() == 0 or b_col.numel() == 0:
        return out
    am = torch.sparse_csr_tensor(a_crow, a_col, a_val, (B * n_y, inner), check_invariants=False)
    bm = torch.sparse_csr_tensor(b_crow, b_col, b_val, (inner, n_cols), check_invariants=False)
    prod = am @ bm
    crow, col = prod.crow_indices(), prod.col_indices()
    rows = torch.repeat_interleave(torch.arange(B * n_y, device=col.device), crow[1:] - crow[:-1], output_size=col.numel())
    out.view(-1)[rows * n_x + col % n_x] = prod.values()
    return out


def _spgemm_dense_cpu(a, b, shape) -> torch.Tensor:
    # scipy's SpGEMM releases the GIL: row blocks run on all of torch's threads.
    import scipy.sparse as sp

    B, n_y, n_x = shape
    a_crow, a_col, a_val, inner = (t.numpy() if isinstance(t, torch.Tensor) else t for t in a)
    b_crow, b_col, b_val, n_cols = (t.numpy() if isinstance(t, torch.Tensor) else t for t in b)
    # toarray(out=...) below fills whole rows, zeros included.
    out = (np.empty if B == 1 else np.zeros)((B * n_y, n_x), dtype=a_val.dtype)
    if a_col.size == 0 or b_col.size == 0:
        out.fill(0)
        return torch.from_numpy(out).view(shape)
    bm = sp.csr_matrix((b_val, b_col, b_crow), shape=(inner, n_cols))
    n_rows = B * n_y
    # Split the rows of A into blocks of about equal entries, one per thread.
    n_blocks = max(1, min(torch.get_num_threads(), n_rows))
    cuts = np.searchsorted(a_crow, np.linspace(0, a_crow[-1], n_blocks + 1), side="left")
    cuts[0], cuts[-1] = 0, n_rows
    cuts = np.unique(cuts)

    def block(i: int) -> None:
        r0, r1 = int(cuts[i]), int(cuts[i + 1])
        lo, hi = a_crow[r0], a_crow[r1]
        am = sp.csr_matrix((a_val[lo:hi], a_col[lo:hi], a_crow[r0 : r1 + 1] - lo), shape=(r1 - r0, inner))
        prod = am @ bm
        if B == 1:
            prod.toarray(out=out[r0:r1])
        else:  # only the diagonal blocks are non-zero
            rows = np.repeat(np.arange(r0, r1), np.diff(prod.indptr))
            out.reshape(-1)[rows * n_x + prod.indices % n_x] = prod.data

    if len(cuts) > 2:
        list(_thread_pool().map(block, range(len(cuts) - 1)))
    else:
        block(0)
    return torch.from_numpy(out).view(shape)


_POOL = None


def _thread_pool():
    global _POOL
    if _POOL is None or _POOL._max_workers < torch.get_num_threads():
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="chsnn-spgemm")
    return _POOL
