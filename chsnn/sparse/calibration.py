"""Calibration passes: presynaptic activity of the sparse layers.

The engine runs the (eager) model on a few cached calibration batches with
temporary forward pre-hooks, so training forwards carry no hooks and compiled
models are untouched. Spiking neurons' states are reset after every pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from chsnn.contracts import reset_network
from chsnn.sparse.targets import KERNEL, SparseTarget

# The neuron-state reset of the calibration passes (chsnn.contracts), by its older name.
reset_states = reset_network


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


def presynaptic_features(target: SparseTarget, x: torch.Tensor, time_major: bool = False) -> torch.Tensor:
    """(samples, n_in) presynaptic activity of a layer's input ``x``; every
    leading index (batch, time step, pixel position) is a sample. With
    ``time_major`` the first dimension is time and is summed over first, so a
    sample is a batch element (and position): its spike count over the steps."""
    x = x.detach()
    m = target.module
    if time_major:
        x = x.float().sum(0)
    if target.kind == KERNEL:  # im2col patches
        x = x.reshape(-1, *x.shape[-3:])
        cols = F.unfold(x.float(), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        return cols.transpose(1, 2).reshape(-1, target.n_in)
    if isinstance(m, nn.Conv2d):
        return x.movedim(-3, -1).reshape(-1, target.n_in).float()
    if isinstance(m, nn.Conv1d):
        return x.movedim(-2, -1).reshape(-1, target.n_in).float()
    return x.reshape(-1, target.n_in).float()


def _input_dims(target: SparseTarget) -> int:
    """Dimensions of one single-step batch input of the layer (with batch)."""
    m = target.module
    if isinstance(m, nn.Conv2d):
        return 4
    if isinstance(m, nn.Conv1d):
        return 3
    return 2


def layer_rows(t: SparseTarget, x: torch.Tensor, time_steps: int | None, correlate: bool):
    """A layer input -> (per-step rows, per-sample rows or None, time-major?).
    An input with one more dimension than a single-step batch and
    ``time_steps`` first is time-major; its per-sample rows (spike counts
    over the steps) are built only when they feed a correlation."""
    time_major = is_time_major(t, x, time_steps)
    steps = presynaptic_features(t, x)
    per_sample = presynaptic_features(t, x, time_major=True) if time_major and correlate else None
    return steps, per_sample, time_major


def is_time_major(t: SparseTarget, x: torch.Tensor, time_steps: int | None) -> bool:
    """Is ``x``, an input of layer ``t``, a time-major ``(T, N, ...)`` input
    (one more dimension than a single-step batch, ``time_steps`` first)?"""
    return bool(time_steps) and x.dim() == _input_dims(t) + 1 and x.shape[0] == time_steps


def sample_dim(x: torch.Tensor, spiking: bool) -> int:
    """The samples' dimension of a model input: 1 in a spiking model's
    time-major ``(T, N, ...)`` batch, else 0."""
    return 1 if spiking and x.dim() > 1 else 0


def time_steps_of(batch, spiking: bool) -> int | None:
    """T of a spiking model's time-major batch; None otherwise."""
    x = batch_input(batch)
    return x.shape[0] if isinstance(x, torch.Tensor) and sample_dim(x, spiking) == 1 else None


class _Stop(Exception):
    """Raised by a hook to end a calibration forward early."""


def run_calibration_forward(model: nn.Module, batch, forward_fn: Callable) -> None:
    """One calibration forward, which a hook may end early (``_Stop``); the
    neurons are reset afterwards either way."""
    try:
        forward_fn(model, batch)
    except _Stop:
        pass
    finally:
        reset_network(model)


EXACT_FLOAT32 = 2**24  # every integer below it is a float32


