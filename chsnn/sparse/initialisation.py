"""Calibration data and the passes that initialise the sparse layers.

The engine keeps the first calibration batches on the model's device
(:class:`CalibrationData`). Initialisation (SSCTI/CSTI topology, SSWI
weights) reads each layer's input activity with the layers before it already
initialised, so :func:`initialise_in_forward_order` visits the layers in
forward order: in one forward over all calibration samples when that fits in
memory, else in one (partial) pass per layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chsnn.sparse import strategies, topology
from chsnn.sparse.calibration import (
    ActivityStats,
    ForwardTrace,
    batch_input,
    progressive_pass,
    record_activity,
    sample_dim,
    to_device,
)
from chsnn.sparse.config import ConfigError, EngineConfig
from chsnn.sparse.context import UpdateContext
from chsnn.sparse.targets import KERNEL, SparseTarget

# Initialisation in one forward over all calibration samples when its
# largest tensor, times LIVE_TENSORS alive at once, fits this budget.
ONE_PASS_BYTES = 2 << 30
LIVE_TENSORS = 4


def samples_in(batch, spiking: bool) -> int:
    """Samples in a calibration batch (time-major for spiking models)."""
    x = batch_input(batch)
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return 1
    return x.shape[sample_dim(x, spiking)]


@dataclass
class CalibrationData:
    """The calibration batches kept on the device, and the global sample
    count of each (summed over data-parallel processes)."""

    batches: list
    counts: list[int]
    spiking: bool

    @classmethod
    def cache(cls, loader, device, config: EngineConfig, spiking: bool, reduce_counts: Callable[[list[int]], list[int]]):
        """The loader's first ``calibration_samples`` samples (or exactly
        ``calibration_batches`` batches, when set); None without a loader."""
        if loader is None:
            return None
        batches, counts = [], []
        for batch in loader:
            batches.append(to_device(batch, device))
            counts.append(samples_in(batches[-1], spiking))
            if len(batches) >= (config.calibration_batches or float("inf")):
                break
            if config.calibration_batches is None and sum(counts) >= config.calibration_samples:
                break
        if not batches:
            raise ConfigError("the calibration loader yielded no batch; give it at least one batch of inputs")
        # Global sample counts per batch, so every process picks the same batches.
        return cls(batches, reduce_counts(counts), spiking)

    def size(self) -> int:
        return sum(self.counts)

    def first_samples(self, n: int) -> list:
        """The first batches, up to ``n`` samples."""
        out, samples = [], 0
        for batch, count in zip(self.batches, self.counts):
            out.append(batch)
            samples += count
            if samples >= n:
                break
        return out


def one_pass_budget(device: torch.device, training_bytes: float) -> float:
    """Memory a one-forward initialisation may take: ``ONE_PASS_BYTES``, or
    what a training step keeps for its backward pass (``training_bytes``)
    when that is more; on a GPU no more than half of its free memory."""
    budget = max(ONE_PASS_BYTES, training_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, free // 2)
    return budget


def one_pass_batch(data: CalibrationData, trace: ForwardTrace, device: torch.device):
    """All calibration inputs as one batch, when a forward over it stays
    within :func:`one_pass_budget` (estimated from the traced forward's
    largest tensor) and every sparse layer runs once per forward; else None."""
    if not all(isinstance(b, torch.Tensor) for b in data.batches) or any(n > 1 for n in trace.calls.values()):
        return None
    estimate = LIVE_TENSORS * trace.peak_bytes_per_sample * data.size()
    if estimate > one_pass_budget(device, trace.total_bytes_per_sample * data.counts[0]):
        return None
    first = data.batches[0]
    return torch.cat(data.batches, dim=sample_dim(first, data.spiking)) if len(data.batches) > 1 else first


def initialise_in_forward_order(
    model: nn.Module,
    targets: list[SparseTarget],
    data: CalibrationData | None,
    trace: ForwardTrace | None,
    forward_fn: Callable,
    correlates: Callable[[SparseTarget], bool],
    initialise: Callable[[SparseTarget, ActivityStats | None], None],
    device: torch.device,
) -> int:
    """Call ``initialise(target, stats)`` for every target in forward order,
    ``stats`` its input activity on the calibration data with the targets
    before it initialised (None without ``data``); returns the calibration
    forwards this took."""
    if data is None:
        for t in targets:
            initialise(t, None)
        return 0
    combined = one_pass_batch(data, trace, device)
    if combined is None:
        for t in targets:
            stats = record_activity(model, data.batches, [t], forward_fn, correlate=correlates(t), stop_after=t, spiking=data.spiking)
            initialise(t, stats[t.name])
        return len(targets)
    visited = progressive_pass(model, combined, targets, forward_fn, initialise, correlates, data.spiking, data.counts[0])
    for t in targets:  # layers the forward never reaches: no activity
        if t not in visited:
            initialise(t, ActivityStats(t.n_in, correlates(t)))
    return 1


def initial_mask(ctx: UpdateContext) -> torch.Tensor:
    """The layer's initial ``(n_out, n_in)`` mask: random per kernel for
    kernel layers; else the configured topology init, random when the
    calibration data showed no activity (``ctx.stats``)."""
    if ctx.kind == KERNEL:  # CHT-Conv: random per-kernel masks
        return topology.random_kernel_mask(ctx)
    init = ctx.config.init if ctx.stats is not None and ctx.stats.any_active else "random"
    return strategies.TOPOLOGY_INITS[init](ctx)


def initial_weights(ctx: UpdateContext) -> torch.Tensor | None:
    """Float64 ``(n_out, n_in)`` weights on the links of ``ctx.mask``: normal
    noise (from ``ctx.generator``) times each neuron's std from the configured
    weight init; None when it keeps the layer's own weights."""
    std = strategies.WEIGHT_INITS[ctx.config.weight_init](ctx)
    if std is None:
        return None
    noise = torch.randn(ctx.n_out, ctx.n_in, generator=ctx.generator, device=ctx.mask.device, dtype=torch.float64)
    return noise * std * ctx.mask


def warn_if_silent(t: SparseTarget, stats: ActivityStats, samples: int, config: EngineConfig) -> None:
    """Calibration that sees no activity cannot inform the layer: say so."""
    if not stats.any_active:
        warnings.warn(
            f"{t.describe()}: none of its {t.n_in} inputs was active on the {samples} calibration samples, so "
            f"init={config.init} falls back to a random topology and weight_init={config.weight_init} to the in-degree "
            "(firing rate 1); check the input data and the neurons' thresholds, or give more calibration data",
            RuntimeWarning,
            stacklevel=4,
        )
