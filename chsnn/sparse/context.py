"""What a strategy and a topology function may read: one layer at one decision.

Every strategy (topology init, weight init, removal, regrowth) is called as
``fn(ctx)`` with an :class:`UpdateContext`; the topology functions
(:mod:`chsnn.sparse.topology`) take one too. Masks, weights and gradients in
it are ``(n_out, n_in)`` views of the layer's graph (for a k x k convolution
its im2col form, ``(out_ch, in_ch * kh * kw)``): read them, never write them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from chsnn.sparse.targets import KERNEL, SparseTarget


@dataclass
class LinkScores:
    """One layer's existing links (``ctx.mask``) as a list, with what removal
    scores read; a removal strategy returns one score per link, in this order."""

    index: torch.Tensor  # flat position of each link in the (n_out, n_in) mask
    magnitude: torch.Tensor  # |w| per link, float64
    rows: torch.Tensor  # output neuron of each link
    cols: torch.Tensor  # input neuron of each link
    n_out: int
    n_in: int
    grad: torch.Tensor | None = None  # |dL/dw| per link, when known
    activity: dict | None = None  # {"pre": (n_in,), "post": (n_out,) or None}

    def relative_importance(self) -> torch.Tensor:
        """|w| over the total |w| of its input plus over that of its output."""
        w = self.magnitude
        col = torch.zeros(self.n_in, dtype=w.dtype, device=w.device).index_add_(0, self.cols, w)
        row = torch.zeros(self.n_out, dtype=w.dtype, device=w.device).index_add_(0, self.rows, w)
        return w / col[self.cols].clamp_min(1e-300) + w / row[self.rows].clamp_min(1e-300)


@dataclass(frozen=True, eq=False)
class UpdateContext:
    """One layer at one decision (initialisation or topology update).

    ``mask`` is the graph the stage works on: None at topology init (which
    makes it), the layer's new mask at weight init, its links before the
    update at removal, and its links after removal at regrowth (then
    ``removed`` holds the links this update removed).
    """

    name: str
    kind: str  # "linear" or "kernel" (chsnn.sparse.LINEAR / KERNEL)
    n_out: int
    n_in: int
    kernel_size: int  # kh * kw positions per kernel (1 for linear layers)
    config: object  # the EngineConfig
    generator: torch.Generator  # every random choice draws from it
    density: float  # the layer's density after this decision
    n_links: int  # links the layer holds after this decision
    mask: torch.Tensor | None = None
    removed: torch.Tensor | None = None
    step: int = 0
    zeta: float = 0.0  # fraction of the links an update replaces
    weight: torch.Tensor | None = None
    grad: torch.Tensor | None = None  # the last step's gradient (masked: 0 off the links)
    accumulated_grad: torch.Tensor | None = None  # dense gradient summed before the update (RigL)
    activity: dict | None = None  # LRS: {"pre": (n_in,) mean |a|, "post": (n_out,) or None}
    stats: object = None  # calibration ActivityStats of the layer's input (initialisation)
    input_stats: object = None  # those of the first sparse layer's input (csti_tiled)
    label: str = ""  # the layer as messages name it

    @classmethod
    def for_layer(cls, t: SparseTarget, config, generator: torch.Generator, density: float, **fields) -> UpdateContext:
        """The context of sparse layer ``t`` for a decision at ``density``."""
        n_links = target_links(t.kind, t.n_out, t.n_in, t.kernel_size, density)
        return cls(t.name, t.kind, t.n_out, t.n_in, t.kernel_size, config, generator, density, n_links, label=t.describe(), **fields)

    def replace(self, **changes) -> UpdateContext:
        return dataclasses.replace(self, **changes)

    @property
    def per_kernel(self) -> int:
        """Active positions each kernel keeps at ``density`` (kernel layers)."""
        return kernel_links(self.kernel_size, self.density)

    def as_2d(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.n_out, self.n_in)

    def as_kernels(self, t: torch.Tensor) -> torch.Tensor:
        """(out_ch * in_ch, kh * kw) view: one row per kernel."""
        return t.reshape(-1, self.kernel_size)

    @functools.cached_property
    def links(self) -> LinkScores:
        """``mask``'s links as a list (what removal strategies score)."""
        index = self.mask.reshape(-1).nonzero().squeeze(1)
        magnitude = self.weight.reshape(-1)[index].abs().to(torch.float64)
        grad = None if self.grad is None else self.grad.reshape(-1)[index].abs().to(torch.float64)
        return LinkScores(index, magnitude, index // self.n_in, index % self.n_in, self.n_out, self.n_in, grad, self.activity)


def kernel_links(kernel_size: int, density: float) -> int:
    """Active positions per kernel at a density (CHT-Conv: equal in every kernel)."""
    return round(density * kernel_size)


def target_links(kind: str, n_out: int, n_in: int, kernel_size: int, density: float) -> int:
    """Links a layer keeps at a density: the exact count for linear layers;
    for kernel layers the same count in every kernel."""
    if kind == KERNEL:
        return kernel_links(kernel_size, density) * (n_out * n_in // kernel_size)
    return round(density * n_out * n_in)
