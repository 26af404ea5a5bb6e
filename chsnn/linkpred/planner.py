"""Memory and time planning of CH link prediction: the peak-memory estimate, the
memory budget, the cost model, and the choice of kernel and block size."""

from __future__ import annotations

import os

import torch

# Peak memory model of the wedge kernels: bytes per wedge entry (P entries plus Q
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


def wedge_counts(masks: torch.Tensor) -> tuple[int, int]:
    """Entries of the wedge tables P and Q of a (B, n_y, n_x) stack: the sums
    of squared input degrees and of squared output degrees."""
    deg_in = masks.sum(1, dtype=torch.int64)
    deg_out = masks.sum(2, dtype=torch.int64)
    return int((deg_in * deg_in).sum()), int((deg_out * deg_out).sum())


def estimate_memory(masks: torch.Tensor, method: str = "exact") -> tuple[int, int]:
    """(wedge entries, conservative peak bytes) of scoring a (B, n_y, n_x)
    bool stack with ``method``; costs only the degree sums."""
    n_p, n_q = wedge_counts(masks)
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


class Plan:
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
            ok = (budget is None or self.need(mid) <= budget) and (
                self.cap_bytes is None or self.need(mid) - self.need(0) <= self.cap_bytes
            )
            lo, hi = (mid, hi) if ok else (lo, mid - 1)
        self.chunk = lo
        return True


def kernel_plans(masks: torch.Tensor, method: str, links=None) -> list[Plan]:
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
    plans = [Plan(method, "wedge", lambda c: wedge_bytes, _SEC_PER_CALL + _SEC_PER_PATH * paths + _SEC_PER_WEDGE * wedges, wedges=wedges)]
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
            seconds = (
                _SEC_PER_DENSE_CALL * B + small / _BATCHED_FMA_PER_SEC + large / _DENSE_FMA_PER_SEC + _SEC_PER_DENSE_ELEMENT * elements
            )
            plan = Plan(method, "dense", need, seconds, max_chunk=max(1, min(n_g, _DENSE_EXACT_MAX_CHUNK)), cap_bytes=_DENSE_BLOCK_BYTES)
            plan.side = side
            plans.append(plan)
    else:
        fixed = out_bytes + 2 * n_y * n_x * item

        def need(c, fixed=fixed):
            return fixed + (0 if c == 0 else 4 * (c or 1) * (n_x + n_y) * item)

        fma = 2.0 * B * (n_x * n_x * n_y + n_y * n_y * n_x)
        seconds = _SEC_PER_DENSE_CALL * B + fma / _DENSE_FMA_PER_SEC + _SEC_PER_DENSE_ELEMENT * B * (n_x * n_x + n_y * n_y)
        plan = Plan(method, "dense", need, seconds, max_chunk=max(1, n_x, n_y), cap_bytes=max(_DENSE_BLOCK_BYTES, n_x * n_y * item))
        plan.side = "in"
        plans.append(plan)
    return plans


def choose_plan(masks: torch.Tensor, method: str, memory_gb, kernel, chunk, links=None) -> Plan:
    """The fastest kernel that fits the budget; for ``auto``, exact first."""
    budget = _memory_budget(masks.device, memory_gb)
    if chunk is not None and kernel is None:
        kernel = "dense"
    tried = {}
    for m in ("exact", "node") if method == "auto" else (method,):
        plans = [p for p in kernel_plans(masks, m, links) if kernel is None or p.kernel == kernel]
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
        node_need = min(p.min_bytes() for p in kernel_plans(masks, "node"))
        fixes.append(f'method="node" (engine option `linkpred: node`, or `linkpred: auto`; an approximation, estimated {gib(node_need)})')
    if kernel is not None or chunk is not None:
        fixes.append("leave kernel and chunk unset, to let the fastest kernel that fits be chosen")
    fixes.append("a lower density (e.g. a lower `initial_density` of a sigmoid density schedule: wedges grow with density squared)")
    fixes.append(f"{MEMORY_ENV}=<GiB> (or memory_gb=) to raise the budget")
    raise LinkPredictionMemoryError(
        f"CH link prediction (method={method!r}) on a {shape} layer at density {density:.3g} does not fit "
        f"the budget of {gib(budget)} on {masks.device.type}, even one chunk: it needs " + "; ".join(needs) + ". Fixes: " + "; ".join(fixes)
    )
