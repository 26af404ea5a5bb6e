"""The results of a ``chsnn sweep``: runs aggregated over seeds (mean +- std),
the method and ablation tables, the verdicts against rivals, figures, and
the markdown/JSON files they are written to."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from chsnn.stats import discordant, mcnemar_p

if TYPE_CHECKING:
    from chsnn.sweep import Run

DENSE_GAP = 0.005  # "matches dense": within half a percentage point


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[Run]) -> list[dict]:
    """One row per (group, label, sparsity): mean and std over the finished seeds."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        if not r.finished:
            continue
        for g in r.groups:
            cells.setdefault((g, r.label, r.sparsity), []).append(r.summary() | {"_seed": r.seed})
    rows = []
    for (group, label, sparsity), summaries in cells.items():

        def stat(key):
            vals = [s[key] for s in summaries if s.get(key) is not None]
            return mean_std(vals) if vals else (None, None)

        acc, acc_std = stat("test_accuracy")
        sops, _ = stat("sops_per_sample")
        macs, _ = stat("macs_per_sample")
        energy, _ = stat("energy_pj_per_sample")
        wall, _ = stat("wall_seconds")
        rows.append(
            dict(
                group=group,
                label=label,
                sparsity=sparsity,
                seeds=sorted(s["_seed"] for s in summaries),
                test_accuracy=acc,
                test_accuracy_std=acc_std,
                per_seed=[s["test_accuracy"] for s in sorted(summaries, key=lambda s: s["_seed"])],
                best_epoch_accuracy=stat("best_test_accuracy")[0],
                reached_sparsity=stat("sparsity")[0],
                sops_per_sample=sops,
                macs_per_sample=macs,
                energy_uj_per_sample=None if energy is None else energy / 1e6,
                wall_seconds=wall,
            )
        )
    return rows


def plus_minus(mean, std, digits=4):
    return "" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def evaluated_on(runs) -> str:
    """What the runs' accuracy was measured on: "validation" when their data
    option ``validation`` held part of the training set out (the test set unused)."""
    held_out = any(r.cfg.get("data_options", {}).get("validation") not in (None, "") for r in runs)
    return "accuracy on the validation split (held-out training data; the test set unused)" if held_out else "test accuracy"


def what_seeds_draw(runs) -> str:
    """How seeds differ: each its own initialisation and data order, and its own
    split or, under the data option ``kfold``, its own fold."""
    folds = {str(r.cfg.get("data_options", {}).get("kfold") or "").strip() for r in runs} - {""}
    if len(folds) == 1 and next(iter(folds)).isdecimal():  # a bad value fails the runs themselves, not this line
        k = folds.pop()
        return (
            f"seed s tests fold s mod {k} of a stratified {k}-fold partition of the data, so seeds 0-{int(k) - 1} "
            "test every sample once; each seed also draws its own initialisation and data order"
        )
    return "each seed draws its own initialisation, data order and, where the data is split, split"


def method_table(rows: list[dict], labels: list[str], sparsities: list[float]) -> str:
    """Methods down, sparsities across: final test accuracy, mean ± std, and
    the cost per sample: synaptic operations for spiking networks,
    multiply-accumulates where no run counted SOPs (ANNs)."""
    by = {(r["label"], r["sparsity"]): r for r in rows if r["group"] == "methods"}
    cost, cost_name = "sops_per_sample", "SOPs"
    if not any(r.get("sops_per_sample") is not None for r in by.values()) and any(r.get("macs_per_sample") for r in by.values()):
        cost, cost_name = "macs_per_sample", "MACs"  # ANNs: no spikes to count
    head = (
        "| method | "
        + " | ".join(f"{s:g}" for s in sparsities)
        + f" | {cost_name} / sample at "
        + " / ".join(f"{s:g}" for s in sparsities)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(sparsities) + 2)]
    for label in labels:
        dense = (label, None) in by
        accs, costs = [], []
        for s in sparsities:
            r = by.get((label, None) if dense else (label, s))
            accs.append(plus_minus(r["test_accuracy"], r["test_accuracy_std"]) if r else "not run")
            costs.append("" if not r or r.get(cost) is None else f"{r[cost]:.3g}")
        if dense:  # one dense run per seed, whatever the sparsity
            accs = [accs[0] + " (dense)"] + ["″"] * (len(sparsities) - 1)
            costs = costs[:1]
        lines.append(f"| {label} | " + " | ".join(accs) + " | " + " / ".join(costs) + " |")
    return "\n".join(lines)


