"""Run reports: ``chsnn report RUN_DIR [RUN_DIR ...]``.

``render_report(run_dir)`` re-runs a saved model on its test set through the
energy accounting of :mod:`chsnn.energy` and writes ``run_dir/report/``:

    index.html    one self-contained page (inline SVG figures, no network)
    report.json   run identity, energy per layer and per sample, the dense
                  baseline and the ratios, topology-update history, constants
    report.md     the headline figures and the per-layer table

It also writes ``sops_per_sample`` and ``energy_pj_per_sample`` into the run's
``summary.json``. ``render_comparison(run_dirs, out_dir)`` puts several runs
side by side (``comparison.{html,md,json}``), and explains each sparse run's
SOPs against a dense run of the same model and data.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from chsnn.rundir import CONFIG, METRICS, SUMMARY, RunDir, atomic_write, read_json

OVERLAP_STOP = 0.9  # removal/regrowth overlap at which a layer's topology stops evolving
POWER_LAW_R2 = 0.8  # least R^2 of the log-log fit called a power law
MASK_IMAGE_MAX = 256  # mask images are max-pooled down to at most this many pixels a side

FIGURES = [
    ("fig-training", "Training curves: loss and train/test accuracy per epoch."),
    ("fig-density", "Density and active neurons (percolation) per sparse layer over training."),
    ("fig-overlap", f"Overlap of removed and regrown links per layer at each topology update; the dashed line is the early-stop threshold {OVERLAP_STOP}."),
    ("fig-firing", "Firing rate of each spiking layer on the test set (and over training)."),
    ("fig-energy", "Energy per sample by layer: the sparse model against the same model dense (pJ)."),
    ("fig-degrees", "Degree distributions of each sparse layer's final graph (log-log), with a least-squares power-law fit over degrees >= 1."),
    ("fig-masks", f"Connectivity masks of the sparse layers (rows: outputs, columns: inputs; max-pooled to at most {MASK_IMAGE_MAX} px a side)."),
]
FIGURE_IDS = [f for f, _ in FIGURES]


# Loading a run ---------------------------------------------------------------------


def check_run_dir(run_dir) -> Path:
    """The run directory, or a clear error saying why it is not one."""
    run = RunDir(run_dir).require()
    marks = [n for n in (SUMMARY, CONFIG, METRICS, "latest.pt", "best.pt") if run.file(n).is_file()]
    if not marks:
        raise ValueError(f"{run.path} is not a chsnn run directory: it holds none of summary.json, config.yaml, metrics.jsonl, latest.pt, best.pt")
    if not run.file(SUMMARY).is_file():
        raise FileNotFoundError(f"{run.path} has no {SUMMARY}; did its training finish? (`chsnn train --resume --out {run.path}`)")
    if not run.checkpoints():
        raise FileNotFoundError(f"{run.path} holds no checkpoint (latest.pt or best.pt)")
    return run.path


class _Progress(list):
    """A list of batches that shows a tqdm bar while it is iterated."""

    def __init__(self, items, desc: str):
        super().__init__(items)
        self.desc = desc

    def __iter__(self):
        from tqdm import tqdm

        with tqdm(total=len(self), desc=self.desc, unit="batch", leave=False, disable=not sys.stderr.isatty()) as bar:
            for item in super().__iter__():
                yield item
                bar.update(1)


def _account(run_dir: Path, ckpt: dict, pj_per_ac: float, pj_per_mac: float) -> tuple[dict, dict]:
    """Energy accounting of the checkpoint's model on its test set, and its parameter counts."""
    import torch

    from chsnn.energy import account_energy
    from chsnn.trainer import Runner

    runner = Runner(ckpt["config"])
    runner.restore(ckpt)
    batches = _Progress(
        [runner.prepare(x) for x, _ in runner.batches(runner.data.test, runner.cfg["eval_batch_size"], epoch=-1)],
        desc=f"energy {run_dir.name}",
    )
    model = runner.model
    model.eval()
    with torch.no_grad():
        result = account_energy(model, batches, pj_per_ac=pj_per_ac, pj_per_mac=pj_per_mac)
    dense_params = sum(p.numel() for p in model.parameters())
    pruned = sum(int((~m.bool()).sum()) for m in ckpt["engine"].get("masks", {}).values())
    links = sum(int(m.bool().sum()) for m in ckpt["engine"].get("masks", {}).values())
    params = {"existing": dense_params - pruned, "dense": dense_params, "sparse_layer_links": links}
    return result, params


