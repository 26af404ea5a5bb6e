"""Finding the layers to sparsify and viewing each as a bipartite graph.

``nn.Linear`` and 1x1 ``Conv1d``/``Conv2d`` are linear maps ``(n_out, n_in)``;
a k x k ``Conv2d`` is read in its im2col form ``(out_ch, in_ch * kh * kw)``
with a fixed number of active positions per ``(out_ch, in_ch)`` kernel
(CH-SPEC sections 1 and 5). SpikingJelly's and snnTorch's layers subclass
these, so they are found the same way.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

LINEAR = "linear"  # one mask entry per link of a (n_out, n_in) map
KERNEL = "kernel"  # CHT-Conv: per-kernel masks with equal active counts


@dataclass
class SparseTarget:
    name: str
    module: nn.Module
    kind: str
    n_out: int
    n_in: int
    kernel_size: int = 1  # kh * kw positions per kernel (KERNEL only)

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def numel(self) -> int:
        return self.n_out * self.n_in

    def as_2d(self, t: torch.Tensor) -> torch.Tensor:
        """(n_out, n_in) view of a weight-shaped tensor (the im2col graph)."""
        return t.reshape(self.n_out, self.n_in)

    def as_kernels(self, t: torch.Tensor) -> torch.Tensor:
        """(out_ch * in_ch, kh * kw) view: one row per kernel."""
        return t.reshape(-1, self.kernel_size)

    def describe(self) -> str:
        shape = "x".join(map(str, self.weight.shape))
        return f"{self.name} ({type(self.module).__name__} {shape})"


def _classify(module: nn.Module):
    """(kind, n_out, n_in, kernel_size) for a sparsifiable module, else None."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(module, nn.Linear):
        return LINEAR, module.out_features, module.in_features, 1
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        k = 1
        for size in module.kernel_size:
            k *= size
        if k == 1:
            return LINEAR, module.out_channels, module.in_channels, 1
        if isinstance(module, nn.Conv2d):
            return KERNEL, module.out_channels, module.in_channels * k, k
    return None


def _matches(name: str, module: nn.Module, patterns) -> bool:
    for p in patterns:
        if isinstance(p, type):
            if isinstance(module, p):
                return True
        elif fnmatch.fnmatchcase(name, p) or type(module).__name__ == p:
            return True
    return False


def find_targets(model: nn.Module, include=(), exclude=(), sparsify_output: bool = False) -> tuple[list[SparseTarget], str | None]:
    """The model's sparsifiable layers in registration order, and the name of
    the output layer left dense (None when it is sparsified or not found).

    The output classifier is the last linear-like layer in registration
    order; it stays dense unless ``sparsify_output`` is set."""
    found = []
    for name, module in model.named_modules():
        info = _classify(module)
        if info is not None:
            found.append(SparseTarget(name or "<model>", module, *info))
    linear_like = [t for t in found if t.kind == LINEAR]
    output = linear_like[-1].name if linear_like else None
    targets = []
    for t in found:
        if include and not _matches(t.name, t.module, include):
            continue
        if exclude and _matches(t.name, t.module, exclude):
            continue
        if t.name == output and not sparsify_output:
            continue
        targets.append(t)
    dense_output = output if output and all(t.name != output for t in targets) else None
    return targets, dense_output