def sums_and_gram(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows.sum(0)`` and ``rows.T @ rows`` in float64. Small whole numbers
    (spike counts) are summed in float32 instead, about twice as fast: every
    product and partial sum is then a whole number below 2**24, which float32
    holds exactly, so the result is the float64 one to the last bit."""
    if rows.is_floating_point() and rows.numel():
        peak = float(rows.abs().max())
        if peak * max(peak, 1.0) * rows.shape[0] < EXACT_FLOAT32 and torch.equal(rows, rows.round()):
            r = rows.float()
            return r.sum(0).double(), (r.T @ r).double()
    r = rows.double()
    return r.sum(0), r.T @ r


class ActivityStats:
    """Presynaptic activity of one layer, streamed over calibration batches.

    Two views of the same activity:
    * per step (every leading index a row): mean |a| and mean a^2, which
      SSWI (the membrane input's variance per step) and the inactive-neuron
      rule read;
    * per sample (spike counts summed over the time steps of one sample):
      running sums for the Pearson correlation of SSCTI/CSTI, kept only when
      ``correlate`` (an n_in x n_in float64 accumulator).
    """

    def __init__(self, n_in: int, correlate: bool = False):
        self.n_in = n_in
        self.correlate = correlate
        self.n = 0  # rows seen per step
        self.abs_sum = None
        self.sq_sum = None
        self.n_samples = 0  # samples seen by the correlation
        self.sum = None
        self.cross = None

    def add(self, step_rows: torch.Tensor, sample_rows: torch.Tensor | None = None) -> None:
        """One forward's activity: per-step rows, and (when correlating) per-sample rows."""
        feats = step_rows.to(torch.float64)
        abs_sum = feats.abs().sum(0)
        sq_sum = (feats * feats).sum(0)
        self.abs_sum = abs_sum if self.abs_sum is None else self.abs_sum + abs_sum
        self.sq_sum = sq_sum if self.sq_sum is None else self.sq_sum + sq_sum
        self.n += feats.shape[0]
        if self.correlate:
            rows = step_rows if sample_rows is None else sample_rows
            total, cross = sums_and_gram(rows)
            self.sum = total if self.sum is None else self.sum + total
            self.cross = cross if self.cross is None else self.cross + cross
            self.n_samples += rows.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        return self.sq_sum / max(self.n, 1)

    def variance(self) -> torch.Tensor:
        """Per-sample variance of each input (0 for constant inputs)."""
        n = max(self.n_samples, 1)
        mean = self.sum / n
        return (self.cross.diagonal() / n - mean * mean).clamp_min(0)

    def varying(self, variance: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs whose per-sample activity varies over the calibration data
        (``variance``: :meth:`variance`, when already computed). Relative
        threshold: float64 rounding of a constant input's variance."""
        var = self.variance() if variance is None else variance
        scale = (self.cross.diagonal() / max(self.n_samples, 1)).clamp_min(1e-300)
        return var > 1e-12 * scale

    @property
    def any_active(self) -> bool:
        """Did any input fire (or hold a nonzero value) on the calibration data?"""
        return self.abs_sum is not None and bool((self.abs_sum > 0).any())

    def correlation(self) -> torch.Tensor:
        """Pearson correlation between input neurons over the samples;
        zero-variance neurons get 0, the diagonal is 0."""
        if self.cross is None or self.n_samples < 2:
            return torch.zeros(self.n_in, self.n_in, dtype=torch.float64, device=self.abs_sum.device)
        n = self.n_samples
        mean = self.sum / n
        cov = self.cross / n - torch.outer(mean, mean)
        var = self.variance()
        ok = self.varying(var)
        std = torch.where(ok, var.sqrt(), torch.ones_like(mean))
        corr = (cov / std.unsqueeze(0) / std.unsqueeze(1)).clamp_(-1.0, 1.0)
        corr[~ok] = 0
        corr[:, ~ok] = 0
        corr.fill_diagonal_(0)
        return corr


@contextlib.contextmanager
def calibration_mode(model: nn.Module):
    """Context for calibration forwards: no gradients, dropout off, and
    BatchNorm on batch statistics, because eval-mode BatchNorm with untouched
    running statistics silences every neuron after it. BatchNorm's running
    statistics and every module's mode are restored on exit."""
    was_training = model.training
    model.eval()
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, {k: v.detach().clone() for k, v in m.named_buffers(recurse=False) if v is not None}))
            m.train()
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)
        model.train(was_training)


