"""The scoring API of CH link prediction: model, method and kernel names,
``ch_scores``/``ch_scores_batched``, the record of each call's kernel choice."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from chsnn.linkpred.dense import dense_exact, dense_node
from chsnn.linkpred.planner import choose_plan
from chsnn.linkpred.wedge import Wedges, wedge_exact, wedge_node

MODELS = ("RA", "CH2", "CH3", "CH3.1")
# "auto": exact when it fits the memory budget, else the node approximation.
METHODS = ("exact", "node", "auto")
# How the scores are computed (same values, to rounding): sparse products over
# the wedge tables, or blocked dense matrix products.
KERNELS = ("wedge", "dense")


def node_terms(model: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


def _scores(masks: torch.Tensor, model: str, method: str, dtype, memory_gb=None, kernel=None, chunk=None) -> torch.Tensor:
    links = masks.nonzero(as_tuple=True)
    if links[0].numel() == 0:
        _LAST.choice = {"linkpred": "exact" if method == "auto" else method, "linkpred_kernel": "none"}
        return torch.zeros(masks.shape, dtype=dtype, device=masks.device)
    plan = choose_plan(masks, method, memory_gb, kernel, chunk, links)  # before any large allocation
    _LAST.choice = {
        "linkpred": plan.method,
        "linkpred_kernel": plan.kernel,
        "linkpred_chunk": plan.chunk,
        "linkpred_est_gb": round(plan.need(plan.chunk) / 2**30, 4),
    }
    h = node_terms(model)
    if plan.kernel == "dense":
        out = torch.empty(masks.shape, dtype=dtype, device=masks.device)
        dense = dense_exact if plan.method == "exact" else dense_node
        for b in range(masks.shape[0]):
            if plan.side == "in":
                out[b] = dense(masks[b], h, dtype, plan.chunk)
            else:  # the scores are symmetric in the two sides: group by output nodes
                out[b] = dense(masks[b].t().contiguous(), h, dtype, plan.chunk).t()
        return out.masked_fill_(masks, 0.0)
    w = Wedges(masks, links)
    out = wedge_exact(w, h, dtype) if plan.method == "exact" else wedge_node(w, h, dtype)
    return out.masked_fill_(masks, 0.0)