def paired_lead(ours: dict, rival: dict) -> tuple[int, int]:
    """Seeds on which ``ours`` scored above ``rival``, out of the seeds both ran.
    Seeds are paired: the same seed means the same split and data order."""
    a = dict(zip(ours["seeds"], ours["per_seed"]))
    b = dict(zip(rival["seeds"], rival["per_seed"]))
    common = sorted(set(a) & set(b))
    return sum(a[s] > b[s] for s in common), len(common)


def versus(ours: dict, rival: dict) -> tuple[float, float, int, int]:
    """``ours`` against ``rival``: the difference of the means and the larger std
    (both in points), and the seeds ``ours`` is ahead on out of those both ran."""
    diff = (ours["test_accuracy"] - rival["test_accuracy"]) * 100
    spread = max(ours["test_accuracy_std"], rival["test_accuracy_std"]) * 100
    return diff, spread, *paired_lead(ours, rival)


def run_predictions(runs: list[Run]) -> dict[tuple, dict]:
    """(label, sparsity) -> {seed: (labels, predicted)} of the finished method runs
    that saved their predictions; a cell missing any seed's predictions is left out."""
    cells: dict[tuple, dict] = {}
    incomplete = set()
    for r in runs:
        if "methods" not in r.groups or not r.finished:
            continue
        key = (r.label, r.sparsity)
        pred = r.predictions()
        if pred is None:
            incomplete.add(key)
        else:
            cells.setdefault(key, {})[r.seed] = pred
    return {k: v for k, v in cells.items() if k not in incomplete}


