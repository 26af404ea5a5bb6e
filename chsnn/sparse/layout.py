"""Which layers an engine sparsifies and how they relate: chains, row groups,
what a density leaves, what needs calibration data.

Chains pair a layer whose output neurons are the next layer's input neurons
(chain removal and LRS's postsynaptic activity follow them); row groups are
sets of a layer's output rows that must each keep a link (an attention head's
q/k/v block).
"""

from __future__ import annotations

import torch
from torch import nn

from chsnn.contracts import MASK
from chsnn.sparse import strategies
from chsnn.sparse.config import ConfigError, EngineConfig
from chsnn.sparse.context import target_links
from chsnn.sparse.targets import KERNEL, LINEAR, SparseTarget, find_targets


def sparse_targets(model: nn.Module, cfg: EngineConfig) -> tuple[list[SparseTarget], str | None]:
    """The layers the config sparsifies, and the name of the output layer
    left dense (:func:`~chsnn.sparse.targets.find_targets`); refuses a model
    without any, or whose layers another engine already masks."""
    targets, dense_output = find_targets(model, cfg.include, cfg.exclude, cfg.sparsify_output)
    if not targets:
        raise ConfigError(
            f"no sparsifiable layer in {type(model).__name__}: the engine sparsifies nn.Linear, 1x1 Conv1d/Conv2d "
            f"and k x k Conv2d with groups=1 (include={cfg.include}, exclude={cfg.exclude}); "
            + ("its only such layer is the output layer, kept dense unless sparsify_output=True" if dense_output else "")
        )
    for t in targets:
        if hasattr(t.module, MASK):
            raise ConfigError(f"{t.describe()} already has a {MASK}: another engine is attached; call its remove() first")
    return targets, dense_output


def resolve_chains(chain, targets: list[SparseTarget]) -> list[tuple[SparseTarget, SparseTarget]]:
    """Pairs (a, b) where a's output neurons are b's input neurons, from the
    ``chain`` option: ``"auto"`` (consecutive linear layers of matching
    widths), ``"none"``, or explicit ``[[name_a, name_b], ...]``."""
    if chain == "none":
        return []
    if chain == "auto":
        linear = [t for t in targets if t.kind == LINEAR]
        return [(a, b) for a, b in zip(linear, linear[1:]) if a.n_out == b.n_in]
    by_name = {t.name: t for t in targets}
    pairs = []
    for pair in chain:
        if len(pair) != 2 or any(name not in by_name for name in pair):
            raise ConfigError(f"chain pair {pair!r} must name two sparse layers out of {sorted(by_name)}")
        a, b = (by_name[name] for name in pair)
        if a.kind != LINEAR or b.kind != LINEAR or a.n_out != b.n_in:
            raise ConfigError(
                f"chain pair {pair!r}: {a.describe()} outputs must be {b.describe()} inputs (linear layers, {a.n_out} vs {b.n_in})"
            )
        pairs.append((a, b))
    return pairs


def resolve_row_groups(groups: dict, targets: list[SparseTarget], device) -> dict[str, torch.Tensor]:
    """Each layer's row groups as a membership matrix (groups x n_out), on
    ``device``; groups of layers that are not targets (left dense) are dropped."""
    by_name = {t.name: t for t in targets}
    out = {}
    for name, rows in groups.items():
        if name not in by_name:
            continue  # a layer the config left dense
        t = by_name[name]
        if t.kind != LINEAR or any(not 0 <= r < t.n_out for g in rows for r in g):
            raise ConfigError(f"row_groups for {t.describe()}: rows must index its {t.n_out} outputs")
        member = torch.zeros(len(rows), t.n_out, dtype=torch.bool, device=device)
        for i, g in enumerate(rows):
            member[i, list(g)] = True
        out[name] = member
    return out


def check_feasible(targets: list[SparseTarget], densities) -> None:
    """Refuse a density that leaves a layer without links."""
    for d in densities:
        for t in targets:
            if target_links(t.kind, t.n_out, t.n_in, t.kernel_size, d) < 1:
                unit = f"of the {t.kernel_size} positions of each kernel" if t.kind == KERNEL else f"of {t.numel} links"
                raise ConfigError(
                    f"sparsity {1 - d:g} leaves {t.describe()} with no link ({d:g} {unit}); lower the sparsity or exclude the layer"
                )


def check_calibration(cfg: EngineConfig, calibration) -> None:
    """Refuse a config whose stages read calibration data when there is none."""
    missing = calibration_uses(cfg)
    if missing and calibration is None:
        raise ConfigError(
            f"method {cfg.method!r} needs calibration batches for {', '.join(missing)}: pass calibration=<a loader of input batches>, "
            "or switch those stages to their baselines (init=random, weight_init=kaiming, removal=magnitude)"
        )


def calibration_uses(cfg: EngineConfig) -> list[str]:
    """The stages of an engine config that read calibration data."""
    uses = []
    if cfg.method == "dense":
        return uses
    if cfg.init in strategies.CORRELATED_INITS:
        uses.append(f"init={cfg.init}")
    if cfg.weight_init in strategies.ACTIVITY_WEIGHT_INITS:
        uses.append(f"weight_init={cfg.weight_init}")
    if cfg.removal == "lrs":
        uses.append("removal=lrs (inactive neurons)")
    return uses
