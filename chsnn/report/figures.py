"""The report's figures, as inline SVG (matplotlib, no display needed)."""

from __future__ import annotations

import io
import math
import re

import numpy as np

from chsnn.report.analysis import OVERLAP_STOP, POWER_LAW_R2, power_law_fit

MASK_IMAGE_MAX = 256  # mask images are max-pooled down to at most this many pixels a side

FIGURES = [
    ("fig-training", "Training curves: loss and train/test accuracy per epoch."),
    ("fig-density", "Density and active neurons (percolation) per sparse layer over training."),
    (
        "fig-overlap",
        "Overlap of removed and regrown links per layer at each topology update; "
        f"the dashed line is the early-stop threshold {OVERLAP_STOP}.",
    ),
    ("fig-firing", "Firing rate of each spiking layer on the test set (and over training)."),
    ("fig-energy", "Energy per sample by layer: the sparse model against the same model dense (pJ)."),
    (
        "fig-degrees",
        "Degree distributions of each sparse layer's final graph (log-log), with a least-squares power-law fit over degrees >= 1.",
    ),
    (
        "fig-masks",
        f"Connectivity masks of the sparse layers (rows: outputs, columns: inputs; max-pooled to at most {MASK_IMAGE_MAX} px a side).",
    ),
]
FIGURE_IDS = [f for f, _ in FIGURES]


def mask_2d(mask) -> np.ndarray:
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, dtype=bool)
    return m.reshape(m.shape[0], -1) if m.ndim != 2 else m


def max_pool(m: np.ndarray, limit: int = MASK_IMAGE_MAX) -> np.ndarray:
    fy, fx = math.ceil(m.shape[0] / limit), math.ceil(m.shape[1] / limit)
    if fy == 1 and fx == 1:
        return m
    h, w = math.ceil(m.shape[0] / fy) * fy, math.ceil(m.shape[1] / fx) * fx
    padded = np.zeros((h, w), dtype=bool)
    padded[: m.shape[0], : m.shape[1]] = m
    return padded.reshape(h // fy, fy, w // fx, fx).any(axis=(1, 3))


# Figures ------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fixed SVG ids: the same figure renders to the same bytes (no churn in committed figures).
    plt.rcParams["svg.hashsalt"] = "chsnn"
    return plt


SVG_STRIP = [
    re.compile(r"<\?xml[^>]*\?>\s*", re.S),
    re.compile(r"<!DOCTYPE[^>]*>\s*", re.S),
    re.compile(r"<metadata>.*?</metadata>\s*", re.S),
    re.compile(r'\s+xmlns(:\w+)?="[^"]*"'),
]


def inline_svg(fig) -> str:
    """The figure as inline SVG for an HTML page: no prolog, metadata or namespace URLs
    (HTML's parser puts inline <svg> and xlink:href in their namespaces itself)."""
    plt = pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    for pat in SVG_STRIP:
        text = pat.sub("", text)
    return text.strip()


def fig_training(metrics):
    if not metrics:
        return None, "no metrics.jsonl epochs to plot"
    plt = pyplot()
    ep = [m.get("epoch", i + 1) for i, m in enumerate(metrics)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for key, label in (("loss", "train loss"), ("test_loss", "test loss")):
        ys = [m.get(key) for m in metrics]
        if any(y is not None for y in ys):
            a.plot(ep, [np.nan if y is None else y for y in ys], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
        ys = [m.get(key) for m in metrics]
        if any(y is not None for y in ys):
            b.plot(ep, [np.nan if y is None else y for y in ys], marker="o", label=label)
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    return fig, None


def fig_density(metrics, records, shapes):
    """Per layer: density, and active inputs/outputs as fractions, against the optimizer step."""
    series: dict[str, list[tuple]] = {}
    for m in metrics:
        for lay in m.get("layers", []):
            series.setdefault(lay["name"], []).append(
                (m.get("step", m.get("epoch")), lay.get("density"), lay.get("active_in"), lay.get("active_out"))
            )
    for r in records:
        for lay in r.get("layers", []):
            series.setdefault(lay["name"], []).append((r.get("step"), lay.get("density"), lay.get("active_in"), lay.get("active_out")))
    series = {k: sorted((p for p in v if p[0] is not None), key=lambda p: p[0]) for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None, "no per-layer density in metrics.jsonl or the engine's records"
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, pts in series.items():
        steps = [p[0] for p in pts]
        a.plot(steps, [p[1] for p in pts], marker=".", label=name)
        shape = shapes.get(name)
        n_out, n_in = (shape[0], int(np.prod(shape[1:]))) if shape else (None, None)
        if shape and len(shape) > 2:
            n_in = shape[1]  # conv layers count active input channels
        for idx, kind, style in ((2, "in", "--"), (3, "out", "-")):
            den = n_in if kind == "in" else n_out
            ys = [np.nan if p[idx] is None else (p[idx] / den if den else p[idx]) for p in pts]
            b.plot(steps, ys, style, marker=".", label=f"{name} active {kind}")
    a.set_xlabel("step"), a.set_ylabel("density"), a.grid(alpha=0.3), a.legend(fontsize=8)
    a.ticklabel_format(axis="y", useOffset=False)
    a.set_ylim(bottom=0)
    b.set_xlabel("step"), b.set_ylabel("active neurons (fraction)" if shapes else "active neurons"), b.grid(alpha=0.3), b.legend(fontsize=8)
    fig.tight_layout()
    return fig, None


def fig_overlap(records):
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        for lay in r.get("layers", []):
            if lay.get("overlap") is not None:
                s = series.setdefault(lay["name"], ([], []))
                s[0].append(r.get("update", r.get("step")))
                s[1].append(lay["overlap"])
    if not series:
        return None, "no topology updates recorded (a dense or static run, or training stopped before the first update)"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.axhline(OVERLAP_STOP, color="red", ls="--", lw=1, label=f"early stop {OVERLAP_STOP}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.05), ax.set_xlabel("topology update"), ax.set_ylabel("removed/regrown overlap")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, None


def fig_firing(firing_rates, metrics):
    if not firing_rates:
        return None, "no spiking layers (firing rates absent)"
    plt = pyplot()
    over_time = [(m.get("epoch"), m.get("firing_rates") or {}) for m in metrics]
    over_time = [(e, fr) for e, fr in over_time if fr]
    ncols = 2 if len(over_time) > 1 else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.4), squeeze=False)
    names = list(firing_rates)
    ax = axes[0][0]
    ax.bar(range(len(names)), [firing_rates[n] for n in names], color="tab:orange")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("firing rate (spikes / neuron / step)"), ax.set_title("test set, final model", fontsize=9), ax.grid(alpha=0.3, axis="y")
    if ncols == 2:
        ax = axes[0][1]
        for n in names:
            ax.plot([e for e, _ in over_time], [fr.get(n, np.nan) for _, fr in over_time], marker="o", label=n)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        (
            ax.set_xlabel("epoch"),
            ax.set_ylabel("firing rate"),
            ax.set_title("over training", fontsize=9),
            ax.grid(alpha=0.3),
            ax.legend(fontsize=8),
        )
    fig.tight_layout()
    return fig, None


def fig_energy(energy):
    layers = energy.get("layers") or []
    if not layers:
        return None, "the energy accounting found no weight layers"
    plt = pyplot()
    names = [lay["name"] for lay in layers]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 3), 3.6))
    ax.bar(x - 0.2, [lay.get("energy_pj", 0.0) for lay in layers], 0.4, label="sparse (this run)")
    ax.bar(x + 0.2, [lay.get("dense_energy_pj", 0.0) for lay in layers], 0.4, label="same model dense")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("energy per sample (pJ)")
    vals = [v for lay in layers for v in (lay.get("energy_pj", 0), lay.get("dense_energy_pj", 0)) if v and v > 0]
    if vals and max(vals) / min(vals) > 100:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y"), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, None