def record_activity(
    model: nn.Module,
    batches: list,
    targets: list[SparseTarget],
    forward_fn: Callable,
    correlate: bool = False,
    stop_after: SparseTarget | None = None,
    spiking: bool = False,
) -> dict[str, ActivityStats]:
    """Run the calibration batches and gather each target's input activity.

    ``spiking``: the model takes time-major input ``(T, N, ...)``; a layer
    input with one more dimension than a single-step batch and ``T`` first
    is time-major, and a layer called several times in one forward (a model
    stepping through time in Python) has its calls summed, so that each
    correlation sample is one input sample's activity over all its steps.
    With ``stop_after``, every forward ends once that layer's input is seen.
    """
    stats = {t.name: ActivityStats(t.n_in, correlate) for t in targets}
    handles = []
    pending: dict[str, list] = {}
    time_steps = None

    def hook_for(t: SparseTarget):
        def hook(module, args):
            steps, per_sample, time_major = layer_rows(t, args[0], time_steps, correlate)
            pending.setdefault(t.name, []).append((steps, per_sample))
            # A model stepping through time calls the layer again at the next
            # step: only a single call that carries every step can end the pass.
            if stop_after is t and (time_major or not time_steps):
                raise _Stop

        return hook

    def flush() -> None:
        for name, calls in pending.items():
            steps = torch.cat([c[0] for c in calls])
            if not correlate:
                stats[name].add(steps)
                continue
            samples = [c[1] if c[1] is not None else c[0] for c in calls]
            if len(samples) > 1 and all(s.shape == samples[0].shape for s in samples):
                sample_rows = torch.stack(samples).sum(0)  # one call per time step: sum them
            else:
                sample_rows = torch.cat(samples)
            stats[name].add(steps, sample_rows)
        pending.clear()

    for t in targets:
        handles.append(t.module.register_forward_pre_hook(hook_for(t)))
    try:
        with calibration_mode(model):
            for batch in batches:
                time_steps = time_steps_of(batch, spiking)
                run_calibration_forward(model, batch, forward_fn)
                flush()
    finally:
        for h in handles:
            h.remove()
    return stats


@dataclass
class ForwardTrace:
    """What one calibration forward showed: the targets in the order the
    pass first calls them (layers it never reaches last, in registration
    order), how often each is called, and per sample of the batch: the
    largest tensor any module produced, and the sum of the leaf modules'
    outputs (about what training keeps for the backward pass)."""

    order: list[SparseTarget]
    calls: dict[str, int]
    peak_bytes_per_sample: float
    total_bytes_per_sample: float


def trace_forward(model: nn.Module, batch, targets: list[SparseTarget], forward_fn: Callable, samples: int) -> ForwardTrace:
    """Run one calibration batch (``samples`` samples) and trace it."""
    seen: list[SparseTarget] = []
    calls = {t.name: 0 for t in targets}
    peak = total = 0

    def on_target(t):
        def hook(module, args):
            calls[t.name] += 1
            if t not in seen:
                seen.append(t)

        return hook

    def on_output(module, args, output):
        nonlocal peak, total
        if isinstance(output, torch.Tensor):
            size = output.numel() * output.element_size()
            peak = max(peak, size)
            total += size if next(module.children(), None) is None else 0

    handles = [t.module.register_forward_pre_hook(on_target(t)) for t in targets]
    handles += [m.register_forward_hook(on_output) for m in model.modules()]
    try:
        with calibration_mode(model):
            run_calibration_forward(model, batch, forward_fn)
    finally:
        for h in handles:
            h.remove()
    order = seen + [t for t in targets if t not in seen]
    samples = max(samples, 1)
    return ForwardTrace(order, calls, peak / samples, total / samples)


def progressive_pass(
    model: nn.Module,
    batch,
    targets: list[SparseTarget],
    forward_fn: Callable,
    visit: Callable[[SparseTarget, ActivityStats], None],
    correlate: Callable[[SparseTarget], bool],
    spiking: bool = False,
    chunk: int = 256,
) -> list[SparseTarget]:
    """One calibration forward that pauses at each target's input.

    At a target, ``visit(target, stats)`` gets the layer's input activity
    over the whole batch and may rewrite the layer's mask and weights before
    the layer runs, so each later layer sees the layers before it as they
    were just initialised: the per-layer passes of :func:`record_activity`
    with ``stop_after`` in one forward. Every target must be called once per
    forward (time-major input). Activity is gathered ``chunk`` samples at a
    time. The pass ends after the last target; the targets it visited are
    returned, in order."""
    time_steps = time_steps_of(batch, spiking)
    visited: list[SparseTarget] = []

    def hook_for(t: SparseTarget):
        def hook(module, args):
            x = args[0]
            stats = ActivityStats(t.n_in, correlate(t))
            # In chunks of samples, so im2col patches take no more memory than a batch's.
            for part in x.split(chunk, dim=1 if is_time_major(t, x, time_steps) else 0):
                steps, per_sample, _ = layer_rows(t, part, time_steps, correlate(t))
                stats.add(steps, per_sample)
            visit(t, stats)
            visited.append(t)
            if len(visited) == len(targets):
                raise _Stop

        return hook

    handles = [t.module.register_forward_pre_hook(hook_for(t)) for t in targets]
    try:
        with calibration_mode(model):
            run_calibration_forward(model, batch, forward_fn)
    finally:
        for h in handles:
            h.remove()
    return visited
