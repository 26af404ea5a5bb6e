"""Calibration passes: presynaptic activity of the sparse layers.

The engine runs the (eager) model on a few cached calibration batches with
temporary forward pre-hooks, so training forwards carry no hooks and compiled
models are untouched. Spiking neurons' states are reset after every pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from chsnn.sparse.targets import KERNEL, SparseTarget


def reset_states(model: nn.Module) -> None:
    """Reset SpikingJelly memory modules and snnTorch neurons, if any."""
    snn_torch = False
    for m in model.modules():
        origin = type(m).__module__
        if origin.startswith("spikingjelly") and callable(getattr(m, "reset", None)):
            m.reset()
        elif origin.startswith("snntorch"):
            snn_torch = True
    if snn_torch:
        from snntorch import utils

        utils.reset(model)


def batch_input(batch):
    """The model input of a loader item: ``x`` or the first of ``(x, y, ...)``."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "image", "events"):
            if key in batch:
                return batch[key]
        raise ValueError(f"calibration batch is a dict without an input key (x, input, inputs, image, events): {sorted(batch)}")
    return batch


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def presynaptic_features(target: SparseTarget, x: torch.Tensor) -> torch.Tensor:
    """(samples, n_in) presynaptic activity of a layer's input ``x``; every
    leading index (batch, time step, pixel position) is a sample."""
    x = x.detach()
    m = target.module
    if target.kind == KERNEL:  # im2col patches
        x = x.reshape(-1, *x.shape[-3:])
        cols = F.unfold(x.float(), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        return cols.transpose(1, 2).reshape(-1, target.n_in)
    if isinstance(m, nn.Conv2d):
        return x.movedim(-3, -1).reshape(-1, target.n_in).float()
    if isinstance(m, nn.Conv1d):
        return x.movedim(-2, -1).reshape(-1, target.n_in).float()
    return x.reshape(-1, target.n_in).float()


class _Stop(Exception):
    """Raised by a hook to end a calibration forward early."""


class ActivityStats:
    """Per input neuron: mean |a|, mean a^2 and (optionally) a sample matrix."""

    def __init__(self, n_in: int, keep_samples: int = 0):
        self.n = 0
        self.abs_sum = None
        self.sq_sum = None
        self.keep_samples = keep_samples
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.n_in = n_in

    def add(self, feats: torch.Tensor, generator: torch.Generator | None = None) -> None:
        feats = feats.to(torch.float64)
        abs_sum = feats.abs().sum(0)
        sq_sum = (feats * feats).sum(0)
        self.abs_sum = abs_sum if self.abs_sum is None else self.abs_sum + abs_sum
        self.sq_sum = sq_sum if self.sq_sum is None else self.sq_sum + sq_sum
        self.n += feats.shape[0]
        room = self.keep_samples - self.kept
        if room > 0:
            if feats.shape[0] > room:  # subsample rows, reproducibly
                rows = torch.randperm(feats.shape[0], generator=generator, device=generator.device)[:room]
                feats = feats[rows.to(feats.device)]
            self.samples.append(feats)
            self.kept += feats.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        return self.sq_sum / max(self.n, 1)

    def correlation(self) -> torch.Tensor:
        """Pearson correlation between input neurons; zero-variance neurons
        get 0, the diagonal is 0."""
        x = torch.cat(self.samples)
        x = x - x.mean(0)
        std = x.pow(2).sum(0).sqrt()
        ok = std > 0
        x = x / torch.where(ok, std, torch.ones_like(std))
        corr = x.T @ x
        corr[~ok] = 0
        corr[:, ~ok] = 0
        corr.fill_diagonal_(0)
        return corr


def record_activity(
    model: nn.Module,
    batches: list,
    targets: list[SparseTarget],
    forward_fn: Callable,
    generator: torch.Generator,
    keep_samples: int = 0,
    stop_after: SparseTarget | None = None,
) -> dict[str, ActivityStats]:
    """Run the calibration batches and gather each target's input activity.
    With ``stop_after``, every forward ends once that layer's input is seen."""
    stats = {t.name: ActivityStats(t.n_in, keep_samples) for t in targets}
    handles = []

    def hook_for(t: SparseTarget):
        def hook(module, args):
            stats[t.name].add(presynaptic_features(t, args[0]), generator)
            if stop_after is t:
                raise _Stop

        return hook

    for t in targets:
        handles.append(t.module.register_forward_pre_hook(hook_for(t)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    forward_fn(model, batch)
                except _Stop:
                    pass
                finally:
                    reset_states(model)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def trace_order(model: nn.Module, batch, targets: list[SparseTarget], forward_fn: Callable) -> list[SparseTarget]:
    """Targets in the order the forward pass first calls them; layers the
    pass never reaches keep their registration order, at the end."""
    seen: list[SparseTarget] = []
    handles = [t.module.register_forward_pre_hook(lambda m, a, t=t: seen.append(t) if t not in seen else None) for t in targets]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward_fn(model, batch)
    finally:
        reset_states(model)
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen + [t for t in targets if t not in seen]
