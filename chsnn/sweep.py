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
    compare: [hebb-set]              # optional: methods that, like chsnn, get a table against every other
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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from chsnn.config import DEFAULTS
from chsnn.sparse import ConfigError, EngineConfig
from chsnn.sweep_results import (  # noqa: F401  (the sweep API, importable from here)
    DENSE_GAP,
    ablation_table,
    accuracy_figure,
    aggregate,
    method_table,
    verdicts,
    write_results,
)

GRID_KEYS = {"name", "title", "config", "set", "out", "seeds", "sparsities", "methods", "ablation", "compare"}
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclass
class Run:
    label: str
    sparsity: float | None  # None: dense (no sparse layers, one run per seed)
    seed: int
    cfg: dict
    run_dir: Path
    groups: set = field(default_factory=set)  # "methods" and/or "ablation"
    _summary: dict | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").is_file()

    def summary(self) -> dict:
        # Written once, when the run ends; the tables, recipe and machine lines all read it.
        if self._summary is None:
            self._summary = json.loads((self.run_dir / "summary.json").read_text())
        return self._summary

    def predictions(self):
        """``(labels, predicted)`` of the run's final evaluation, or None (see :meth:`RunDir.predictions`)."""
        from chsnn.rundir import RunDir

        return RunDir(self.run_dir).predictions() if self.finished else None


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
    # compare: further methods to set against every other, as CH-SNN is (a variant chosen on validation)
    grid.setdefault("compare", [])
    if not isinstance(grid["compare"], list) or not all(label in grid["methods"] for label in grid["compare"]):
        raise ConfigError(f"sweep grid {path}: compare must be a list of labels from methods ({', '.join(grid['methods'])})")
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


# Engine options whose absence means the EngineConfig field's default (those
# the config's own defaults set, method and sparsity, are always written out).
_ENGINE_DEFAULTS = {f.name: f.default for f in fields(EngineConfig) if f.default is not MISSING and f.name not in DEFAULTS["engine"]}


def _comparable(cfg: dict) -> dict:
    """The parts of a config that decide what a run computes (a data path as
    the absolute path it names: runs store it resolved, older ones did not)."""
    from chsnn.config import resolve_data_path

    out = {k: v for k, v in cfg.items() if k not in ("description", "results", "default", "config_source")}
    if isinstance(out.get("data"), str):
        out["data"] = resolve_data_path(out["data"])
    if isinstance(out.get("engine"), dict):
        # An engine option given at its default computes what leaving it out
        # does (``init: null`` is the method's own initial topology).
        out["engine"] = {k: v for k, v in out["engine"].items() if not (k in _ENGINE_DEFAULTS and v == _ENGINE_DEFAULTS[k])}
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


def config_differences(run: Run) -> list[str]:
    """The config keys in which a finished run's saved config differs from
    the one the grid asks for (empty: it trained that config, or nothing is saved)."""
    import yaml

    saved_path = run.run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    # A key added to the config since that run was trained counts as its default.
    want, have = _comparable(run.cfg), _comparable({**DEFAULTS, **saved})
    have.pop("max_steps", None), want.pop("max_steps", None)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


def check_reusable(run: Run) -> None:
    """A finished run is reused (trained on or tabulated) only if it trained the config the grid asks for."""
    keys = config_differences(run)
    if keys:
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
    """Train the unfinished runs; returns the failures (run, log tail). The
    finished ones are the grid's: the caller has checked them (check_reusable)."""
    from tqdm import tqdm

    todo = [r for r in runs if not r.finished]
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
        differing = 0
        for r in runs:
            keys = config_differences(r)
            differing += bool(keys)
            state = f"differs ({', '.join(keys)})" if keys else "done" if r.finished else "todo"
            print(f"{state}  {r.run_dir}")
        print(f"{sum(r.finished for r in runs)} of {len(runs)} runs finished")
        if differing:
            print(f"{differing} hold a run of a different config: the sweep stops on them; delete those directories or change `out`")
        return 0
    for r in runs:  # train on, or tabulate, only runs of the grid's configs
        check_reusable(r)
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
