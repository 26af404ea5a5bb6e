"""The sparse engine: owns the masks, enforces them, evolves the topology.

    engine = SparseEngine(model, optimizer, {"method": "chsnn", "sparsity": 0.99},
                          calibration=train_loader)
    for x, y in loader:                     # an ordinary training loop
        loss_fn(model(x), y).backward()
        optimizer.step()                    # the engine hooks in after each step
        optimizer.zero_grad()

Masks are bool buffers ``weight_mask`` on the sparsified modules (so they
follow ``model.to(device)`` and ``model.state_dict()``; :mod:`chsnn.contracts`).
Gradients are masked as they are accumulated; after every optimizer step the
weights are masked again; at topology updates, links removed for good and
genuinely new links get weight 0 and zero optimizer state, while a link
removed and regrown in the same update keeps both.

The engine does the bookkeeping: buffers and hooks, RigL's gradient
accumulation, calibration passes, schedules, records and checkpoints. What
an update decides is computed by the pure functions of
:mod:`chsnn.sparse.topology` from masks and the scores of the configured
strategies (:mod:`chsnn.sparse.strategies`), each given an
:class:`~chsnn.sparse.context.UpdateContext` of the layer.

Data-parallel training passes ``sync=``, an :class:`EngineSync`
(:mod:`chsnn.sparse.sync`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from chsnn import linkpred
from chsnn.contracts import MASK, MASK_F  # noqa: F401  (re-exported: chsnn.distributed imports them from here)
from chsnn.sparse import layout, masking, strategies, summary, topology
from chsnn.sparse.calibration import ActivityStats, batch_input, record_activity, sample_dim, trace_forward
from chsnn.sparse.config import ConfigError, EngineConfig, make_config  # noqa: F401  (chsnn.sparse exports it from here)
from chsnn.sparse.context import UpdateContext, target_links
from chsnn.sparse.hebb import HebbRule
from chsnn.sparse.initialisation import CalibrationData, initial_mask, initial_weights, initialise_in_forward_order, warn_if_silent
from chsnn.sparse.sync import EngineSync
from chsnn.sparse.targets import KERNEL, LINEAR, SparseTarget

_STATE_VERSION = 1
TRACE_SAMPLES = 8  # samples the set-up trace of the forward runs on


class _Removal(NamedTuple):
    """One update's removal, per layer name."""

    before: dict  # the links before the update
    first: dict  # removed by the removal rule
    removed: dict  # and by chain removal
    chained: dict  # links chain removal added
    ms: dict  # time taken


def _default_forward(model: nn.Module, batch):
    return model(batch_input(batch))


