"""Statistics of sparse layers, from their masks and the update records.

Pure functions: masks are ``(n_out, n_in)`` bool (or weight-shaped) tensors;
``records`` are the engine's update records (``SparseEngine.records``).
"""

from __future__ import annotations

import torch

from chsnn.sparse.masks import any_along, count
from chsnn.sparse.targets import KERNEL, LINEAR, SparseTarget


def layer_stats(t: SparseTarget, mask: torch.Tensor) -> dict:
    """Links, density and active neurons of one layer (kernel layers also
    give the min/max active positions per kernel)."""
    m = t.as_2d(mask)
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
        out.update(
            active_in=count(any_along(channels, 0)), kernel_active_min=int(per_kernel.min()), kernel_active_max=int(per_kernel.max())
        )
    else:
        out["active_in"] = count(any_along(m, 0))
    return out


def percolation(targets: list[SparseTarget], masks: dict[str, torch.Tensor]) -> float:
    """Fraction of the linear layers' output neurons still linked (1.0 with
    no linear layer)."""
    linear = [t for t in targets if t.kind == LINEAR]
    if not linear:
        return 1.0
    alive = sum(count(any_along(t.as_2d(masks[t.name]), 1)) for t in linear)
    return alive / sum(t.n_out for t in linear)


def active_groups(groups: torch.Tensor, mask: torch.Tensor) -> dict:
    """How many row groups (``groups``: groups x n_out membership) keep at
    least one link of the ``(n_out, n_in)`` ``mask``."""
    alive = (groups & any_along(mask, 1).unsqueeze(0)).any(1)
    return {"active": count(alive), "total": groups.shape[0], "alive": alive.tolist()}


def topology_summary(
    targets: list[SparseTarget], records: list[dict], initial: dict, masks: dict | None, reinitialised_at: int | None = None
) -> dict[str, dict]:
    """Per layer, how far its topology evolved: ``turnover`` (the fraction of
    its ``initial`` links not in ``masks``, now; 0 without masks), the step
    it froze (early stop; None if it never did), its updates and the
    removed/regrown overlap of each; after a second initialisation at step
    ``reinitialised_at``, of the topology drawn then."""
    records = [r for r in records if r["step"] > (reinitialised_at or 0)]
    out = {}
    frozen_at = {rec["name"]: r["step"] for r in records for rec in r["layers"] if rec["frozen"]}
    for t in targets:
        overlaps = [rec["overlap"] for r in records for rec in r["layers"] if rec["name"] == t.name and rec["removed"]]
        start = initial.get(t.name)
        turnover = 0.0
        if masks is not None and start is not None and bool(start.any()):
            turnover = 1.0 - count(start & masks[t.name]) / count(start)
        out[t.name] = {
            "turnover": turnover,
            "frozen_at_step": frozen_at.get(t.name),
            "updates": len(overlaps),
            "overlaps": overlaps,
        }
    return out


def update_record(t: SparseTarget, mask: torch.Tensor, removed: torch.Tensor, regrown: torch.Tensor, chain_removed: int, ms: float) -> dict:
    """One layer's entry in an update record, after the update."""
    stats = layer_stats(t, mask)
    n_removed = count(removed)
    return {
        "name": t.name,
        "links": stats["links"],
        "density": stats["density"],
        "removed": n_removed,
        "chain_removed": chain_removed,
        "regrown": count(regrown),
        "overlap": count(removed & regrown) / n_removed if n_removed else 0.0,
        "active_in": stats["active_in"],
        "active_out": stats["active_out"],
        "frozen": False,
        "ms": ms,
    }