# Summaries of the saved history ---------------------------------------------------------


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
            d = layers.setdefault(lay["name"], {"removed": 0, "regrown": 0, "chain_removed": 0, "overlaps": [], "ms": 0.0, "frozen_at_step": None})
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
    return {"exponent": float(-slope), "intercept": float(intercept), "r2": r2, "power_law": r2 >= POWER_LAW_R2, "k_min": 1, "n_points": int(values.size)}


def _mask_2d(mask) -> np.ndarray:
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, dtype=bool)
    return m.reshape(m.shape[0], -1) if m.ndim != 2 else m


def _max_pool(m: np.ndarray, limit: int = MASK_IMAGE_MAX) -> np.ndarray:
    fy, fx = math.ceil(m.shape[0] / limit), math.ceil(m.shape[1] / limit)
    if fy == 1 and fx == 1:
        return m
    h, w = math.ceil(m.shape[0] / fy) * fy, math.ceil(m.shape[1] / fx) * fx
    padded = np.zeros((h, w), dtype=bool)
    padded[: m.shape[0], : m.shape[1]] = m
    return padded.reshape(h // fy, fy, w // fx, fx).any(axis=(1, 3))


# Figures ------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fixed SVG ids: the same figure renders to the same bytes (no churn in committed figures).
    plt.rcParams["svg.hashsalt"] = "chsnn"
    return plt


_SVG_STRIP = [
    re.compile(r"<\?xml[^>]*\?>\s*", re.S),
    re.compile(r"<!DOCTYPE[^>]*>\s*", re.S),
    re.compile(r"<metadata>.*?</metadata>\s*", re.S),
    re.compile(r'\s+xmlns(:\w+)?="[^"]*"'),
]


def _svg(fig) -> str:
    """The figure as inline SVG for an HTML page: no prolog, metadata or namespace URLs
    (HTML's parser puts inline <svg> and xlink:href in their namespaces itself)."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    for pat in _SVG_STRIP:
        text = pat.sub("", text)
    return text.strip()


def _fig_training(metrics):
    if not metrics:
        return None, "no metrics.jsonl epochs to plot"
    plt = _plt()
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


def _fig_density(metrics, records, shapes):
    """Per layer: density, and active inputs/outputs as fractions, against the optimizer step."""
    series: dict[str, list[tuple]] = {}
    for m in metrics:
        for lay in m.get("layers", []):
            series.setdefault(lay["name"], []).append((m.get("step", m.get("epoch")), lay.get("density"), lay.get("active_in"), lay.get("active_out")))
    for r in records:
        for lay in r.get("layers", []):
            series.setdefault(lay["name"], []).append((r.get("step"), lay.get("density"), lay.get("active_in"), lay.get("active_out")))
    series = {k: sorted((p for p in v if p[0] is not None), key=lambda p: p[0]) for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None, "no per-layer density in metrics.jsonl or the engine's records"
    plt = _plt()
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


def _fig_overlap(records):
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        for lay in r.get("layers", []):
            if lay.get("overlap") is not None:
                s = series.setdefault(lay["name"], ([], []))
                s[0].append(r.get("update", r.get("step")))
                s[1].append(lay["overlap"])
    if not series:
        return None, "no topology updates recorded (a dense or static run, or training stopped before the first update)"
    plt = _plt()
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


def _fig_firing(firing_rates, metrics):
    if not firing_rates:
        return None, "no spiking layers (firing rates absent)"
    plt = _plt()
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
        ax.set_xlabel("epoch"), ax.set_ylabel("firing rate"), ax.set_title("over training", fontsize=9), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, None


def _fig_energy(energy):
    layers = energy.get("layers") or []
    if not layers:
        return None, "the energy accounting found no weight layers"
    plt = _plt()
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


def _fig_degrees(masks):
    """In-degree (links into each output neuron) and out-degree (links out of
    each input neuron) histograms with the power-law fit; and the fits."""
    if not masks:
        return None, "no sparse layers with saved masks (a dense run)", {}
    plt = _plt()
    fits = {}
    fig, axes = plt.subplots(len(masks), 2, figsize=(10, 3.1 * len(masks)), squeeze=False)
    for row, (name, mask) in enumerate(masks.items()):
        m = _mask_2d(mask)
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
                ax.loglog(np.exp(xs), np.exp(fit["intercept"] - fit["exponent"] * xs), "r-", label=f"power-law fit: gamma={fit['exponent']:.2f}, R²={fit['r2']:.2f}")
            elif fit:
                ax.plot([], [], " ", label=f"no power law (log-log fit R²={fit['r2']:.2f} < {POWER_LAW_R2})")
            else:
                ax.plot([], [], " ", label="no power law (too few distinct degrees)")
            ax.set_title(f"{name}: {kind}-degree ({zeros} neurons with degree 0)", fontsize=9)
            ax.set_xlabel("degree k"), ax.set_ylabel("P(k)"), ax.grid(alpha=0.3, which="both"), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, None, fits


def _fig_masks(masks):
    if not masks:
        return None, "no sparse layers with saved masks (a dense run)"
    plt = _plt()
    n = len(masks)
    fig, axes = plt.subplots(1, n, figsize=(min(5 * n, 15), 4.2), squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items()):
        m = _mask_2d(mask)
        img = _max_pool(m)
        ax.imshow(img, cmap="Greys", interpolation="nearest", aspect="auto")
        note = "" if img.shape == m.shape else f", max-pooled to {img.shape[0]}x{img.shape[1]}"
        ax.set_title(f"{name}: {m.shape[0]}x{m.shape[1]}, density {m.mean():.3f}{note}", fontsize=9)
        ax.set_xlabel("input"), ax.set_ylabel("output")
    fig.tight_layout()
    return fig, None


# One run ---------------------------------------------------------------------------------


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fewer(r: float) -> str:
    return f", {1 / r:.1f}x fewer" if 0 < r < 0.999 else (f", {r:.1f}x more" if r > 1.001 else "")


def _fmt(v, spec=".4g"):
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


LAYER_COLUMNS = [
    ("name", "layer"),
    ("kind", "kind"),
    ("shape", "shape"),
    ("links", "links"),
    ("density", "density"),
    ("active_in", "active in"),
    ("active_out", "active out"),
    ("input", "input"),
    ("firing_rate", "input firing rate"),
    ("sops", "SOPs/sample"),
    ("macs", "MACs/sample"),
    ("energy_pj", "energy pJ/sample"),
    ("dense_energy_pj", "dense pJ/sample"),
]


def _cell(row, key):
    v = row.get(key)
    if key == "shape" and isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return _fmt(v)


def render_report(run_dir, pj_per_ac: float | None = None, pj_per_mac: float | None = None) -> dict:
    """Write ``run_dir/report/{index.html, report.json, report.md}``; returns report.json's content."""
    from chsnn.energy import PJ_PER_AC, PJ_PER_MAC

    pj_per_ac = PJ_PER_AC if pj_per_ac is None else float(pj_per_ac)
    pj_per_mac = PJ_PER_MAC if pj_per_mac is None else float(pj_per_mac)
    run = RunDir(check_run_dir(run_dir))
    run_dir = run.path
    summary = run.summary()
    metrics = run.metrics()
    checkpoint = run.checkpoint()  # the default: latest.pt, the model summary.json describes
    ckpt, ckpt_name = checkpoint.state, checkpoint.name
    engine_state = ckpt.get("engine") or {}
    records = engine_state.get("records") or []
    masks = engine_state.get("masks") or {}

    energy, params = _account(run_dir, ckpt, pj_per_ac, pj_per_mac)
    totals = energy["totals"]
    dense = {k[len("dense_") :]: totals.get(k) for k in ("dense_sops", "dense_macs", "dense_energy_pj")}
    ratios = {k: _ratio(totals.get(k), dense.get(k)) for k in ("sops", "macs", "energy_pj")}
    shapes = {lay["name"]: lay.get("shape") for lay in summary.get("layers", [])}
    shapes.update({lay["name"]: lay.get("shape") for lay in energy["layers"] if lay.get("shape")})
    firing_rates = summary.get("firing_rates") or (metrics[-1].get("firing_rates") if metrics else None) or {}

    figs, notes = {}, {}
    fits = {}
    for fid, make in (
        ("fig-training", lambda: _fig_training(metrics)),
        ("fig-density", lambda: _fig_density(metrics, records, shapes)),
        ("fig-overlap", lambda: _fig_overlap(records)),
        ("fig-firing", lambda: _fig_firing(firing_rates, metrics)),
        ("fig-energy", lambda: _fig_energy(energy)),
        ("fig-degrees", lambda: _fig_degrees(masks)),
        ("fig-masks", lambda: _fig_masks(masks)),
    ):
        out = make()
        if fid == "fig-degrees":
            fig, note, fits = out
        else:
            fig, note = out
        if fig is None:
            notes[fid] = note
        else:
            figs[fid] = _svg(fig)

    identity = {k: summary.get(k) for k in ("method", "dataset", "model", "seed", "epochs", "sparsity", "percolation", "test_accuracy", "best_test_accuracy", "heads")}
    report = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": ckpt_name,
        **identity,
        "constants": {"pj_per_ac": pj_per_ac, "pj_per_mac": pj_per_mac, "overlap_stop": OVERLAP_STOP, "power_law_r2": POWER_LAW_R2},
        "energy": energy,
        "per_sample": {"sops": totals.get("sops"), "macs": totals.get("macs"), "energy_pj": totals.get("energy_pj")},
        "dense_baseline": dense,
        "ratios": ratios,
        "parameters": params,
        "firing_rates": firing_rates,
        "topology": topology_summary(records, engine_state.get("frozen") or (), summary.get("layers")),
        "degree_fits": fits,
        "figures": [{"id": fid, "caption": cap, "shown": fid in figs, "note": notes.get(fid)} for fid, cap in FIGURES],
    }

    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    atomic_write(out_dir / "report.md", _report_md(report))
    atomic_write(out_dir / "index.html", _report_html(report, figs, notes))
    summary["sops_per_sample"] = totals.get("sops")
    summary["energy_pj_per_sample"] = totals.get("energy_pj")
    run.write_text(SUMMARY, json.dumps(summary, indent=2) + "\n")
    return report


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _headline(report: dict) -> list[tuple[str, str]]:
    ps, dn, ra = report["per_sample"], report["dense_baseline"], report["ratios"]

    def vs(key, unit):
        r = ra.get(key)
        return f"{_fmt(ps.get(key))} {unit} vs {_fmt(dn.get(key))} dense" + (f" (ratio {r:.3f}{_fewer(r)})" if r else "")

    return [
        ("test accuracy", f"{_fmt(report.get('test_accuracy'))} (best {_fmt(report.get('best_test_accuracy'))})"),
        ("sparsity", f"{_fmt(report.get('sparsity'))} over the sparse layers; percolation {_fmt(report.get('percolation'))}"),
        ("SOPs per sample", vs("sops", "")),
        ("MACs per sample", vs("macs", "")),
        ("energy per sample", vs("energy_pj", "pJ")),
        ("parameters", f"{report['parameters']['existing']:,} existing of {report['parameters']['dense']:,} dense"),
        *[(f"attention heads ({name})", f"{g['active']} of {g['total']} active") for name, g in (report.get("heads") or {}).items()],
        ("constants", f"{report['constants']['pj_per_ac']} pJ per accumulate, {report['constants']['pj_per_mac']} pJ per multiply-accumulate"),
    ]