class SparseEngine:
    """Dynamic sparse training of any PyTorch model (see module docstring).

    Args:
        model: the eager model (pass the original, not a ``torch.compile``
            wrapper; compiling it afterwards is fine).
        optimizer: hooked so the engine runs after every ``step()``; with
            ``None`` call ``engine.step()`` yourself after each step.
        config: ``EngineConfig``, dict, or method name; ``options`` override it.
        calibration: iterable of batches (``x`` or ``(x, y)``) for SSCTI/CSTI,
            SSWI and the activity-aware removal; its first
            ``calibration_samples`` samples (or ``calibration_batches``
            batches, when set) are kept on the model's device. Spiking models
            (``model.spiking``) take time-major batches ``(T, N, ...)``.
        forward_fn: ``forward_fn(model, batch)`` runs one calibration batch
            (default ``model(x)``); spiking states are reset after each call.
        row_groups: ``{layer name: [[output rows], ...]}``, groups that must
            each keep at least one link (attention heads' q/k/v blocks):
            regrowth refills a group left empty, unless chain removal emptied it.
        sync: :class:`EngineSync` hooks for data-parallel training (default:
            none, one process).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        config=None,
        *,
        calibration=None,
        forward_fn: Callable | None = None,
        row_groups: dict[str, list[list[int]]] | None = None,
        sync: EngineSync | None = None,
        **options,
    ):
        self.config = cfg = make_config(config, **options)
        self.model = model
        self.optimizer = optimizer
        self.forward_fn = forward_fn or _default_forward
        self.sync = sync if sync is not None else EngineSync()
        # Loss scale of mixed-precision training (GradScaler): RigL's dense
        # gradients are accumulated unscaled, non-finite ones skipped. A float
        # or a 0-dim tensor (no host sync); None when the loss is not scaled.
        self.loss_scale = None
        targets, self.dense_output = layout.sparse_targets(model, cfg)
        self.device = targets[0].weight.device
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step_count = 0
        self.n_updates = 0
        self.frozen: set[str] = set()
        self.records: list[dict] = []
        # Per layer, the (n_out, n_in) masks of the last update: before, removed, regrown.
        self.last_changes: dict[str, dict] = {}
        self._rigl_acc: dict[str, torch.Tensor] = {}
        self._handles: list = []
        # Spiking models take time-major input: calibration sums each sample's steps.
        self.spiking = bool(getattr(model, "spiking", False))
        # Turnover bookkeeping: each layer's initial mask.
        self.initial_masks: dict[str, torch.Tensor] = {}
        # Step of the second initialisation (reinit_fraction), once it ran.
        self.reinitialised_at: int | None = None
        self.calibration_data = CalibrationData.cache(calibration, self.device, cfg, self.spiking, self.sync.reduce_counts)
        self.calibration = self.calibration_data.batches if self.calibration_data else None
        layout.check_calibration(cfg, self.calibration)
        self.trace = None
        if self.calibration:
            probe, samples = self._trace_batch()
            self.trace = trace_forward(model, probe, targets, self.forward_fn, samples)
        self.targets = self.trace.order if self.trace else targets
        self.by_name = {t.name: t for t in self.targets}
        self.row_groups = layout.resolve_row_groups(row_groups or {}, self.targets, self.device)
        self.chains = layout.resolve_chains(cfg.chain, self.targets)
        self.successor = {a.name: b for a, b in self.chains}
        self.sparse = cfg.method != "dense"
        self.hebb = None
        if self.sparse:
            layout.check_feasible(self.targets, {cfg.density_at(0), 1.0 - cfg.sparsity})
            for t in self.targets:
                masking.add_buffers(t)
            self._initialise()
            self._arm_rigl()
        self._attach_hooks()

    # Set-up ------------------------------------------------------------------

    def _trace_batch(self):
        """The first few samples of the first calibration batch, and their
        count: the trace needs the forward's order and per-sample sizes only."""
        first = self.calibration[0]
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            return first, self.calibration_data.counts[0]
        dim = sample_dim(first, self.spiking)
        samples = min(TRACE_SAMPLES, first.shape[dim])
        return first.narrow(dim, 0, samples), samples

    def target_links(self, t: SparseTarget, density: float) -> int:
        """Links a layer keeps at a density: exact count for linear layers;
        for kernel layers the same count in every kernel."""
        return target_links(t.kind, t.n_out, t.n_in, t.kernel_size, density)

    def _context(self, t: SparseTarget, density: float, **fields) -> UpdateContext:
        """The layer's context for a decision at ``density``."""
        return UpdateContext.for_layer(t, self.config, self.generator, density, **fields)

    # Initialisation --------------------------------------------------------------

    def _initialise(self) -> None:
        """Topology (random / SSCTI / CSTI) and weights (keep / Kaiming / SWI
        / SSWI), layer by layer in forward order so each layer's calibration
        input already reflects the sparse layers before it
        (:func:`~chsnn.sparse.initialisation.initialise_in_forward_order`)."""
        cfg = self.config
        self.input_stats = None  # the first sparse layer's, for csti_tiled
        reads_activity = cfg.init in strategies.CORRELATED_INITS or cfg.weight_init in strategies.ACTIVITY_WEIGHT_INITS
        data = self.calibration_data if reads_activity else None
        self.init_passes = initialise_in_forward_order(  # calibration forwards the initialisation ran
            self.model, self.targets, data, self.trace, self.forward_fn, self._correlates, self._initialise_with, self.device
        )

    def _correlates(self, t: SparseTarget) -> bool:
        return self.config.init in strategies.CORRELATED_INITS and t.kind == LINEAR

    def _initialise_with(self, t: SparseTarget, stats: ActivityStats | None) -> None:
        if stats is not None:  # summed over the processes, checked for silence
            self.sync.reduce_activity({t.name: stats}, self.generator)
            warn_if_silent(t, stats, self.calibration_data.size(), self.config)
        self._initialise_layer(t, stats)

    def _initialise_layer(self, t: SparseTarget, stats: ActivityStats | None) -> None:
        if self.input_stats is None and stats is not None and stats.correlate:
            self.input_stats = stats
        ctx = self._context(t, self.config.density_at(0), stats=stats, input_stats=self.input_stats)
        with torch.no_grad():
            masking.set_mask(t, initial_mask(ctx))
            weights = initial_weights(ctx.replace(mask=t.as_2d(masking.mask_of(t))))
            if weights is None:  # the layer's own weights, masked
                t.weight.mul_(masking.mask_of(t))
            else:
                t.weight.copy_(weights.to(t.weight.dtype).view_as(t.weight))
            masking.zero_optimizer_state(self.optimizer, t, ~masking.mask_of(t))
            self.sync.agree(self, [t])
        self.initial_masks[t.name] = masking.mask_of(t).detach().clone()

    # Hooks -------------------------------------------------------------------------

    def _attach_hooks(self) -> None:
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step()))
        if not self.sparse:
            return
        # Gradients are masked twice. As backward accumulates them, so what
        # reads them before the step (gradient clipping's norm, a logger) sees
        # masked ones; RigL takes the dense gradient just before. And in the
        # step pre-hook, for whatever wrote .grad after backward (a hand-set
        # gradient, an all-reduce): the optimizer must only see masked ones.
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.mask_gradients()))
        for t in self.targets:
            self._handles.append(t.weight.register_post_accumulate_grad_hook(self._grad_hook(t)))
        if self.config.hebb is not None:
            self.hebb = HebbRule(self.targets, self.successor, **self.config.hebb)
            self.hebb.attach()

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero every sparse layer's gradient where its mask is off (the
        optimizer step pre-hook: masked weights stay exactly 0 with SGD, Adam
        and the other zero-preserving optimizers, whatever set ``.grad``)."""
        if not self.sparse:
            return
        for t in self.targets:
            if t.weight.grad is not None:
                masking.zero_masked(t, t.weight.grad)

    def _grad_hook(self, t: SparseTarget):
        def hook(param: torch.Tensor) -> None:
            if param.grad is None:
                return
            acc = self._rigl_acc.get(t.name)
            if acc is not None:  # RigL: the dense gradient, before masking
                if self.loss_scale is None:
                    acc.add_(param.grad)
                else:
                    acc.add_(torch.nan_to_num(param.grad, nan=0.0, posinf=0.0, neginf=0.0) / self.loss_scale)
            masking.zero_masked(t, param.grad)

        return hook

    def remove(self) -> None:
        """Detach hooks and mask buffers; the weights keep their zeros."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.hebb is not None:
            self.hebb.detach()
        if self.sparse:
            for t in self.targets:
                masking.remove_buffers(t)
            self.sparse = False

    # Training-time -----------------------------------------------------------

    def step(self) -> None:
        """After each optimizer step: Hebb term, masks, maybe an update."""
        self.step_count += 1
        if not self.sparse:
            return
        if self.hebb is not None:
            self.sync.reduce_hebb(self.hebb)
            self.hebb.apply(self.step_count)
        if self.remask_weights:
            self.apply_masks()
        if self.step_count == self.config.reinit_step:
            self.reinitialise()
        elif self.update_due(self.step_count):
            self.update_topology()
        self._arm_rigl()

    def reinitialise(self) -> None:
        """Draw the sparse layers' topology and weights again, on the trained
        model's calibration activity, with fresh optimizer state; early stop
        and turnover start again from the new topology."""
        self._initialise()
        for t in self.targets:
            masking.zero_optimizer_state(self.optimizer, t, torch.ones_like(t.weight, dtype=torch.bool))
        self._rigl_acc.clear()
        self.frozen.clear()
        self.reinitialised_at = self.step_count

    @property
    def remask_weights(self) -> bool:
        """Mask the weights again after every step: needed unless the
        optimizer is known to keep zeros at zero (``remask_weights`` option)."""
        if self.config.remask_weights is not None:
            return self.config.remask_weights
        return not masking.keeps_zeros(self.optimizer)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Masked weights -> exactly 0 (also where they hold NaN or inf)."""
        for t in self.targets:
            masking.zero_masked(t, t.weight)

    def update_due(self, step: int) -> bool:
        cfg = self.config
        return (
            self.sparse
            and cfg.regrowth != "none"
            and cfg.update_interval > 0
            and step % cfg.update_interval == 0
            and (cfg.end_step is None or step <= cfg.end_step)
            and len(self.frozen) < len(self.targets)
        )

    def _arm_rigl(self) -> None:
        """Sum dense gradients over the last ``rigl_accumulation`` steps
        before each update (and only then, to keep steps cheap), for a
        regrowth that reads them (RigL's ``gradient``)."""
        cfg = self.config
        if cfg.regrowth not in strategies.DENSE_GRADIENT_REGROWTHS or cfg.update_interval <= 0:
            return
        nxt = (self.step_count // cfg.update_interval + 1) * cfg.update_interval
        if nxt - self.step_count <= cfg.rigl_accumulation and self.update_due(nxt):
            for t in self.targets:
                if t.name not in self._rigl_acc:
                    self._rigl_acc[t.name] = torch.zeros_like(t.weight)

    # Topology update -----------------------------------------------------------

    @torch.no_grad()
    def update_topology(self) -> dict:
        """Remove a fraction zeta of each layer's links, chain-remove dead
        neurons, regrow to the (scheduled) density; returns the record."""
        cfg = self.config
        start = time.perf_counter()
        step = self.step_count
        zeta, density = cfg.zeta_at(step), cfg.density_at(step)
        active = [t for t in self.targets if t.name not in self.frozen]
        if self._rigl_acc:
            self.sync.reduce_gradients(self._rigl_acc)
        activity = self._activity() if cfg.removal == "lrs" else None
        contexts = {t.name: self._update_context(t, step, zeta, density, activity) for t in active}
        plan = self._remove(contexts)
        self.last_changes = {}
        layers = [self._regrow_and_commit(t, contexts[t.name], plan) for t in active]
        self._rigl_acc.clear()
        self.n_updates += 1
        self._freeze_converged(layers, density)
        self.sync.agree(self, active)
        record = {
            "step": step,
            "update": self.n_updates,
            "zeta": zeta,
            "density": density,
            "layers": layers,
            "percolation": self.percolation(),
            "ms": (time.perf_counter() - start) * 1e3,
        }
        self.records.append(record)
        return record

    def _remove(self, contexts: dict[str, UpdateContext]) -> _Removal:
        """Every layer's removal, then chain removal across the layers."""
        removed, ms = {}, {}
        for name, ctx in contexts.items():
            t0 = time.perf_counter()
            removed[name] = self._removal(ctx)
            ms[name] = (time.perf_counter() - t0) * 1e3
        before = {name: ctx.mask for name, ctx in contexts.items()}
        plan = _Removal(before, removed, removed, dict.fromkeys(removed, 0), ms)
        if self.config.chain_removal:
            chained_removed, chained = topology.chain_removal([(a.name, b.name) for a, b in self.chains], before, removed)
            plan = plan._replace(removed=chained_removed, chained=chained)
        return plan

    def _removal(self, ctx: UpdateContext) -> torch.Tensor:
        if ctx.kind == KERNEL:  # inside each kernel: the smallest magnitudes (MEST: plus c|g|)
            return topology.remove_per_kernel(ctx)
        name = self.config.removal
        return topology.removal(ctx, strategies.REMOVALS[name](ctx), soft=name in strategies.SOFT_REMOVALS)

    def _regrow_and_commit(self, t: SparseTarget, ctx: UpdateContext, plan: _Removal) -> dict:
        """Regrow the layer, commit its new mask; returns its record."""
        t0 = time.perf_counter()
        before, removed, chained = plan.before[t.name], plan.removed[t.name], plan.chained[t.name]
        after = before & ~removed
        ctx = ctx.replace(mask=after, removed=removed)
        scores = strategies.REGROWTHS[self.config.regrowth](ctx)
        regrown = topology.regrowth(ctx, scores)
        if t.name in self.row_groups:
            # groups that chain removal emptied stay empty
            emptied = topology.groups_emptied(self.row_groups[t.name], before & ~plan.first[t.name], after) if chained else None
            regrown = topology.refill_groups(self.row_groups[t.name], after, regrown, scores, self.generator, emptied)
        self._commit(t, topology.commit(before, removed, regrown))
        self.last_changes[t.name] = {"before": before, "removed": removed, "regrown": regrown}
        ms = plan.ms[t.name] + (time.perf_counter() - t0) * 1e3
        record = summary.update_record(t, masking.mask_of(t), removed, regrown, chained, ms)
        return {**record, **linkpred.take_choice()}  # CH regrowth: method/kernel/chunk that ran (issue 14)

    def _commit(self, t: SparseTarget, change: topology.Commit) -> None:
        """The new mask; weight and optimizer state 0 where the commit rule
        resets them."""
        reset = change.reset.reshape(-1).nonzero().squeeze(1)
        t.weight.view(-1)[reset] = 0
        masking.set_mask(t, change.mask)
        masking.zero_optimizer_state(self.optimizer, t, reset)

    def _freeze_converged(self, layers: list[dict], density: float) -> None:
        """Early stop: at the target density, a layer whose update regrew
        more than ``early_stop_overlap`` of the links it removed is frozen."""
        cfg = self.config
        at_target = abs(density - (1.0 - cfg.sparsity)) < 1e-12
        for rec in layers:
            if cfg.early_stop and at_target and rec["removed"] and rec["overlap"] > cfg.early_stop_overlap:
                self.frozen.add(rec["name"])
                rec["frozen"] = True

    def _activity(self) -> dict[str, dict]:
        """Presynaptic (and, through chains, postsynaptic) activity of each
        layer on the calibration batches: a neuron is inactive at exactly 0."""
        batches = self.calibration_data.first_samples(self.config.activity_samples)
        stats = record_activity(self.model, batches, self.targets, self.forward_fn, spiking=self.spiking)
        self.sync.reduce_activity(stats, self.generator)
        pre = {name: s.mean_abs.to(self.device) for name, s in stats.items()}
        return {
            t.name: {"pre": pre[t.name], "post": pre[self.successor[t.name].name] if t.name in self.successor else None}
            for t in self.targets
        }

    def _update_context(self, t: SparseTarget, step: int, zeta: float, density: float, activity) -> UpdateContext:
        """The layer's context at an update; ``mask`` is a copy of its links."""
        grad, acc = t.weight.grad, self._rigl_acc.get(t.name)
        return self._context(
            t,
            density,
            mask=t.as_2d(masking.mask_of(t)).clone(),
            step=step,
            zeta=zeta,
            weight=t.as_2d(t.weight.detach()),
            grad=None if grad is None else t.as_2d(grad.detach()),
            accumulated_grad=None if acc is None else t.as_2d(acc),
            activity=None if activity is None else activity[t.name],
        )

    # Reading ---------------------------------------------------------------------

    def mask(self, name: str) -> torch.Tensor:
        return masking.mask_of(self.by_name[name])

    def _mask_or_dense(self, t: SparseTarget) -> torch.Tensor:
        if self.sparse:
            return masking.mask_of(t)
        return torch.ones(t.n_out, t.n_in, dtype=torch.bool, device=self.device)

    def layer_stats(self, t: SparseTarget | str) -> dict:
        """Links, density and active neurons of one layer (kernel layers also
        give the min/max active positions per kernel)."""
        t = self.by_name[t] if isinstance(t, str) else t
        return summary.layer_stats(t, self._mask_or_dense(t))

    def stats(self) -> list[dict]:
        return [self.layer_stats(t) for t in self.targets]

    def sparsity(self) -> float:
        """Overall sparsity of the sparse layers."""
        links = sum(s["links"] for s in self.stats())
        return 1.0 - links / sum(t.numel for t in self.targets)

    def active_groups(self) -> dict[str, dict]:
        """Per grouped layer: how many row groups keep at least one link."""
        return {
            name: summary.active_groups(member, self.by_name[name].as_2d(self._mask_or_dense(self.by_name[name])))
            for name, member in self.row_groups.items()
        }

    def topology_summary(self) -> dict[str, dict]:
        """Per sparse layer, how far its topology evolved: ``turnover`` (the
        fraction of its initial links no longer present), the step it froze
        (early stop; None if it never did), its updates and the
        removed/regrown overlap of each."""
        masks = {t.name: masking.mask_of(t) for t in self.targets} if self.sparse else None
        return summary.topology_summary(self.targets, self.records, self.initial_masks, masks, self.reinitialised_at)

    def percolation(self) -> float:
        """Fraction of the sparse linear layers' output neurons still linked."""
        if not self.sparse:
            return 1.0
        return summary.percolation(self.targets, {t.name: masking.mask_of(t) for t in self.targets})

    def __repr__(self) -> str:
        lines = [
            f"SparseEngine(method={self.config.method}, sparsity={self.config.sparsity}, step={self.step_count}, updates={self.n_updates})"
        ]
        for s in self.stats():
            lines.append(f"  {s['name']}: {s['kind']} {'x'.join(map(str, s['shape']))} density {s['density']:.4f}")
        if self.dense_output:
            lines.append(f"  {self.dense_output}: output layer, dense")
        return "\n".join(lines)

    # Checkpoints -----------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "config": dataclasses.asdict(self.config),
            "step": self.step_count,
            "n_updates": self.n_updates,
            "frozen": sorted(self.frozen),
            "initial_masks": {k: v.detach().cpu().clone() for k, v in self.initial_masks.items()},
            "generator": self.generator.get_state(),
            "masks": {t.name: masking.mask_of(t).detach().cpu().clone() for t in self.targets} if self.sparse else {},
            "rigl_acc": {k: v.detach().cpu().clone() for k, v in self._rigl_acc.items()},
            "hebb": self.hebb.state_dict() if self.hebb is not None else {},
            "records": copy.deepcopy(self.records),
            "reinitialised_at": self.reinitialised_at,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"engine state version {state.get('version')!r} is not {_STATE_VERSION}; it was written by another chsnn")
        names = set(state["masks"])
        if self.sparse and names != set(self.by_name):
            raise ValueError(f"engine state is for layers {sorted(names)}, this engine has {sorted(self.by_name)}")
        self.step_count = state["step"]
        self.n_updates = state["n_updates"]
        self.frozen = set(state["frozen"])
        self.initial_masks = {k: v.to(self.device) for k, v in state.get("initial_masks", {}).items()}
        self.generator.set_state(state["generator"])
        for name, mask in state["masks"].items():
            masking.set_mask(self.by_name[name], mask.to(self.device))
        if self.sparse:
            self.apply_masks()
        self._rigl_acc = {k: v.to(self.device) for k, v in state["rigl_acc"].items()}
        if self.hebb is not None:
            self.hebb.load_state_dict(state["hebb"], self.device)
        self.records = copy.deepcopy(state["records"])
        self.reinitialised_at = state.get("reinitialised_at")