def comparison_table(
    rows: list[dict], labels: list[str], sparsities: list[float], method: str = "chsnn", predictions: dict | None = None
) -> str | None:
    """``method`` against every other row of the method table at each sparsity:
    the mean difference in points and on how many paired seeds it is ahead; a
    difference larger than both methods' std is bold. With ``predictions``
    (:func:`run_predictions`), a cell whose runs all saved them adds the
    test samples only each side got right, pooled over the seeds, and the
    exact McNemar p-value of that split."""
    predictions = predictions or {}
    by = {(r["label"], r["sparsity"]): r for r in rows if r["group"] == "methods"}
    if not any((method, s) in by for s in sparsities) or not any(label != method for label in labels):
        return None  # nothing to compare (e.g. a grid of CH-SNN and its ablation only)
    lines = ["| against | " + " | ".join(f"{s:g}" for s in sparsities) + " |", "|" + "---|" * (len(sparsities) + 1)]
    for label in labels:
        if label == method:
            continue
        cells = []
        for s in sparsities:
            ours, rival = by.get((method, s)), by.get((label, None)) or by.get((label, s))
            if ours is None or rival is None:
                cells.append("")
                continue
            diff, spread, ahead, n = versus(ours, rival)
            number = f"**{diff:+.2f}**" if abs(diff) > spread else f"{diff:+.2f}"
            split = None
            if (method, s) in predictions and (rival["label"], rival["sparsity"]) in predictions:
                split = discordant(predictions[(method, s)], predictions[(rival["label"], rival["sparsity"])])
            if split is None:
                cells.append(f"{number} ({ahead}/{n})")
            else:
                cells.append(f"{number} ({ahead}/{n}; {split[0]}:{split[1]}, p {mcnemar_p(*split):.2g})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(rows: list[dict], labels: list[str]) -> str:
    by = {r["label"]: r for r in rows if r["group"] == "ablation"}
    ref = by.get(labels[0])
    lines = [
        f"| variant | test accuracy | change vs {labels[0]} | SOPs / sample | energy µJ / sample |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        r = by.get(label)
        if r is None:
            lines.append(f"| {label} | not run | | | |")
            continue
        delta = ""
        if ref is not None and label != labels[0]:
            lower, n = paired_lead(ref, r)
            delta = f"{(r['test_accuracy'] - ref['test_accuracy']) * 100:+.2f} points (lower on {lower} of {n} seeds)"
        energy = "" if r["energy_uj_per_sample"] is None else f"{r['energy_uj_per_sample']:.3g}"
        sops = "" if r["sops_per_sample"] is None else f"{r['sops_per_sample']:.3g}"
        lines.append(f"| {label} | {plus_minus(r['test_accuracy'], r['test_accuracy_std'])} | {delta} | {sops} | {energy} |")
    return "\n".join(lines)


def verdicts(rows: list[dict], sparsity: float = 0.95, method: str = "chsnn", rivals=None) -> list[str]:
    """Plain sentences: does ``method`` match dense within 0.5 points, and beat
    each rival (default: every other sparse variant of the table, in order)?"""
    by = {(r["label"], r["sparsity"]): r for r in rows if r["group"] == "methods"}
    if rivals is None:
        rivals = [lab for (lab, s) in by if s == sparsity and lab != method]
    dense = next((r for (lab, s), r in by.items() if s is None), None)
    ours = by.get((method, sparsity))
    out = []
    if ours is None:
        return [f"{method} at sparsity {sparsity:g} was not run."]
    if dense is not None:
        gap = (dense["test_accuracy"] - ours["test_accuracy"]) * 100
        if gap <= DENSE_GAP * 100 + 1e-9:  # 0.5 points exactly counts as within
            where = f"{gap:.2f} points below dense" if gap >= 0 else f"{-gap:.2f} points above dense"
            out.append(f"At sparsity {sparsity:g}, {method} is within 0.5 points of dense ({where}).")
        else:
            out.append(f"At sparsity {sparsity:g}, {method} does **not** match dense: it is {gap:.2f} points below (more than 0.5).")
    for rival in rivals:
        r = by.get((rival, sparsity))
        if r is None:
            continue
        diff, spread, ahead, n = versus(ours, r)
        if diff > 0:
            word = "beats" if diff > spread else "is ahead of, but within one standard deviation of,"
        else:
            word = "does **not** beat"
        detail = f"{diff:+.2f} points; std up to {spread:.2f}; ahead on {ahead} of {n} seeds"
        out.append(f"At sparsity {sparsity:g}, {method} {word} {rival} ({detail}).")
    return out


def accuracy_figure(rows: list[dict], labels: list[str], sparsities: list[float], title: str) -> str | None:
    from chsnn.report.figures import inline_svg, pyplot

    plt = pyplot()
    if plt is None or not sparsities or (len(labels) == 1 and len(sparsities) == 1):
        return None  # (one method at one sparsity is one point: the table says it)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = list(range(len(sparsities)))
    for label in labels:
        pts = [r for r in rows if r["group"] == "methods" and r["label"] == label]
        if not pts:
            continue
        if pts[0]["sparsity"] is None:  # dense: a band over all sparsities
            m, s = pts[0]["test_accuracy"], pts[0]["test_accuracy_std"]
            ax.axhspan(m - s, m + s, color="0.85", zorder=0)
            ax.axhline(m, color="0.3", ls="--", lw=1, label=f"{label}")
            continue
        pts = sorted((p for p in pts if p["sparsity"] in sparsities), key=lambda p: p["sparsity"])
        ax.errorbar(
            [xs[sparsities.index(p["sparsity"])] for p in pts],
            [p["test_accuracy"] for p in pts],
            yerr=[p["test_accuracy_std"] for p in pts],
            marker="o",
            ms=4,
            capsize=3,
            lw=1.5 if label == "chsnn" else 1,
            label=label,
        )
    ax.set_xticks(xs, [f"{s:g}" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return inline_svg(fig)


def ablation_figure(rows: list[dict], labels: list[str], title: str) -> str | None:
    from chsnn.report.figures import inline_svg, pyplot

    plt = pyplot()
    by = {r["label"]: r for r in rows if r["group"] == "ablation"}
    pts = [by[lab] for lab in labels if lab in by]
    if plt is None or not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(pts)))
    ys = list(range(len(pts)))[::-1]
    ax.barh(
        ys, [p["test_accuracy"] for p in pts], xerr=[p["test_accuracy_std"] for p in pts], color=["C3"] + ["C0"] * (len(pts) - 1), capsize=3
    )
    ax.set_yticks(ys, [p["label"] for p in pts], fontsize=8)
    lo = min(p["test_accuracy"] - p["test_accuracy_std"] for p in pts)
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(p["test_accuracy"] + p["test_accuracy_std"] for p in pts) + 0.02))
    ax.set_xlabel("final test accuracy (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return inline_svg(fig)


def standalone_svg(inline: str) -> str:
    """The report's inline SVG (namespaces left to the HTML parser) as an .svg file."""
    return inline.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" ', 1)


def describe_recipe(grid: dict, runs: list[Run]) -> str:
    from chsnn.config import DEFAULTS
    from chsnn.models.registry import is_spiking

    cfg = runs[0].cfg
    # Only what every run has: a method's own options (its label says them) are not shared.
    engine = {
        k: v
        for k, v in cfg["engine"].items()
        if k not in ("method", "sparsity") and v is not None and all(r.cfg.get("engine", {}).get(k) == v for r in runs)
    }
    extra = f"; engine options shared by all methods: {engine}" if engine else ""
    min_steps = cfg.get("min_update_steps", DEFAULTS["min_update_steps"])
    try:
        steps = f"{cfg['time_steps']} time steps, " if is_spiking(cfg["model"]) else ""  # an ANN has none
    except ValueError:  # a model registered by a plugin this process has not imported
        steps = f"{cfg['time_steps']} time steps, "
    options = f" {cfg['model_options']}" if cfg.get("model_options") else ""
    return (
        f"model `{cfg['model']}`{options}, data `{cfg['data']}`, {steps}"
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']} ({cfg['lr_schedule']}), "
        f"topology updates {cfg.get('updates_per_epoch', 1)} per epoch but at least {min_steps} step{'s' if min_steps != 1 else ''} apart"
        f"{updates_made(runs)}{extra}"
    )


def updates_made(runs: list[Run]) -> str:
    """What that rule gave: the interval and the number of updates of the
    finished dynamic runs that do not set their own ``update_interval``
    (a short epoch makes the step floor, not the epoch, the interval)."""
    seen = set()
    for r in runs:
        if not r.finished or "update_interval" in r.cfg.get("engine", {}):
            continue
        s = r.summary()
        if s.get("topology_updates"):
            seen.add((s.get("update_interval"), s["topology_updates"], s["steps"]))
    if not seen:
        return ""
    intervals = sorted({i for i, _, _ in seen if i is not None})
    counts = sorted({n for _, n, _ in seen})
    steps = sorted({n for _, _, n in seen})
    every = f"every {'/'.join(map(str, intervals))} steps, " if intervals else ""
    return f" ({every}{_span(counts)} updates in {_span(steps)} steps)"


def _span(values: list) -> str:
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"


def machine_line(runs: list[Run]) -> str:
    """The machine the runs record (summary.json's ``machine``); runs written
    before it was recorded count as trained on this one."""
    from chsnn.bench import machine_description

    here = machine_description(brief=True)
    names = {r.summary().get("machine") or here for r in runs if r.finished}
    return "; ".join(sorted(names)) or here


def write_results(
    grid: dict, runs: list[Run], command: str, results_file: Path | None, figures_dir: Path | None, parallel: str = ""
) -> dict:
    """Tables, verdicts and figures of the finished runs (``parallel``: how they were trained, for the machine line)."""
    from chsnn.bench import write_section

    rows = aggregate(runs)
    out = Path(grid["out"])
    out.mkdir(parents=True, exist_ok=True)
    labels = list(grid["methods"])
    sparsities = [float(s) for s in grid["sparsities"]] or sorted({r["sparsity"] for r in rows if r["sparsity"] is not None})
    ablation = grid.get("ablation")
    ab_labels = list(ablation["variants"]) if ablation else []
    figures = {"accuracy": accuracy_figure(rows, labels, sparsities, grid["title"])}
    if ablation:
        figures["ablation"] = ablation_figure(
            rows, ab_labels, f"{grid['title']}: CH-SNN stages ablated, sparsity {ablation.get('sparsity', 0.95):g}"
        )
    fig_paths = {}
    for key, svg in figures.items():
        if svg is None:
            continue
        svg = standalone_svg(svg)
        fig_paths[key] = out / f"{key}.svg"
        fig_paths[key].write_text(svg)
        if figures_dir is not None:
            figures_dir.mkdir(parents=True, exist_ok=True)
            (figures_dir / f"{grid['name']}_{key}.svg").write_text(svg)

    n_seeds = len(grid["seeds"])
    total = len(runs)
    done = sum(r.finished for r in runs)
    key_sparsity = 0.95 if 0.95 in sparsities else (sparsities[len(sparsities) // 2] if sparsities else 0.95)
    lines = [
        f"### {grid['title']}",
        "",
        f"Command: `{command}`  ",
        f"Recipe: {describe_recipe(grid, runs)}.  ",
        f"Machine: {machine_line(runs)}; {done} of {total} runs finished, run directories under `{out}/`{parallel}.",
        "",
        f"Final-epoch {evaluated_on(runs)}, mean ± std over {n_seeds} seeds ({what_seeds_draw(runs)}):",
        "",
        method_table(rows, labels, sparsities),
        "",
    ]
    if "chsnn" in labels:  # a grid without CH-SNN (a tuning grid) has nothing to judge
        lines += [f"- {v}" for v in verdicts(rows, key_sparsity)]
    predictions = run_predictions(runs)
    for method in ["chsnn", *grid.get("compare", [])]:
        comparison = comparison_table(rows, labels, sparsities, method, predictions)
        if comparison is not None:
            name = "CH-SNN" if method == "chsnn" else method
            samples = (
                f" Where both methods' runs saved their predictions: the test samples only {name} got right : only "
                "the other got right, pooled over the seeds, and the two-sided exact McNemar p-value of that split "
                "(small p: the two are unlikely to be equally accurate on this data)."
                if ", p " in comparison
                else ""
            )
            lines += [
                "",
                f"{name} against each method, paired by seed: the difference of the means in points (seeds on which "
                f"{name} is ahead / seeds both ran); **bold**: larger than either method's standard deviation.{samples}",
                "",
                comparison,
            ]
    if figures_dir is not None and "accuracy" in fig_paths:
        rel = os.path.relpath(figures_dir / f"{grid['name']}_accuracy.svg", results_file.parent if results_file else out)
        lines += ["", f"![accuracy against sparsity, {grid['title']}]({rel})"]
    if ablation:
        lines += [
            "",
            f"Ablation at sparsity {ablation.get('sparsity', 0.95):g}: each CH-SNN stage replaced by its baseline in turn (same seeds):",
            "",
            ablation_table(rows, ab_labels),
        ]
        if figures_dir is not None and "ablation" in fig_paths:
            rel = os.path.relpath(figures_dir / f"{grid['name']}_ablation.svg", results_file.parent if results_file else out)
            lines += ["", f"![ablation, {grid['title']}]({rel})"]
    body = "\n".join(lines) + "\n"
    result = {"grid": grid, "command": command, "rows": rows, "runs": [str(r.run_dir) for r in runs], "finished": done, "total": total}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(body)
    if results_file is not None:
        if not results_file.exists():
            results_file.write_text("# Results\n")
        write_section(results_file, f"sweep:{grid['name']}", body)
    return result


# Command line ------------------------------------------------------------------------