def _title(report: dict) -> str:
    return f"{report.get('model')} on {report.get('dataset')}, method {report.get('method')}, seed {report.get('seed')}"


def _report_md(report: dict) -> str:
    lines = [f"# chsnn report: {_title(report)}", "", f"Run directory `{report['run_dir']}` (checkpoint {report['checkpoint']}).", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _headline(report)] + [""]
    lines += ["## Layers", "", "| " + " | ".join(h for _, h in LAYER_COLUMNS) + " |", "|" + "---|" * len(LAYER_COLUMNS)]
    for lay in report["energy"]["layers"]:
        lines.append("| " + " | ".join(_cell(lay, k) for k, _ in LAYER_COLUMNS) + " |")
    topo = report["topology"]
    lines += ["", f"## Topology updates: {topo['n_updates']}", ""]
    for name, d in topo["layers"].items():
        frozen = "never froze" if d["frozen_at_step"] is None else f"froze at step {d['frozen_at_step']}"
        lines.append(
            f"- {name}: removed {d['removed']}, regrown {d['regrown']}, mean overlap {_fmt(d['mean_overlap'])}, last {_fmt(d['last_overlap'])}, "
            f"turnover {_fmt(d.get('turnover'))}, {frozen}"
        )
    lines += ["", "## Figures (in index.html)", ""]
    for i, f in enumerate(report["figures"], 1):
        lines.append(f"{i}. `{f['id']}`: {f['caption']}" + (f" *Not shown: {f['note']}.*" if not f["shown"] else ""))
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;color:#222;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;min-width:12em;background:#fafafa}
.card .k{font-size:.8em;color:#666;text-transform:uppercase;letter-spacing:.03em}.card .v{font-size:1.35em;font-weight:600}.card .d{font-size:.85em;color:#444}
figure{margin:1.2em 0;padding:.6em;border:1px solid #eee;border-radius:6px}
figure svg{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
.missing{color:#888;font-style:italic}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.kv dt{color:#666}dl.kv dd{margin:0}
"""


def _page(title: str, body: str) -> str:
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n'


def _card(key, value, detail=""):
    return f'<div class="card"><div class="k">{html.escape(key)}</div><div class="v">{html.escape(value)}</div><div class="d">{html.escape(detail)}</div></div>'


def _table(headers: list[str], rows: list[list[str]], cls="") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead>{head}</thead>\n<tbody>\n{body}\n</tbody></table>'


def _report_html(report: dict, figs: dict, notes: dict) -> str:
    ps, dn, ra = report["per_sample"], report["dense_baseline"], report["ratios"]

    def vs_detail(key, unit=""):
        r = ra.get(key)
        return f"dense {_fmt(dn.get(key))}{unit}" + (f"; ratio {r:.3f}{_fewer(r)}" if r else "")

    cards = [
        _card("test accuracy", _fmt(report.get("test_accuracy"), ".4f"), f"best {_fmt(report.get('best_test_accuracy'), '.4f')}"),
        _card("sparsity", _fmt(report.get("sparsity"), ".4f"), f"percolation {_fmt(report.get('percolation'), '.3f')}"),
        _card("SOPs / sample", _fmt(ps.get("sops"), ".4g"), vs_detail("sops")),
        _card("energy / sample", f"{_fmt(ps.get('energy_pj'), '.4g')} pJ", vs_detail("energy_pj", " pJ")),
        _card("parameters", f"{report['parameters']['existing']:,}", f"of {report['parameters']['dense']:,} dense"),
    ]
    heads = report.get("heads") or {}
    if heads:
        active, total = sum(g["active"] for g in heads.values()), sum(g["total"] for g in heads.values())
        cards.append(_card("attention heads", f"{active} / {total}", f"active over {len(heads)} attention layers"))
    c = report["constants"]
    parts = [
        f"<header><h1>chsnn report: {html.escape(_title(report))}</h1>",
        f'<p class="sub">{html.escape(report["run_dir"])} · checkpoint {html.escape(report["checkpoint"])} · {report.get("epochs")} epochs · '
        f'{report["topology"]["n_updates"]} topology updates · {c["pj_per_ac"]} pJ/AC, {c["pj_per_mac"]} pJ/MAC · MACs/sample {_fmt(ps.get("macs"))} (dense {_fmt(dn.get("macs"))})</p>',
        '<div class="cards">' + "".join(cards) + "</div></header>",
        "<main>",
        "<h2>Figures</h2>",
    ]
    for i, (fid, cap) in enumerate(FIGURES, 1):
        content = figs.get(fid) or f'<p class="missing">Not shown: {html.escape(notes.get(fid, "no data"))}.</p>'
        parts.append(f'<figure id="{fid}">\n{content}\n<figcaption>Figure {i}. {html.escape(cap)}</figcaption>\n</figure>')
    rows = [[_cell(lay, k) for k, _ in LAYER_COLUMNS] for lay in report["energy"]["layers"]]
    tot = report["energy"]["totals"]
    parts += ["<h2>Layers</h2>", _table([h for _, h in LAYER_COLUMNS], rows, cls="layers").replace("<table", '<table id="layers"', 1)]
    parts.append(
        f"<p>Totals per sample: {_fmt(tot.get('sops'))} SOPs, {_fmt(tot.get('macs'))} MACs, {_fmt(tot.get('energy_pj'))} pJ; "
        f"the same model dense: {_fmt(tot.get('dense_sops'))} SOPs, {_fmt(tot.get('dense_macs'))} MACs, {_fmt(tot.get('dense_energy_pj'))} pJ.</p>"
    )
    topo = report["topology"]
    if topo["layers"]:
        trows = [
            [
                name, str(d["removed"]), str(d["regrown"]), str(d["chain_removed"]), _fmt(d["mean_overlap"], ".3f"), _fmt(d["last_overlap"], ".3f"),
                _fmt(d.get("turnover"), ".3f"), "no" if d["frozen_at_step"] is None else str(d["frozen_at_step"]), _fmt(d["ms"], ".1f"),
            ]
            for name, d in topo["layers"].items()
        ]
        parts += [f"<h2>Topology updates ({topo['n_updates']})</h2>", _table(["layer", "removed", "regrown", "chain removed", "mean overlap", "last overlap", "turnover", "froze at step", "ms"], trows)]
    parts.append("</main>")
    return _page(f"chsnn report: {_title(report)}", "\n".join(parts))


# Several runs ------------------------------------------------------------------------------


def _load_or_render(run_dir: Path, pj_per_ac, pj_per_mac, rerender: bool) -> dict:
    path = run_dir / "report" / "report.json"
    if not rerender and path.is_file():
        report = read_json(path)
        ckpts = [run_dir / n for n in ("latest.pt", "best.pt") if (run_dir / n).is_file()]
        c = report.get("constants", {})
        fresh = all(p.stat().st_mtime <= path.stat().st_mtime for p in ckpts)
        same = (pj_per_ac is None or c.get("pj_per_ac") == pj_per_ac) and (pj_per_mac is None or c.get("pj_per_mac") == pj_per_mac)
        if fresh and same and "energy" in report:
            return report
    return render_report(run_dir, pj_per_ac=pj_per_ac, pj_per_mac=pj_per_mac)


def _explanations(reports: list[dict]) -> list[dict]:
    from chsnn.energy import sops_ratio_explained

    out = []
    for i, r in enumerate(reports):
        if r.get("method") == "dense":
            continue
        dense = next((d for d in reports if d.get("method") == "dense" and d.get("model") == r.get("model") and d.get("dataset") == r.get("dataset")), None)
        if dense is None:
            continue
        ex = dict(sops_ratio_explained(r["energy"], dense["energy"]))
        ex.update(run=r["label"], dense_run=dense["label"])
        out.append(ex)
    return out


def render_comparison(run_dirs, out_dir, pj_per_ac: float | None = None, pj_per_mac: float | None = None, rerender: bool = False) -> dict:
    """Write ``out_dir/{comparison.html, comparison.md, comparison.json}`` for several runs.

    Each run's report is reused when report/report.json is newer than its
    checkpoints and used the same constants; otherwise it is rendered."""
    from tqdm import tqdm

    run_dirs = [check_run_dir(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("render_comparison: give at least one run directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for d in tqdm(run_dirs, desc="runs", unit="run", disable=not sys.stderr.isatty()):
        r = _load_or_render(d, pj_per_ac, pj_per_mac, rerender)
        r = dict(r, label=d.name)
        reports.append(r)
    labels = [r["label"] for r in reports]
    for r in reports:  # runs from different parents may share a name
        if labels.count(r["label"]) > 1:
            r["label"] = str(Path(r["run_dir"]).relative_to(Path(r["run_dir"]).anchor))
    rows = []
    for r in reports:
        ps, dn = r["per_sample"], r["dense_baseline"]
        rows.append(
            {
                "run": r["label"],
                "run_dir": r["run_dir"],
                "method": r.get("method"),
                "model": r.get("model"),
                "dataset": r.get("dataset"),
                "seed": r.get("seed"),
                "sparsity": r.get("sparsity"),
                "test_accuracy": r.get("test_accuracy"),
                "sops_per_sample": ps.get("sops"),
                "macs_per_sample": ps.get("macs"),
                "energy_pj_per_sample": ps.get("energy_pj"),
                "dense_energy_pj_per_sample": dn.get("energy_pj"),
                "parameters": r["parameters"]["existing"],
                "dense_parameters": r["parameters"]["dense"],
            }
        )
    explained = _explanations(reports)
    figure = _comparison_figure(rows)
    result = {"runs": rows, "sops_explained": explained, "constants": reports[0].get("constants")}
    atomic_write(out_dir / "comparison.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    atomic_write(out_dir / "comparison.md", _comparison_md(result))
    atomic_write(out_dir / "comparison.html", _comparison_html(result, figure))
    return result


COMPARISON_COLUMNS = [
    ("run", "run", None),
    ("method", "method", None),
    ("sparsity", "sparsity", ".4f"),
    ("test_accuracy", "test accuracy", ".4f"),
    ("sops_per_sample", "SOPs/sample", ".4g"),
    ("energy_pj_per_sample", "energy pJ/sample", ".4g"),
    ("parameters", "parameters", ","),
    ("dense_parameters", "dense parameters", ","),
]
EXPLAIN_TEXT = (
    "SOPs ratio ≈ density ratio × firing-rate ratio × coupling; the coupling (SOPs ratio over the product) is 1 when "
    "firing and fan-out are independent and above 1 when the neurons that fire keep more than their share of the links "
    "(as when topology evolution concentrates links on active neurons)."
)
EXPLAIN_COLUMNS = [("run", "sparse run", None), ("dense_run", "dense run", None), ("sops_ratio", "SOPs ratio", ".4f"), ("density_ratio", "density ratio", ".4f"), ("firing_rate_ratio", "firing-rate ratio", ".4f"), ("predicted_ratio", "density x firing-rate", ".4f"), ("coupling", "coupling", ".2f")]


def _cells(row, cols):
    out = []
    for key, _, spec in cols:
        v = row.get(key)
        out.append(_fmt(v) if spec is None or v is None else format(v, spec))
    return out


def _comparison_md(result: dict) -> str:
    lines = ["# chsnn comparison", "", "| " + " | ".join(h for _, h, _ in COMPARISON_COLUMNS) + " |", "|" + "---|" * len(COMPARISON_COLUMNS)]
    lines += ["| " + " | ".join(_cells(r, COMPARISON_COLUMNS)) + " |" for r in result["runs"]]
    if result["sops_explained"]:
        lines += ["", "## SOPs against the dense run", "", EXPLAIN_TEXT, ""]
        lines += ["| " + " | ".join(h for _, h, _ in EXPLAIN_COLUMNS) + " |", "|" + "---|" * len(EXPLAIN_COLUMNS)]
        lines += ["| " + " | ".join(_cells(r, EXPLAIN_COLUMNS)) + " |" for r in result["sops_explained"]]
    lines += ["", "Figure `fig-accuracy-sops` (in comparison.html): test accuracy against SOPs per sample, one point per run."]
    return "\n".join(lines) + "\n"


def _comparison_figure(rows: list[dict]) -> str | None:
    pts = [r for r in rows if r["sops_per_sample"] is not None and r["test_accuracy"] is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in pts:
        ax.scatter(r["sops_per_sample"], r["test_accuracy"], s=40)
        ax.annotate(f"{r['run']} ({r['method']})", (r["sops_per_sample"], r["test_accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    xs = [r["sops_per_sample"] for r in pts if r["sops_per_sample"] > 0]
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("SOPs per sample"), ax.set_ylabel("test accuracy"), ax.grid(alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    return _svg(fig)


def _comparison_html(result: dict, figure: str | None) -> str:
    parts = ["<header><h1>chsnn comparison</h1>", f'<p class="sub">{len(result["runs"])} runs</p></header>', "<main>"]
    parts.append(_table([h for _, h, _ in COMPARISON_COLUMNS], [_cells(r, COMPARISON_COLUMNS) for r in result["runs"]]).replace("<table", '<table id="runs"', 1))
    if result["sops_explained"]:
        parts += ["<h2>SOPs against the dense run</h2>", "<p>" + EXPLAIN_TEXT + "</p>"]
        parts.append(_table([h for _, h, _ in EXPLAIN_COLUMNS], [_cells(r, EXPLAIN_COLUMNS) for r in result["sops_explained"]]).replace("<table", '<table id="explained"', 1))
    content = figure or '<p class="missing">Not shown: no run has SOPs per sample.</p>'
    parts.append(f'<figure id="fig-accuracy-sops">\n{content}\n<figcaption>Test accuracy against SOPs per sample, one point per run.</figcaption>\n</figure>')
    parts.append("</main>")
    return _page("chsnn comparison", "\n".join(parts))


# Command line ---------------------------------------------------------------------------------


def add_report_command(sub) -> None:
    """Register ``chsnn report`` on the ``chsnn`` subparsers."""
    p = sub.add_parser("report", help="render a run's HTML/markdown report with its energy accounting (several runs: also a comparison)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `chsnn train`")
    p.add_argument("--out", default=".", help="where the comparison of several runs goes (default: the current directory)")
    p.add_argument("--pj-ac", type=float, default=None, help="energy of one accumulate in pJ (default: chsnn.energy.PJ_PER_AC, 0.9)")
    p.add_argument("--pj-mac", type=float, default=None, help="energy of one multiply-accumulate in pJ (default: chsnn.energy.PJ_PER_MAC, 4.6)")
    p.set_defaults(func=_report_command)


def _report_command(args) -> int:
    dirs = [check_run_dir(d) for d in args.run_dirs]  # fail before any work
    for d in dirs:
        report = render_report(d, pj_per_ac=args.pj_ac, pj_per_mac=args.pj_mac)
        ps, ra = report["per_sample"], report["ratios"]
        print(f"{d / 'report' / 'index.html'}: accuracy {_fmt(report.get('test_accuracy'), '.4f')}, sparsity {_fmt(report.get('sparsity'), '.4f')}, "
              f"{_fmt(ps.get('sops'))} SOPs and {_fmt(ps.get('energy_pj'))} pJ per sample (x{_fmt(ra.get('energy_pj'), '.3f')} of dense)")
    if len(dirs) > 1:
        render_comparison(dirs, args.out, pj_per_ac=args.pj_ac, pj_per_mac=args.pj_mac)
        print(f"{Path(args.out) / 'comparison.html'}")
    return 0
