"""``chsnn sweep GRID.yaml``: methods x sparsities x seeds from one YAML grid.

A grid names a base config and the variants to compare::

    name: snn-mlp_ndigits            # used for figure names and the results section
    title: Spiking MLP on ndigits
    config: snn-mlp_ndigits          # zoo name or YAML path
    set: {epochs: 20}                # config overrides for every run (like --set)
    out: runs/sweep/snn-mlp_ndigits  # one run directory per (variant, sparsity, seed)
    seeds: [0, 1, 2]
    sparsities: [0.9, 0.95, 0.99]
    methods:                         # label: engine options, over the config's engine
      dense: {method: dense}
      set: {method: set}
      hebb-set: {method: set, hebb: {}}
      chsnn: {method: chsnn}
    ablation:                        # optional: variants at one sparsity, against the first
      sparsity: 0.95
      variants:
        chsnn: {method: chsnn}
        regrowth=random: {method: chsnn, regrowth: random}

Every run is an ordinary ``chsnn train`` run directory, trained in its own
process (``--workers`` at a time, ``--threads`` torch threads each). A run whose
``summary.json`` exists is reused, provided its saved config is the one the
grid asks for; an interrupted run resumes from its checkpoint. The tables
(mean +- std over seeds of the final epoch's test accuracy, SOPs, energy) and
figures are written to ``OUT/results.md``, ``OUT/results.json`` and
``OUT/*.svg``; ``--results FILE`` also writes them, with the command, into a
markdown file such as ``models/RESULTS.md``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from chsnn.sparse import ConfigError

GRID_KEYS = {"name", "title", "config", "set", "out", "seeds", "sparsities", "methods", "ablation"}
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
DENSE_GAP = 0.005  # "matches dense": within half a percentage point


@dataclass
class Run:
    label: str
    sparsity: float | None  # None: dense (no sparse layers, one run per seed)
    seed: int
    cfg: dict
    run_dir: Path
    groups: set = field(default_factory=set)  # "methods" and/or "ablation"

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").is_file()

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


# Grid -----------------------------------------------------------------------------


def load_grid(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep grid {path} does not exist; see `chsnn sweep --help` for the format (examples in models/sweeps/)")
    try:
        grid = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep grid {path} is not valid YAML: {exc}") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep grid {path} must be a mapping with keys {', '.join(sorted(GRID_KEYS))}")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"sweep grid {path}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(sorted(GRID_KEYS))}")
    for key in ("config", "methods", "seeds"):
        if key not in grid:
            raise ConfigError(f"sweep grid {path}: missing key {key!r}")
    grid.setdefault("name", path.stem)
    grid.setdefault("title", grid["name"])
    grid.setdefault("set", {})
    grid.setdefault("out", f"runs/sweep/{grid['name']}")
    grid.setdefault("sparsities", [])
    if not isinstance(grid["seeds"], list) or not grid["seeds"] or not all(isinstance(s, int) for s in grid["seeds"]):
        raise ConfigError(f"sweep grid {path}: seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    for s in grid["sparsities"]:
        if not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise ConfigError(f"sweep grid {path}: sparsity {s!r} must be a number in [0, 1)")
    _check_variants(path, "methods", grid["methods"])
    ablation = grid.get("ablation")
    if ablation is not None:
        if not isinstance(ablation, dict) or set(ablation) - {"sparsity", "variants"} or "variants" not in ablation:
            raise ConfigError(f"sweep grid {path}: ablation must be {{sparsity: S, variants: {{label: engine options}}}}")
        _check_variants(path, "ablation.variants", ablation["variants"])
    return grid


def _check_variants(path, key, variants) -> None:
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"sweep grid {path}: {key} must map labels to engine options, e.g. {{chsnn: {{method: chsnn}}}}")
    for label, options in variants.items():
        if not LABEL_RE.match(str(label)):
            raise ConfigError(f"sweep grid {path}: label {label!r} in {key} must be a file-name-safe word (letters, digits, _ . + = -)")
        if not isinstance(options, dict):
            raise ConfigError(f"sweep grid {path}: {key}.{label} must be a mapping of engine options, e.g. {{method: set}}")


def _comparable(cfg: dict) -> dict:
    """The parts of a config that decide what a run computes (a data path as
    the absolute path it names: runs store it resolved, older ones did not)."""
    from chsnn.config import resolve_data_path

    out = {k: v for k, v in cfg.items() if k not in ("description", "results", "default", "config_source")}
    if isinstance(out.get("data"), str):
        out["data"] = resolve_data_path(out["data"])
    return out


def plan_runs(grid: dict) -> list[Run]:
    """All runs of the grid, each once (a variant shared by the method table
    and the ablation, e.g. ``chsnn`` at 0.95, is one run)."""
    from chsnn.config import merge, resolve_config, validate_config

    out = Path(grid["out"])
    base = merge(resolve_config(grid["config"], {}, []), grid["set"])
    runs: dict[str, Run] = {}

    def add(group, label, options, sparsity):
        dense = options.get("method", base["engine"].get("method")) == "dense"
        for seed in grid["seeds"]:
            cfg = copy.deepcopy(base)
            cfg["seed"] = seed
            cfg["engine"] = {**cfg["engine"], **copy.deepcopy(options)}
            if not dense:
                cfg["engine"]["sparsity"] = float(sparsity)
            try:
                validate_config(cfg)
            except ConfigError as exc:
                raise ConfigError(f"sweep variant {label!r} (sparsity {sparsity}, seed {seed}): {exc}") from None
            name = f"{label}_seed{seed}" if dense else f"{label}_s{sparsity:g}_seed{seed}"
            run = runs.get(name)
            if run is None:
                runs[name] = run = Run(label, None if dense else float(sparsity), seed, cfg, out / name)
            elif _comparable(run.cfg) != _comparable(cfg):
                raise ConfigError(
                    f"sweep: label {label!r} names two different configs (in methods and ablation); give them different labels"
                )
            run.groups.add(group)

    for label, options in grid["methods"].items():
        sparsities = grid["sparsities"] or [base["engine"].get("sparsity", 0.9)]
        for s in sparsities if options.get("method") != "dense" else sparsities[:1]:
            add("methods", label, options, s)
    ablation = grid.get("ablation")
    if ablation:
        s = ablation.get("sparsity", base["engine"].get("sparsity", 0.9))
        for label, options in ablation["variants"].items():
            add("ablation", label, options, s)
    return list(runs.values())


def check_reusable(run: Run) -> None:
    """A finished run is reused only if it trained the config the grid asks for."""
    import yaml

    saved_path = run.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    from chsnn.config import DEFAULTS

    saved = yaml.safe_load(saved_path.read_text()) or {}
    # A key added to the config since that run was trained counts as its default.
    want, have = _comparable(run.cfg), _comparable({**DEFAULTS, **saved})
    have.pop("max_steps", None), want.pop("max_steps", None)
    if want != have:
        keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ConfigError(
            f"sweep: {run.run_dir} holds a run with a different config (differs in: {', '.join(keys)}); "
            "delete that directory or point the grid's `out` elsewhere"
        )


# Running ----------------------------------------------------------------------------


def _train_process(run: Run, threads: int) -> tuple[Run, int, float]:
    import yaml

    run.run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run.run_dir / "latest.pt").is_file()
    cmd = [sys.executable, "-m", "chsnn", "train", "--out", str(run.run_dir), "--quiet"]
    if resume:
        cmd.append("--resume")
    else:
        cfg_file = run.run_dir / "sweep_config.yaml"
        cfg_file.write_text(yaml.safe_dump(run.cfg, sort_keys=False))
        cmd += ["--config", str(cfg_file)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(run.run_dir / "train.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return run, rc, time.time() - start


def run_grid(runs: list[Run], workers: int, threads: int, progress: bool = True) -> list[tuple[Run, str]]:
    """Train the unfinished runs; returns the failures (run, log tail)."""
    from tqdm import tqdm

    todo = [r for r in runs if not r.finished]
    for r in runs:
        check_reusable(r)
    failures = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep runs", unit="run", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_train_process, r, threads) for r in todo]
        for fut in as_completed(futures):
            run, rc, seconds = fut.result()
            if rc != 0 or not run.finished:
                log = (run.run_dir / "train.log").read_text(errors="replace").strip().splitlines()
                failures.append((run, "\n".join(log[-5:])))
                bar.write(f"FAILED {run.run_dir.name} (exit {rc}); log: {run.run_dir / 'train.log'}")
            else:
                bar.set_postfix_str(f"{run.run_dir.name}: {run.summary()['test_accuracy']:.4f} in {seconds:.0f}s")
            bar.update(1)
    bar.close()
    return failures


# Tables and figures ----------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
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
            return _mean_std(vals) if vals else (None, None)

        acc, acc_std = stat("test_accuracy")
        sops, _ = stat("sops_per_sample")
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
                energy_uj_per_sample=None if energy is None else energy / 1e6,
                wall_seconds=wall,
            )
        )
    return rows


def _pm(mean, std, digits=4):
    return "" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def method_table(rows: list[dict], labels: list[str], sparsities: list[float]) -> str:
    """Methods down, sparsities across: final test accuracy, mean ± std."""
    by = {(r["label"], r["sparsity"]): r for r in rows if r["group"] == "methods"}
    head = (
        "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " | SOPs / sample at " + " / ".join(f"{s:g}" for s in sparsities) + " |"
    )
    lines = [head, "|" + "---|" * (len(sparsities) + 2)]
    for label in labels:
        dense = (label, None) in by
        accs, sops = [], []
        for s in sparsities:
            r = by.get((label, None) if dense else (label, s))
            accs.append(_pm(r["test_accuracy"], r["test_accuracy_std"]) if r else "not run")
            sops.append("" if not r or r["sops_per_sample"] is None else f"{r['sops_per_sample']:.3g}")
        if dense:  # one dense run per seed, whatever the sparsity
            accs = [accs[0] + " (dense)"] + ["″"] * (len(sparsities) - 1)
            sops = sops[:1]
        lines.append(f"| {label} | " + " | ".join(accs) + " | " + " / ".join(sops) + " |")
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
        delta = "" if ref is None or label == labels[0] else f"{(r['test_accuracy'] - ref['test_accuracy']) * 100:+.2f} points"
        energy = "" if r["energy_uj_per_sample"] is None else f"{r['energy_uj_per_sample']:.3g}"
        sops = "" if r["sops_per_sample"] is None else f"{r['sops_per_sample']:.3g}"
        lines.append(f"| {label} | {_pm(r['test_accuracy'], r['test_accuracy_std'])} | {delta} | {sops} | {energy} |")
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
            out.append(f"At sparsity {sparsity:g}, {method} is within 0.5 points of dense ({gap:+.2f} points below dense).")
        else:
            out.append(f"At sparsity {sparsity:g}, {method} does **not** match dense: it is {gap:.2f} points below (more than 0.5).")
    for rival in rivals:
        r = by.get((rival, sparsity))
        if r is None:
            continue
        diff = (ours["test_accuracy"] - r["test_accuracy"]) * 100
        spread = max(ours["test_accuracy_std"], r["test_accuracy_std"]) * 100
        if diff > 0:
            word = "beats" if diff > spread else "is ahead of, but within one standard deviation of,"
        else:
            word = "does **not** beat"
        out.append(f"At sparsity {sparsity:g}, {method} {word} {rival} ({diff:+.2f} points; std up to {spread:.2f}).")
    return out


def accuracy_figure(rows: list[dict], labels: list[str], sparsities: list[float], title: str) -> str | None:
    from chsnn.report.figures import inline_svg, pyplot

    plt = pyplot()
    if plt is None or not sparsities:
        return None
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
    cfg = runs[0].cfg
    engine = {k: v for k, v in cfg["engine"].items() if k not in ("method", "sparsity")}
    extra = f"; engine options shared by all methods: {engine}" if engine else ""
    return (
        f"model `{cfg['model']}` {cfg.get('model_options') or ''}, data `{cfg['data']}`, {cfg['time_steps']} time steps, "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']} ({cfg['lr_schedule']}), "
        f"{cfg.get('updates_per_epoch', 1)} topology update(s) per epoch{extra}"
    )


def write_results(
    grid: dict, runs: list[Run], command: str, results_file: Path | None, figures_dir: Path | None, parallel: str = ""
) -> dict:
    """Tables, verdicts and figures of the finished runs (``parallel``: how they were trained, for the machine line)."""
    import torch

    from chsnn.bench import cpu_name, write_section

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
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{done} of {total} runs finished, run directories under `{out}/`{parallel}.",
        "",
        f"Final-epoch test accuracy, mean ± std over {n_seeds} seeds "
        "(each seed draws its own initialisation, data order and, where the data is split, split):",
        "",
        method_table(rows, labels, sparsities),
        "",
    ]
    lines += [f"- {v}" for v in verdicts(rows, key_sparsity)]
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


def add_sweep_command(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train methods x sparsities x seeds from a YAML grid and tabulate them",
        description=__doc__.split("\n\n")[0] + " See models/sweeps/ for the grids behind models/RESULTS.md.",
    )
    p.add_argument("grid", help="sweep grid YAML (e.g. models/sweeps/snn-mlp_ndigits.yaml)")
    p.add_argument("--workers", type=int, help="training processes at a time (default: CPU cores / threads)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    p.add_argument("--out", help="override the grid's run directory root")
    p.add_argument("--results", help="markdown file to write the tables into (e.g. models/RESULTS.md)")
    p.add_argument("--figures", help="directory for the figures referenced from --results (default: figures/ beside it)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; train nothing")
    p.add_argument("--table-only", action="store_true", help="write the tables from finished runs; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sweep_command)


def _sweep_command(args) -> int:
    grid = load_grid(args.grid)
    if args.out:
        grid["out"] = args.out
    if args.threads < 1 or (args.workers is not None and args.workers < 1):
        raise ConfigError("--threads and --workers must be at least 1")
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads)
    runs = plan_runs(grid)
    if args.dry_run:
        for r in runs:
            print(f"{'done' if r.finished else 'todo'}  {r.run_dir}")
        print(f"{sum(r.finished for r in runs)} of {len(runs)} runs finished")
        return 0
    failures = [] if args.table_only else run_grid(runs, workers, args.threads, progress=not args.quiet)
    # The command that reproduces the tables: how many processes trained them, or
    # whether this call only re-tabulated, does not change a number.
    shown = [args.grid] + [a for opt in ("out", "results", "figures") if getattr(args, opt) for a in (f"--{opt}", getattr(args, opt))]
    command = "chsnn sweep " + " ".join(shlex.quote(a) for a in shown)
    results_file = Path(args.results) if args.results else None
    figures_dir = Path(args.figures) if args.figures else (results_file.parent / "figures" if results_file else None)
    parallel = (
        "" if args.table_only else f"; trained {workers} at a time, {args.threads} torch thread(s) each (wall times vary with the load)"
    )
    result = write_results(grid, runs, command, results_file, figures_dir, parallel)
    print((Path(grid["out"]) / "results.md").read_text())
    for run, tail in failures:
        print(f"FAILED {run.run_dir} — last lines of {run.run_dir / 'train.log'}:\n{tail}", file=sys.stderr)
    if failures:
        print(
            f"chsnn sweep: {len(failures)} of {result['total']} runs failed; "
            "fix the cause and run the same command again (finished runs are kept)",
            file=sys.stderr,
        )
        return 1
    return 0
