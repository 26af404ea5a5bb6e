"""The mask buffers on the sparse modules, and enforcing them.

Each sparse module holds its mask as the bool buffer
:data:`chsnn.contracts.MASK` (persistent) and a float copy
:data:`chsnn.contracts.MASK_F` (not persistent: multiplying by it is ~8x
faster than by a bool). These functions are the only writers of both.
"""

from __future__ import annotations

import torch

from chsnn.contracts import MASK, MASK_F
from chsnn.sparse.targets import SparseTarget

# Optimizers whose step leaves a weight at exactly 0 when its gradient and its
# state are 0 there (the engine masks gradients and zeroes state), so the
# weights need no second masking after each step.
ZERO_PRESERVING = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)


def keeps_zeros(optimizer: torch.optim.Optimizer | None) -> bool:
    """Does a step of this optimizer keep masked weights at 0 by itself
    (gradient and state 0 there)? False without an optimizer."""
    return optimizer is not None and type(optimizer) in ZERO_PRESERVING


def add_buffers(t: SparseTarget) -> None:
    """All-ones mask buffers on the layer (every link present)."""
    t.module.register_buffer(MASK, torch.ones_like(t.weight, dtype=torch.bool), persistent=True)
    t.module.register_buffer(MASK_F, torch.ones_like(t.weight), persistent=False)


def remove_buffers(t: SparseTarget) -> None:
    for name in (MASK, MASK_F):
        if hasattr(t.module, name):
            delattr(t.module, name)


def mask_of(t: SparseTarget) -> torch.Tensor:
    """The layer's bool mask buffer, of the weight's shape."""
    return getattr(t.module, MASK)


def set_mask(t: SparseTarget, mask: torch.Tensor) -> None:
    """In place: both buffers <- ``mask`` (any shape with the weight's numel)."""
    getattr(t.module, MASK).copy_(mask.view_as(t.weight))
    getattr(t.module, MASK_F).copy_(mask.view_as(t.weight))


def float_mask(t: SparseTarget) -> torch.Tensor:
    """The float mask in the weight's dtype (re-made if the model was cast
    after the engine attached)."""
    mask_f = getattr(t.module, MASK_F)
    if mask_f.dtype != t.weight.dtype:
        mask_f = getattr(t.module, MASK).to(t.weight.dtype)
        setattr(t.module, MASK_F, mask_f)
    return mask_f


def zero_masked(t: SparseTarget, x: torch.Tensor) -> None:
    """In place: ``x`` (the weight or its gradient) exactly 0 where the
    mask is off, whatever it holds there (a multiplication leaves NaN * 0
    = NaN). On the CPU a multiplication by the float mask is ~10x faster
    than a boolean fill, so it is the fast path, checked by one sum."""
    if x.device.type == "cpu":
        x.mul_(float_mask(t))
        if bool(torch.isfinite(x.sum())):
            return
    x.masked_fill_(~getattr(t.module, MASK), 0)


def zero_optimizer_state(optimizer: torch.optim.Optimizer | None, t: SparseTarget, where: torch.Tensor) -> None:
    """Zero every weight-shaped optimizer state of the layer (momentum, Adam
    moments) at ``where``: a bool mask, or flat indices."""
    if optimizer is None:
        return
    for value in optimizer.state.get(t.weight, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == t.weight.shape:
            if where.dtype == torch.bool:
                value.masked_fill_(where, 0)
            else:
                value.view(-1)[where] = 0
