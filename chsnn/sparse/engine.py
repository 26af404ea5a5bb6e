"""The sparse engine: owns the masks, enforces them, evolves the topology.

    engine = SparseEngine(model, optimizer, {"method": "chsnn", "sparsity": 0.99},
                          calibration=train_loader)
    for x, y in loader:                     # an ordinary training loop
        loss_fn(model(x), y).backward()
        optimizer.step()                    # the engine hooks in after each step
        optimizer.zero_grad()

Masks are bool buffers ``weight_mask`` on the sparsified modules (so they
follow ``model.to(device)`` and ``model.state_dict()``). Gradients are masked
as they are accumulated; after every optimizer step the weights are masked
again; at topology updates, links removed for good and genuinely new links
get weight 0 and zero optimizer state, while a link removed and regrown in
the same update keeps both.

Data-parallel training (several processes, each with a copy of the model and
its own share of every batch) passes ``sync=``: an :class:`EngineSync` whose
hooks the engine calls before each decision, to reduce the statistics the
decision reads (calibration activity, RigL's dense gradients, Hebb's
activations) over the processes, and after it, so every process holds the
same masks, weights, optimizer state and RNG
(:class:`chsnn.distributed.DistributedSync`). The default does nothing, and
the engine never imports ``torch.distributed``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from typing import Callable

import torch
from torch import nn

from chsnn import linkpred
from chsnn.sparse.calibration import ActivityStats, batch_input, progressive_pass, record_activity, to_device, trace_forward
from chsnn.sparse.config import ConfigError, EngineConfig
from chsnn.sparse.hebb import HebbRule
from chsnn.sparse import strategies
from chsnn.sparse.masks import any_along, count
from chsnn.sparse.select import sample_weighted, select_top, select_top_per_row
from chsnn.sparse.targets import KERNEL, LINEAR, SparseTarget, find_targets

MASK = "weight_mask"
# Initialisation in one forward over all calibration samples when its
# largest tensor, times LIVE_TENSORS alive at once, fits this budget.
ONE_PASS_BYTES = 2 << 30
LIVE_TENSORS = 4
MASK_F = "weight_mask_f"  # the same mask in the weight's dtype: multiplying by it is ~8x faster than by a bool
_STATE_VERSION = 1
# Optimizers whose step leaves a weight at exactly 0 when its gradient and its
# state are 0 there (the engine masks gradients and zeroes state), so the
# weights need no second masking after each step.
_ZERO_PRESERVING = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)


class EngineSync:
    """Hooks that keep the engines of data-parallel processes identical; this
    default, for a single process, does nothing. Every process calls each
    hook at the same point of the same engine code, so a hook may run
    collective operations."""

    def reduce_activity(self, stats: dict, generator: torch.Generator) -> None:
        """In place: this process's ``ActivityStats`` (calibration or
        activity pass, one per layer name) -> those of all processes."""

    def reduce_counts(self, counts: list[int]) -> list[int]:
        """This process's sample count of each calibration batch -> the
        counts of the global batches (summed over the processes)."""
        return counts

    def reduce_hebb(self, rule: HebbRule) -> None:
        """In place: the last forward's mean activations (``rule.pre``,
        ``rule.out``) -> their mean over all processes' samples."""

    def reduce_gradients(self, accumulated: dict[str, torch.Tensor]) -> None:
        """In place: RigL's accumulated dense gradients -> summed over the
        processes (each process's loss is its share of the global mean)."""

    def agree(self, engine: "SparseEngine", targets: list[SparseTarget]) -> None:
        """After a decision (a layer's initial topology, a topology update):
        make every process hold one process's masks, weights and optimizer
        state of ``targets``, and its engine RNG and frozen layers."""


