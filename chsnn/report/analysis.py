"""What a run's saved history says: the topology updates per layer, and
whether a layer's degrees follow a power law."""

from __future__ import annotations

import numpy as np

OVERLAP_STOP = 0.9  # removal/regrowth overlap at which a layer's topology stops evolving
POWER_LAW_R2 = 0.8  # least R^2 of the log-log fit called a power law


def topology_summary(records: list[dict], frozen=(), summary_layers=None) -> dict:
    """Per-layer summary of the engine's topology updates."""
    out = {"n_updates": len(records), "frozen": sorted(frozen), "layers": {}}
    if not records:
        return out
    out["first_step"] = records[0].get("step")
    out["last_step"] = records[-1].get("step")
    out["total_ms"] = float(sum(r.get("ms", 0.0) for r in records))
    out["mean_ms"] = out["total_ms"] / len(records)
    layers: dict[str, dict] = {}
    for r in records:
        for lay in r.get("layers", []):
            d = layers.setdefault(
                lay["name"], {"removed": 0, "regrown": 0, "chain_removed": 0, "overlaps": [], "ms": 0.0, "frozen_at_step": None}
            )
            d["removed"] += int(lay.get("removed", 0))
            d["regrown"] += int(lay.get("regrown", 0))
            d["chain_removed"] += int(lay.get("chain_removed", 0))
            d["ms"] += float(lay.get("ms", 0.0))
            if lay.get("overlap") is not None:
                d["overlaps"].append(float(lay["overlap"]))
            if lay.get("frozen") and d["frozen_at_step"] is None:
                d["frozen_at_step"] = r.get("step")
            d["final_links"] = lay.get("links")
            d["final_density"] = lay.get("density")
    for name, d in layers.items():
        ov = d.pop("overlaps")
        d["mean_overlap"] = float(np.mean(ov)) if ov else None
        d["last_overlap"] = ov[-1] if ov else None
        d["reached_overlap_stop"] = any(o >= OVERLAP_STOP for o in ov)
        # turnover: the fraction of the initial links replaced by the end (summary.json)
        d["turnover"] = next((lay.get("turnover") for lay in summary_layers or () if lay.get("name") == name), None)
        out["layers"][name] = d
    return out


def power_law_fit(degrees) -> dict | None:
    """Least-squares fit of log(frequency) against log(degree) over degrees >= 1.

    Returns {"exponent": gamma (P(k) ~ k^-gamma), "r2", "power_law": r2 >= 0.8,
    "k_min", "n_points"}, or None with fewer than three distinct degrees."""
    degrees = np.asarray(degrees, dtype=np.int64)
    degrees = degrees[degrees >= 1]
    if degrees.size == 0:
        return None
    values, counts = np.unique(degrees, return_counts=True)
    if values.size < 3:
        return None
    x, y = np.log(values.astype(float)), np.log(counts / degrees.size)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    return {
        "exponent": float(-slope),
        "intercept": float(intercept),
        "r2": r2,
        "power_law": r2 >= POWER_LAW_R2,
        "k_min": 1,
        "n_points": int(values.size),
    }