def fig_degrees(masks):
    """In-degree (links into each output neuron) and out-degree (links out of
    each input neuron) histograms with the power-law fit; and the fits."""
    if not masks:
        return None, "no sparse layers with saved masks (a dense run)", {}
    plt = pyplot()
    fits = {}
    fig, axes = plt.subplots(len(masks), 2, figsize=(10, 3.1 * len(masks)), squeeze=False)
    for row, (name, mask) in enumerate(masks.items()):
        m = mask_2d(mask)
        for col, (kind, deg) in enumerate((("in", m.sum(1)), ("out", m.sum(0)))):
            ax = axes[row][col]
            fit = power_law_fit(deg)
            fits[f"{name}:{kind}"] = fit
            pos = deg[deg >= 1]
            zeros = int((deg == 0).sum())
            if pos.size:
                values, counts = np.unique(pos, return_counts=True)
                ax.loglog(values, counts / deg.size, "o", ms=4, label="observed")
            if fit and fit["power_law"]:
                xs = np.linspace(np.log(pos.min()), np.log(pos.max()), 50)
                ax.loglog(
                    np.exp(xs),
                    np.exp(fit["intercept"] - fit["exponent"] * xs),
                    "r-",
                    label=f"power-law fit: gamma={fit['exponent']:.2f}, R²={fit['r2']:.2f}",
                )
            elif fit:
                ax.plot([], [], " ", label=f"no power law (log-log fit R²={fit['r2']:.2f} < {POWER_LAW_R2})")
            else:
                ax.plot([], [], " ", label="no power law (too few distinct degrees)")
            ax.set_title(f"{name}: {kind}-degree ({zeros} neurons with degree 0)", fontsize=9)
            ax.set_xlabel("degree k"), ax.set_ylabel("P(k)"), ax.grid(alpha=0.3, which="both"), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, None, fits


def fig_masks(masks):
    if not masks:
        return None, "no sparse layers with saved masks (a dense run)"
    plt = pyplot()
    n = len(masks)
    fig, axes = plt.subplots(1, n, figsize=(min(5 * n, 15), 4.2), squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items()):
        m = mask_2d(mask)
        img = max_pool(m)
        ax.imshow(img, cmap="Greys", interpolation="nearest", aspect="auto")
        note = "" if img.shape == m.shape else f", max-pooled to {img.shape[0]}x{img.shape[1]}"
        ax.set_title(f"{name}: {m.shape[0]}x{m.shape[1]}, density {m.mean():.3f}{note}", fontsize=9)
        ax.set_xlabel("input"), ax.set_ylabel("output")
    fig.tight_layout()
    return fig, None


def comparison_figure(rows: list[dict]) -> str | None:
    pts = [r for r in rows if r["sops_per_sample"] is not None and r["test_accuracy"] is not None]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in pts:
        ax.scatter(r["sops_per_sample"], r["test_accuracy"], s=40)
        ax.annotate(
            f"{r['run']} ({r['method']})", (r["sops_per_sample"], r["test_accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    xs = [r["sops_per_sample"] for r in pts if r["sops_per_sample"] > 0]
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("SOPs per sample"), ax.set_ylabel("test accuracy"), ax.grid(alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    return inline_svg(fig)