def one_pass_budget(device: torch.device, training_bytes: float) -> float:
    """Memory a one-forward initialisation may take: ``ONE_PASS_BYTES``, or
    what a training step keeps for its backward pass (``training_bytes``)
    when that is more; on a GPU no more than half of its free memory."""
    budget = max(ONE_PASS_BYTES, training_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, free // 2)
    return budget


def _default_forward(model: nn.Module, batch):
    return model(batch_input(batch))


def make_config(config=None, **options) -> EngineConfig:
    """EngineConfig from a config, a dict, a method name or keywords."""
    if isinstance(config, EngineConfig):
        return EngineConfig.from_dict(dataclasses.asdict(config), **options)
    if isinstance(config, str):
        return EngineConfig.from_dict({"method": config}, **options)
    if config is None or isinstance(config, dict):
        return EngineConfig.from_dict(config, **options)
    raise ConfigError(f"config must be an EngineConfig, a dict or a method name, not {type(config).__name__}")


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
        targets, self.dense_output = find_targets(model, cfg.include, cfg.exclude, cfg.sparsify_output)
        if not targets:
            raise ConfigError(
                f"no sparsifiable layer in {type(model).__name__}: the engine sparsifies nn.Linear, 1x1 Conv1d/Conv2d "
                f"and k x k Conv2d with groups=1 (include={cfg.include}, exclude={cfg.exclude}); "
                + ("its only such layer is the output layer, kept dense unless sparsify_output=True" if self.dense_output else "")
            )
        for t in targets:
            if hasattr(t.module, MASK):
                raise ConfigError(f"{t.describe()} already has a {MASK}: another engine is attached; call its remove() first")
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
        self.calibration = self._cache_calibration(calibration)
        missing = self._calibration_uses()
        if missing and self.calibration is None:
            raise ConfigError(
                f"method {cfg.method!r} needs calibration batches for {', '.join(missing)}: pass calibration=<a loader of input batches>, "
                "or switch those stages to their baselines (init=random, weight_init=kaiming, removal=magnitude)"
            )
        self.trace = None
        if self.calibration:
            self.trace = trace_forward(model, self.calibration[0], targets, self.forward_fn, self._calibration_counts[0])
        self.targets = self.trace.order if self.trace else targets
        self.by_name = {t.name: t for t in self.targets}
        self.row_groups = self._resolve_row_groups(row_groups or {})
        self.chains = self._resolve_chains()
        self.successor = {a.name: b for a, b in self.chains}
        self.sparse = cfg.method != "dense"
        self.hebb = None
        if self.sparse:
            self._check_feasible(cfg.density_at(0))
            for t in self.targets:
                t.module.register_buffer(MASK, torch.ones_like(t.weight, dtype=torch.bool), persistent=True)
                t.module.register_buffer(MASK_F, torch.ones_like(t.weight), persistent=False)
            self._initialise()
            self._arm_rigl()
        self._attach_hooks()

    # Set-up ------------------------------------------------------------------

    def _cache_calibration(self, loader):
        if loader is None:
            return None
        cfg = self.config
        batches, counts = [], []
        for batch in loader:
            batches.append(to_device(batch, self.device))
            counts.append(self._batch_samples(batches[-1]))
            if len(batches) >= (cfg.calibration_batches or float("inf")):
                break
            if cfg.calibration_batches is None and sum(counts) >= cfg.calibration_samples:
                break
        if not batches:
            raise ConfigError("the calibration loader yielded no batch; give it at least one batch of inputs")
        # Global sample counts per batch, so every process picks the same batches.
        self._calibration_counts = self.sync.reduce_counts(counts)
        return batches

    def _batch_samples(self, batch) -> int:
        """Samples in a calibration batch (time-major for spiking models)."""
        x = batch_input(batch)
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return 1
        return x.shape[1] if self.spiking and x.dim() > 1 else x.shape[0]

    def _activity_batches(self) -> list:
        """The first calibration batches, up to ``activity_samples`` samples."""
        out, samples = [], 0
        for batch, n in zip(self.calibration, self._calibration_counts):
            out.append(batch)
            samples += n
            if samples >= self.config.activity_samples:
                break
        return out

    def _calibration_uses(self) -> list[str]:
        cfg = self.config
        uses = []
        if cfg.method == "dense":
            return uses
        if cfg.init in ("sscti", "csti"):
            uses.append(f"init={cfg.init}")
        if cfg.weight_init == "sswi":
            uses.append("weight_init=sswi")
        if cfg.removal == "lrs":
            uses.append("removal=lrs (inactive neurons)")
        return uses

    def _resolve_chains(self) -> list[tuple[SparseTarget, SparseTarget]]:
        """Pairs (a, b) where a's output neurons are b's input neurons."""
        chain = self.config.chain
        if chain == "none":
            return []
        if chain == "auto":
            linear = [t for t in self.targets if t.kind == LINEAR]
            return [(a, b) for a, b in zip(linear, linear[1:]) if a.n_out == b.n_in]
        pairs = []
        for pair in chain:
            if len(pair) != 2 or any(name not in self.by_name for name in pair):
                raise ConfigError(f"chain pair {pair!r} must name two sparse layers out of {sorted(self.by_name)}")
            a, b = (self.by_name[name] for name in pair)
            if a.kind != LINEAR or b.kind != LINEAR or a.n_out != b.n_in:
                raise ConfigError(f"chain pair {pair!r}: {a.describe()} outputs must be {b.describe()} inputs (linear layers, {a.n_out} vs {b.n_in})")
            pairs.append((a, b))
        return pairs

    def _resolve_row_groups(self, groups: dict) -> dict[str, torch.Tensor]:
        """Each group as a row-membership matrix (groups x n_out), on device."""
        out = {}
        for name, rows in groups.items():
            if name not in self.by_name:
                continue  # a layer the config left dense
            t = self.by_name[name]
            if t.kind != LINEAR or any(not 0 <= r < t.n_out for g in rows for r in g):
                raise ConfigError(f"row_groups for {t.describe()}: rows must index its {t.n_out} outputs")
            member = torch.zeros(len(rows), t.n_out, dtype=torch.bool, device=self.device)
            for i, g in enumerate(rows):
                member[i, list(g)] = True
            out[name] = member
        return out

    def active_groups(self) -> dict[str, dict]:
        """Per grouped layer: how many row groups keep at least one link."""
        out = {}
        for name, member in self.row_groups.items():
            t = self.by_name[name]
            rows_alive = any_along(t.as_2d(getattr(t.module, MASK)), 1) if self.sparse else torch.ones(t.n_out, dtype=torch.bool, device=self.device)
            alive = (member & rows_alive.unsqueeze(0)).any(1)
            out[name] = {"active": count(alive), "total": member.shape[0], "alive": alive.tolist()}
        return out

    def target_links(self, t: SparseTarget, density: float) -> int:
        """Links a layer keeps at a density: exact count for linear layers;
        for kernel layers the same count in every kernel."""
        if t.kind == KERNEL:
            return self._per_kernel(t, density) * (t.numel // t.kernel_size)
        return round(density * t.numel)

    @staticmethod
    def _per_kernel(t: SparseTarget, density: float) -> int:
        return round(density * t.kernel_size)

    def _check_feasible(self, density: float) -> None:
        for d in {density, 1.0 - self.config.sparsity}:
            for t in self.targets:
                if self.target_links(t, d) < 1:
                    unit = f"of the {t.kernel_size} positions of each kernel" if t.kind == KERNEL else f"of {t.numel} links"
                    raise ConfigError(
                        f"sparsity {1 - d:g} leaves {t.describe()} with no link ({d:g} {unit}); lower the sparsity or exclude the layer"
                    )

    def _initialise(self) -> None:
        """Topology (random / SSCTI / CSTI) and weights (keep / Kaiming / SWI
        / SSWI), layer by layer in forward order so each layer's calibration
        input already reflects the sparse layers before it: in one forward
        over all calibration samples when it fits in memory, else in one
        (partial) pass per layer."""
        cfg = self.config
        self.input_stats = None  # the first sparse layer's, for csti_tiled
        self.init_passes = 0  # calibration forwards the initialisation ran
        if not (self.calibration and (cfg.init in strategies.CORRELATED_INITS or cfg.weight_init == "sswi")):
            for t in self.targets:
                self._initialise_layer(t, None)
            return
        combined = self._one_pass_batch()
        if combined is None:
            for t in self.targets:
                stats = record_activity(
                    self.model, self.calibration, [t], self.forward_fn, correlate=self._correlates(t), stop_after=t, spiking=self.spiking
                )
                self._initialise_layer(t, self._reduced(t, stats[t.name]))
            self.init_passes = len(self.targets)
            return
        chunk = self._calibration_counts[0]
        visited = progressive_pass(self.model, combined, self.targets, self.forward_fn, self._initialise_seen, self._correlates, self.spiking, chunk)
        self.init_passes = 1
        for t in self.targets:  # layers the forward never reaches: no activity
            if t not in visited:
                self._initialise_layer(t, self._reduced(t, ActivityStats(t.n_in, self._correlates(t))))

    def _initialise_seen(self, t: SparseTarget, stats: ActivityStats) -> None:
        self._initialise_layer(t, self._reduced(t, stats))

    def _correlates(self, t: SparseTarget) -> bool:
        return self.config.init in strategies.CORRELATED_INITS and t.kind == LINEAR

    def _one_pass_batch(self):
        """All calibration inputs as one batch, when a forward over it stays
        within :func:`one_pass_budget` (estimated from the traced forward's
        largest tensor) and every sparse layer runs once per forward; else None."""
        if not all(isinstance(b, torch.Tensor) for b in self.calibration) or any(n > 1 for n in self.trace.calls.values()):
            return None
        estimate = LIVE_TENSORS * self.trace.peak_bytes_per_sample * self._calibration_size()
        if estimate > one_pass_budget(self.device, self.trace.total_bytes_per_sample * self._calibration_counts[0]):
            return None
        dim = 1 if self.spiking and self.calibration[0].dim() > 1 else 0
        return torch.cat(self.calibration, dim=dim) if len(self.calibration) > 1 else self.calibration[0]

    def _reduced(self, t: SparseTarget, stats: ActivityStats) -> ActivityStats:
        """The layer's activity summed over the processes, checked for silence."""
        self.sync.reduce_activity({t.name: stats}, self.generator)
        self._warn_if_silent(t, stats)
        return stats

    def _initialise_layer(self, t: SparseTarget, stats: ActivityStats | None) -> None:
        density = self.config.density_at(0)
        if self.input_stats is None and stats is not None and stats.correlate:
            self.input_stats = stats
        mask = self._initial_mask(t, density, stats)
        with torch.no_grad():
            self._set_mask(t, mask)
            self._init_weights(t, stats)
            self._zero_optimizer_state(t, ~getattr(t.module, MASK))
            self.sync.agree(self, [t])
        self.initial_masks[t.name] = getattr(t.module, MASK).detach().clone()

    def _warn_if_silent(self, t: SparseTarget, stats) -> None:
        """Calibration that sees no activity cannot inform the layer: say so."""
        if not stats.any_active:
            warnings.warn(
                f"{t.describe()}: none of its {t.n_in} inputs was active on the {self._calibration_size()} calibration samples, so "
                f"init={self.config.init} falls back to a random topology and weight_init={self.config.weight_init} to the in-degree "
                "(firing rate 1); check the input data and the neurons' thresholds, or give more calibration data",
                RuntimeWarning,
                stacklevel=3,
            )

    def _calibration_size(self) -> int:
        return sum(self._calibration_counts)

    def _initial_mask(self, t: SparseTarget, density: float, stats) -> torch.Tensor:
        if t.kind == KERNEL:  # CHT-Conv: random per-kernel masks
            rows = torch.ones(t.numel // t.kernel_size, t.kernel_size, dtype=torch.bool, device=self.device)
            return select_top_per_row(None, rows, self._per_kernel(t, density), self.generator)
        init = self.config.init if stats is not None and stats.any_active else "random"
        if init == "csti_tiled":
            stats = self.input_stats
        return strategies.TOPOLOGY_INITS[init](t.n_out, t.n_in, self.target_links(t, density), stats, self.config, self.generator)

    def _init_weights(self, t: SparseTarget, stats) -> None:
        mask2d = t.as_2d(getattr(t.module, MASK))
        std = strategies.WEIGHT_INITS[self.config.weight_init](self.config, t.n_in, mask2d, stats)
        if self.config.weight_init == "sswi" and stats is not None and stats.any_active:
            effective = mask2d.to(torch.float64) @ stats.second_moment.to(mask2d.device)
            fell_back = int(((effective <= 1e-12) & mask2d.any(1)).sum())
            if fell_back:
                warnings.warn(
                    f"{t.describe()}: {fell_back} of its {t.n_out} output neurons have only silent inputs on the calibration data; "
                    "SSWI scales their weights by their in-degree (firing rate 1)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if std is None:
            t.weight.mul_(getattr(t.module, MASK))
            return
        noise = torch.randn(t.n_out, t.n_in, generator=self.generator, device=self.device, dtype=torch.float64)
        t.weight.copy_((noise * std * mask2d).to(t.weight.dtype).view_as(t.weight))

    def _attach_hooks(self) -> None:
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step()))
        if not self.sparse:
            return
        if self.optimizer is not None:  # whatever set .grad (backward, a hand-set gradient, a clip): masked before the step
            self._handles.append(self.optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.mask_gradients()))
        for t in self.targets:
            self._handles.append(t.weight.register_post_accumulate_grad_hook(self._grad_hook(t)))
        if self.config.hebb is not None:
            self.hebb = HebbRule(self.targets, self.successor, **self.config.hebb)
            self.hebb.attach()

    def _set_mask(self, t: SparseTarget, mask: torch.Tensor) -> None:
        getattr(t.module, MASK).copy_(mask.view_as(t.weight))
        getattr(t.module, MASK_F).copy_(mask.view_as(t.weight))

    @staticmethod
    def _float_mask(t: SparseTarget) -> torch.Tensor:
        mask_f = getattr(t.module, MASK_F)
        if mask_f.dtype != t.weight.dtype:  # the model was cast after the engine attached
            mask_f = getattr(t.module, MASK).to(t.weight.dtype)
            setattr(t.module, MASK_F, mask_f)
        return mask_f

    def _zero_masked(self, t: SparseTarget, x: torch.Tensor) -> None:
        """In place: ``x`` (the weight or its gradient) exactly 0 where the
        mask is off, whatever it holds there (a multiplication leaves NaN * 0
        = NaN). On the CPU a multiplication by the float mask is ~10x faster
        than a boolean fill, so it is the fast path, checked by one sum."""
        if x.device.type == "cpu":
            x.mul_(self._float_mask(t))
            if bool(torch.isfinite(x.sum())):
                return
        x.masked_fill_(~getattr(t.module, MASK), 0)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero every sparse layer's gradient where its mask is off (the
        optimizer step pre-hook: masked weights stay exactly 0 with SGD, Adam
        and the other zero-preserving optimizers, whatever set ``.grad``)."""
        if not self.sparse:
            return
        for t in self.targets:
            if t.weight.grad is not None:
                self._zero_masked(t, t.weight.grad)

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
            self._zero_masked(t, param.grad)

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
                for name in (MASK, MASK_F):
                    if hasattr(t.module, name):
                        delattr(t.module, name)
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
        if self.update_due(self.step_count):
            self.update_topology()
        self._arm_rigl()

    @property
    def remask_weights(self) -> bool:
        """Mask the weights again after every step: needed unless the
        optimizer is known to keep zeros at zero (``remask_weights`` option)."""
        if self.config.remask_weights is not None:
            return self.config.remask_weights
        return self.optimizer is None or type(self.optimizer) not in _ZERO_PRESERVING

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Masked weights -> exactly 0 (also where they hold NaN or inf)."""
        for t in self.targets:
            self._zero_masked(t, t.weight)

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
        before each update (and only then, to keep steps cheap)."""
        cfg = self.config
        if cfg.regrowth != "gradient" or cfg.update_interval <= 0:
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
        plans = {}
        for t in active:
            t0 = time.perf_counter()
            before = t.as_2d(getattr(t.module, MASK)).clone()
            removed = self._removal(t, before, zeta, density, activity, step)
            plans[t.name] = {"before": before, "removed": removed, "chain": 0, "ms": (time.perf_counter() - t0) * 1e3}
        if cfg.chain_removal:
            for plan in plans.values():
                plan["removed_before_chain"] = plan["removed"]
            self._chain_remove(plans)
        layers = []
        self.last_changes = {}
        for t in active:
            plan = plans[t.name]
            t0 = time.perf_counter()
            after = plan["before"] & ~plan["removed"]
            regrown = self._regrowth(t, after, plan["removed"], density)
            if t.name in self.row_groups:
                regrown = self._refill_groups(t, plan, after, regrown)
            self._commit(t, plan["removed"], regrown, after | regrown)
            self.last_changes[t.name] = {"before": plan["before"], "removed": plan["removed"], "regrown": regrown}
            layers.append(self._layer_record(t, plan, regrown, plan["ms"] + (time.perf_counter() - t0) * 1e3))
        self._rigl_acc.clear()
        self.n_updates += 1
        for rec in layers:
            at_target = abs(density - (1.0 - cfg.sparsity)) < 1e-12
            if cfg.early_stop and at_target and rec["removed"] and rec["overlap"] > cfg.early_stop_overlap:
                self.frozen.add(rec["name"])
                rec["frozen"] = True
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

    def _activity(self) -> dict[str, dict]:
        """Presynaptic (and, through chains, postsynaptic) activity of each
        layer on the calibration batches: a neuron is inactive at exactly 0."""
        stats = record_activity(self.model, self._activity_batches(), self.targets, self.forward_fn, spiking=self.spiking)
        self.sync.reduce_activity(stats, self.generator)
        pre = {name: s.mean_abs.to(self.device) for name, s in stats.items()}
        return {t.name: {"pre": pre[t.name], "post": pre[self.successor[t.name].name] if t.name in self.successor else None} for t in self.targets}

    def _removal(self, t: SparseTarget, before: torch.Tensor, zeta: float, density: float, activity, step: int) -> torch.Tensor:
        cfg = self.config
        grad = t.weight.grad
        if t.kind == KERNEL:  # inside each kernel: the smallest magnitudes (MEST: plus c|g|)
            rows = t.as_kernels(before)
            per = count(rows[0])
            n = min(per, round(zeta * per) + max(0, per - self._per_kernel(t, density)))
            scores = t.weight.detach().abs().to(torch.float64).reshape(-1)
            if cfg.removal == "mest" and grad is not None:
                scores = scores + cfg.mest_grad_coeff * grad.detach().abs().to(torch.float64).reshape(-1)
            return t.as_2d(select_top_per_row(t.as_kernels(scores), rows, n, self.generator, largest=False))
        # Linear layers: score the existing links only, as a list.
        link = before.reshape(-1).nonzero().squeeze(1)
        n = min(link.numel(), round(zeta * link.numel()) + max(0, link.numel() - self.target_links(t, density)))
        links = strategies.LinkScores(
            magnitude=t.weight.detach().reshape(-1)[link].abs().to(torch.float64),
            rows=link // t.n_in,
            cols=link % t.n_in,
            n_out=t.n_out,
            n_in=t.n_in,
            cfg=cfg,
            grad=None if grad is None else grad.detach().reshape(-1)[link].abs().to(torch.float64),
            activity=None if activity is None else activity[t.name],
        )
        scores = strategies.REMOVALS[cfg.removal](links)
        everyone = torch.ones(link.numel(), dtype=torch.bool, device=self.device)
        if cfg.removal in strategies.SOFT_REMOVALS:  # keep links sampled by score^T
            keep = sample_weighted(scores.pow(cfg.temperature_at(step)), everyone, link.numel() - n, self.generator)
            return self._links_to_mask(before, link[~keep])
        return self._links_to_mask(before, link[select_top(scores, everyone, n, self.generator, largest=False)])

    @staticmethod
    def _links_to_mask(like: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(like)
        out.view(-1)[flat_index] = True
        return out

    def _chain_remove(self, plans: dict) -> None:
        """A hidden neuron left without incoming links loses its outgoing ones
        and vice versa, repeated through the stack until nothing changes."""
        changed = True
        while changed:
            changed = False
            for a, b in self.chains:
                if a.name not in plans or b.name not in plans:
                    continue
                pa, pb = plans[a.name], plans[b.name]
                ma, mb = pa["before"] & ~pa["removed"], pb["before"] & ~pb["removed"]
                kill_b = mb & ~any_along(ma, 1).unsqueeze(0)
                kill_a = ma & ~any_along(mb, 0).unsqueeze(1)
                for plan, kill in ((pa, kill_a), (pb, kill_b)):
                    n = count(kill)
                    if n:
                        plan["removed"] = plan["removed"] | kill
                        plan["chain"] += n
                        changed = True

    def _regrowth(self, t: SparseTarget, after: torch.Tensor, removed: torch.Tensor, density: float) -> torch.Tensor:
        cfg = self.config
        candidates = ~after if cfg.regrow_removed else ~after & ~removed
        scores = strategies.REGROWTHS[cfg.regrowth](self, t, after)
        if t.kind == KERNEL:
            rows_after = t.as_kernels(after)
            n = self._per_kernel(t, density) - count(rows_after[0])
            rows_cand = t.as_kernels(candidates)
            if int(rows_cand.sum(1).min()) < n:  # a kernel has too few: allow re-growing removed
                rows_cand = ~rows_after
            kscores = None if scores is None else t.as_kernels(scores)
            return t.as_2d(select_top_per_row(kscores, rows_cand, n, self.generator))
        n = self.target_links(t, density) - int(torch.count_nonzero(after))
        if int(torch.count_nonzero(candidates)) < n:
            candidates = ~after
        if cfg.soft_regrowth and scores is not None:
            return sample_weighted(scores, candidates, n, self.generator)
        return select_top(scores, candidates, n, self.generator)

    def _refill_groups(self, t: SparseTarget, plan: dict, after: torch.Tensor, regrown: torch.Tensor) -> torch.Tensor:
        """Give every row group left without links one regrown link, taken
        from a group that keeps others; groups emptied by chain removal stay
        empty. The count of regrown links is unchanged."""
        member = self.row_groups[t.name]
        chain_emptied = torch.zeros(member.shape[0], dtype=torch.bool, device=self.device)
        if plan["chain"]:
            before_chain = plan["before"] & ~plan.get("removed_before_chain", plan["removed"])
            chain_emptied = (member & any_along(before_chain, 1)).any(1) & ~(member & any_along(after, 1)).any(1)
        regrown = regrown.clone()
        scores = None
        for g in range(member.shape[0]):
            new_rows = any_along(after | regrown, 1)
            if bool((member[g] & new_rows).any()) or bool(chain_emptied[g]):
                continue
            # one link into the group: the best candidate in its rows (random ties)
            in_group = member[g].unsqueeze(1) & ~after & ~regrown
            if scores is None:
                scores = strategies.REGROWTHS[self.config.regrowth](self, t, after)
            pick = select_top(scores, in_group, 1, self.generator)
            # and one fewer elsewhere: the weakest regrown link of a group that keeps links
            per_row = (after | regrown).sum(1)
            donor_rows = per_row > 1
            donors = regrown & donor_rows.unsqueeze(1)
            if not bool(donors.any()) or not bool(pick.any()):
                continue
            drop = select_top(scores, donors, 1, self.generator, largest=False)
            regrown = (regrown & ~drop) | pick
        return regrown

    def _commit(self, t: SparseTarget, removed: torch.Tensor, regrown: torch.Tensor, new: torch.Tensor) -> None:
        """New mask; weights and optimizer state zero at links removed for
        good and at genuinely new links (they start at weight 0). A link
        removed and regrown in the same update keeps its weight and its
        optimizer state, as in the CHT reference."""
        w = t.weight
        changed = (removed ^ regrown).reshape(-1).nonzero().squeeze(1)
        w.view(-1)[changed] = 0
        self._set_mask(t, new)
        self._zero_optimizer_state(t, changed)

    def _zero_optimizer_state(self, t: SparseTarget, where: torch.Tensor) -> None:
        """Zero every weight-shaped optimizer state (momentum, Adam moments)
        at ``where``: a bool mask, or flat indices."""
        if self.optimizer is None:
            return
        for value in self.optimizer.state.get(t.weight, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == t.weight.shape:
                if where.dtype == torch.bool:
                    value.masked_fill_(where, 0)
                else:
                    value.view(-1)[where] = 0

    def _layer_record(self, t: SparseTarget, plan: dict, regrown: torch.Tensor, ms: float) -> dict:
        removed = plan["removed"]
        n_removed = count(removed)
        stats = self.layer_stats(t)
        return {
            "name": t.name,
            "links": stats["links"],
            "density": stats["density"],
            "removed": n_removed,
            "chain_removed": plan["chain"],
            "regrown": count(regrown),
            "overlap": count(removed & regrown) / n_removed if n_removed else 0.0,
            "active_in": stats["active_in"],
            "active_out": stats["active_out"],
            "frozen": False,
            "ms": ms,
            **linkpred.take_choice(),  # CH regrowth: method/kernel/chunk that ran (issue 14)
        }

    # Reading ---------------------------------------------------------------------

    def mask(self, name: str) -> torch.Tensor:
        return getattr(self.by_name[name].module, MASK)

    def layer_stats(self, t: SparseTarget | str) -> dict:
        """Links, density and active neurons of one layer (kernel layers also
        give the min/max active positions per kernel)."""
        t = self.by_name[t] if isinstance(t, str) else t
        m = t.as_2d(getattr(t.module, MASK)) if self.sparse else torch.ones(t.n_out, t.n_in, dtype=torch.bool)
        links = count(m)
        out = {
            "name": t.name,
            "kind": t.kind,
            "shape": list(t.weight.shape),
            "links": links,
            "density": links / t.numel,
            "active_out": count(any_along(m, 1)),
        }
        if t.kind == KERNEL:
            per_kernel = t.as_kernels(m).sum(1)
            channels = any_along(m.reshape(t.n_out, -1, t.kernel_size), 2)
            out.update(active_in=count(any_along(channels, 0)), kernel_active_min=int(per_kernel.min()), kernel_active_max=int(per_kernel.max()))
        else:
            out["active_in"] = count(any_along(m, 0))
        return out

    def stats(self) -> list[dict]:
        return [self.layer_stats(t) for t in self.targets]

    def sparsity(self) -> float:
        """Overall sparsity of the sparse layers."""
        links = sum(s["links"] for s in self.stats())
        return 1.0 - links / sum(t.numel for t in self.targets)

    def topology_summary(self) -> dict[str, dict]:
        """Per sparse layer, how far its topology evolved: ``turnover`` (the
        fraction of its initial links no longer present), the step it froze
        (early stop; None if it never did), its updates and the
        removed/regrown overlap of each."""
        out = {}
        frozen_at = {rec["name"]: r["step"] for r in self.records for rec in r["layers"] if rec["frozen"]}
        for t in self.targets:
            overlaps = [rec["overlap"] for r in self.records for rec in r["layers"] if rec["name"] == t.name and rec["removed"]]
            initial = self.initial_masks.get(t.name)
            turnover = 0.0
            if self.sparse and initial is not None and bool(initial.any()):
                kept = count(initial & getattr(t.module, MASK))
                turnover = 1.0 - kept / count(initial)
            out[t.name] = {
                "turnover": turnover,
                "frozen_at_step": frozen_at.get(t.name),
                "updates": len(overlaps),
                "overlaps": overlaps,
            }
        return out

    def percolation(self) -> float:
        """Fraction of the sparse linear layers' output neurons still linked."""
        linear = [t for t in self.targets if t.kind == LINEAR]
        if not linear or not self.sparse:
            return 1.0
        alive = sum(count(any_along(t.as_2d(getattr(t.module, MASK)), 1)) for t in linear)
        return alive / sum(t.n_out for t in linear)

    def __repr__(self) -> str:
        lines = [f"SparseEngine(method={self.config.method}, sparsity={self.config.sparsity}, step={self.step_count}, updates={self.n_updates})"]
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
            "masks": {t.name: getattr(t.module, MASK).detach().cpu().clone() for t in self.targets} if self.sparse else {},
            "rigl_acc": {k: v.detach().cpu().clone() for k, v in self._rigl_acc.items()},
            "hebb": self.hebb.state_dict() if self.hebb is not None else {},
            "records": copy.deepcopy(self.records),
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
            t = self.by_name[name]
            self._set_mask(t, mask.to(self.device))
        if self.sparse:
            self.apply_masks()
        self._rigl_acc = {k: v.to(self.device) for k, v in state["rigl_acc"].items()}
        if self.hebb is not None:
            self.hebb.load_state_dict(state["hebb"], self.device)
        self.records = copy.deepcopy(state["records"])
