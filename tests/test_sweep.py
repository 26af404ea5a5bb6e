"""``chsnn sweep``: grid validation, run planning, reuse, tables and one real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chsnn.cli import main
from chsnn.config import resolve_config
from chsnn.sparse import ConfigError
from chsnn.stats import discordant, mcnemar_p
from chsnn.sweep import Run, aggregate, check_reusable, load_grid, method_table, plan_runs, verdicts
from chsnn.sweep_results import ablation_table, comparison_table, describe_recipe, evaluated_on, machine_line, what_seeds_draw

TINY = {
    "config": "snn-mlp_ndigits",
    "set": {
        "data": "random",
        "data_options": {"input_shape": [1, 6, 6], "n_classes": 3, "kind": "static", "n_train": 64, "n_test": 32},
        "model_options": {"hidden": [16]},
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 32,
    },
    "seeds": [0, 1],
    "sparsities": [0.9, 0.95],
    "methods": {"dense": {"method": "dense"}, "set": {"method": "set"}, "chsnn": {"method": "chsnn"}},
    "ablation": {
        "sparsity": 0.95,
        "variants": {"chsnn": {"method": "chsnn"}, "regrowth=random": {"method": "chsnn", "regrowth": "random"}},
    },
}


def write_grid(tmp_path, **changes) -> Path:
    grid = {**TINY, "out": str(tmp_path / "runs"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_plan_dense_once_per_seed_and_shared_runs(tmp_path):
    runs = plan_runs(load_grid(write_grid(tmp_path)))
    names = sorted(r.run_dir.name for r in runs)
    # dense: one run per seed; set, chsnn: per sparsity and seed; the ablation's
    # chsnn at 0.95 is the method table's run, not a second one.
    assert [n for n in names if n.startswith("dense")] == ["dense_seed0", "dense_seed1"]
    assert len(runs) == 2 + 2 * 2 * 2 + 2
    shared = [r for r in runs if r.run_dir.name == "chsnn_s0.95_seed0"][0]
    assert shared.groups == {"methods", "ablation"}
    ablated = [r for r in runs if r.label == "regrowth=random"][0]
    assert ablated.cfg["engine"]["regrowth"] == "random" and ablated.cfg["engine"]["sparsity"] == 0.95
    assert ablated.cfg["epochs"] == 1 and ablated.cfg["model_options"] == {"hidden": [16]}
    # the base config's engine options stay unless a variant overrides them
    assert shared.cfg["engine"]["zeta"] == 0.3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": 1}, "unknown key(s) colour"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"sparsities": [1.0]}, "must be a number in [0, 1)"),
        ({"methods": {"a b": {"method": "set"}}}, "file-name-safe"),
        ({"methods": {"set": "set"}}, "must be a mapping of engine options"),
        ({"ablation": {"variants": []}}, "must map labels to engine options"),
    ],
)
def test_bad_grids_name_the_problem(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_grid(write_grid(tmp_path, **change))


def test_bad_engine_option_names_the_variant(tmp_path):
    grid = load_grid(write_grid(tmp_path, methods={"oops": {"method": "set", "zetta": 0.1}}))
    with pytest.raises(ConfigError, match="sweep variant 'oops'.*zetta"):
        plan_runs(grid)


def test_missing_grid_file(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_same_label_two_configs_is_an_error(tmp_path):
    grid = load_grid(write_grid(tmp_path, ablation={"sparsity": 0.95, "variants": {"chsnn": {"method": "chsnn", "zeta": 0.1}}}))
    with pytest.raises(ConfigError, match="names two different configs"):
        plan_runs(grid)


def test_reuse_refuses_a_run_with_another_config(tmp_path):
    run = plan_runs(load_grid(write_grid(tmp_path)))[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**run.cfg, "lr": 0.5}))
    with pytest.raises(ConfigError, match="differs in: lr"):
        check_reusable(run)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.cfg))
    check_reusable(run)
    # a run saved before a config key existed (here: precision) has its default
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in run.cfg.items() if k != "precision"}))
    check_reusable(run)


def test_reuse_counts_an_engine_option_at_its_default_as_left_out(tmp_path):
    # A grid pins `init: null` (the method's own initial topology) when its
    # zoo config starts from another one; runs saved without the key are the same runs.
    run = plan_runs(load_grid(write_grid(tmp_path, set={**TINY["set"], "engine": {"init": None}})))[0]
    assert run.cfg["engine"]["init"] is None
    run.run_dir.mkdir(parents=True)
    saved = {**run.cfg, "engine": {k: v for k, v in run.cfg["engine"].items() if k != "init"}}
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    check_reusable(run)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, "engine": {**saved["engine"], "init": "random"}}))
    with pytest.raises(ConfigError, match="differs in: engine"):
        check_reusable(run)


def test_reuse_takes_a_data_path_saved_relative_as_the_absolute_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    run = plan_runs(load_grid(write_grid(tmp_path)))[0]
    run.cfg["data"] = f"mnist:{tmp_path / 'mnist'}"  # how a run stores it now
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**run.cfg, "data": "mnist:mnist"}))  # how older runs stored it
    check_reusable(run)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**run.cfg, "data": "mnist:elsewhere"}))
    with pytest.raises(ConfigError, match="differs in: data"):
        check_reusable(run)


def _fake(tmp_path, label, sparsity, seed, acc, groups=("methods",)):
    run = Run(label, sparsity, seed, {}, tmp_path / f"{label}_{sparsity}_{seed}", set(groups))
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "summary.json").write_text(json.dumps({"test_accuracy": acc, "sops_per_sample": 100.0, "sparsity": sparsity or 0.0}))
    return run


def test_tables_and_verdicts_from_runs(tmp_path):
    runs = [
        _fake(tmp_path, "dense", None, 0, 0.90),
        _fake(tmp_path, "dense", None, 1, 0.92),
        _fake(tmp_path, "set", 0.95, 0, 0.88),
        _fake(tmp_path, "set", 0.95, 1, 0.86),
        _fake(tmp_path, "chsnn", 0.95, 0, 0.905),
        _fake(tmp_path, "chsnn", 0.95, 1, 0.905),
    ]
    rows = aggregate(runs)
    chsnn = next(r for r in rows if r["label"] == "chsnn")
    assert chsnn["test_accuracy"] == pytest.approx(0.905) and chsnn["test_accuracy_std"] == 0.0 and chsnn["seeds"] == [0, 1]
    table = method_table(rows, ["dense", "set", "chsnn", "rigl"], [0.95])
    assert "| dense | 0.9100 ± 0.0141 (dense) |" in table
    assert "| set | 0.8700 ± 0.0141 |" in table
    assert "| rigl | not run |" in table
    assert evaluated_on(runs) == "test accuracy"
    assert what_seeds_draw(runs).startswith("each seed draws its own initialisation")
    runs[0].cfg["data_options"] = {"validation": "0.2"}
    assert evaluated_on(runs).startswith("accuracy on the validation split")
    for r in runs:
        r.cfg["data_options"] = {"resplit": "", "kfold": 5}
    assert what_seeds_draw(runs).startswith("seed s tests fold s mod 5 of a stratified 5-fold partition")
    assert "seeds 0-4 test every sample once" in what_seeds_draw(runs)
    for r in runs:  # runs that failed on a bad value: the table still renders
        r.cfg["data_options"] = {"kfold": "five"}
    assert what_seeds_draw(runs).startswith("each seed draws")
    text = " ".join(verdicts(rows, 0.95))
    assert "within 0.5 points of dense (0.50 points below dense)" in text  # 0.910 - 0.905
    assert "chsnn beats set (+3.50 points; std up to 1.41; ahead on 2 of 2 seeds)" in text
    # paired by seed: chsnn 0.905 against dense 0.90 (seed 0) and 0.92 (seed 1)
    comparison = comparison_table(rows, ["dense", "set", "chsnn", "rigl"], [0.95])
    assert "| dense | -0.50 (1/2) |" in comparison  # within one std: not bold
    assert "| set | **+3.50** (2/2) |" in comparison
    assert "| rigl |  |" in comparison and "| chsnn |" not in comparison
    assert comparison_table(rows, ["dense", "set"], [0.95], method="rigl") is None
    assert comparison_table(rows, ["chsnn"], [0.95]) is None  # CH-SNN alone (its ablation grid): no empty table
    ablated = [
        _fake(tmp_path / "a", lab, 0.95, s, acc, groups=("ablation",))
        for lab, s, acc in [("chsnn", 0, 0.90), ("chsnn", 1, 0.92), ("init=random", 0, 0.89), ("init=random", 1, 0.93)]
    ]
    assert "| init=random | 0.9100 ± 0.0283 | +0.00 points (lower on 1 of 2 seeds) |" in ablation_table(
        aggregate(ablated), ["chsnn", "init=random"]
    )
    better = [r for r in runs if r.label != "chsnn"] + [_fake(tmp_path / "b", "chsnn", 0.95, s, 0.93) for s in (0, 1)]
    assert "within 0.5 points of dense (2.00 points above dense)" in " ".join(verdicts(aggregate(better), 0.95))
    # now make chsnn fall short of dense by more than half a point
    worse = [r for r in runs if r.label != "chsnn"] + [
        _fake(tmp_path / "w", "chsnn", 0.95, 0, 0.85),
        _fake(tmp_path / "w", "chsnn", 0.95, 1, 0.85),
    ]
    text = " ".join(verdicts(aggregate(worse), 0.95))
    assert "does **not** match dense" in text and "does **not** beat set" in text


def test_recipe_line_names_only_the_engine_options_every_run_shares(tmp_path):
    base = {"model": "snn-cnn", "data": "nmnist:x", "time_steps": 8, "epochs": 36, "batch_size": 64, "optimizer": "adam"}
    base.update(lr=0.002, lr_schedule="cosine", min_update_steps=30)
    runs = []
    for label, method, zeta in (("chsnn_z0.5", "chsnn", 0.5), ("set_z0.3", "set", 0.3)):
        run = _fake(tmp_path, label, 0.95, 0, 0.9)
        run.cfg = {**base, "engine": {"method": method, "sparsity": 0.95, "zeta": zeta, "exclude": ["features.*"]}}
        runs.append(run)
    line = describe_recipe({}, runs)
    assert "shared by all methods: {'exclude': ['features.*']}" in line and "zeta" not in line
    assert "at least 30 steps apart" in line


def test_an_ann_grid_names_no_time_steps_and_counts_macs(tmp_path):
    # An ANN (model mlp) runs no time steps and fires no spikes: the recipe line leaves the config's
    # time_steps out, and the table's cost column is multiply-accumulates instead of empty SOPs.
    base = {"model": "mlp", "data": "mnist:x", "time_steps": 8, "epochs": 100, "batch_size": 32, "optimizer": "sgd"}
    base.update(lr=0.025, lr_schedule="linear", min_update_steps=1)
    runs = []
    for label, sparsity, macs in (("dense", None, 6.0e6), ("cht", 0.99, 7.7e4)):
        run = _fake(tmp_path, label, sparsity, 0, 0.96)
        (run.run_dir / "summary.json").write_text(json.dumps({"test_accuracy": 0.96, "macs_per_sample": macs, "sparsity": sparsity or 0.0}))
        run.cfg = {**base, "engine": {"method": label, "sparsity": 0.99}}
        runs.append(run)
    line = describe_recipe({}, runs)
    assert line.startswith("model `mlp`, data `mnist:x`, 100 epochs")  # no options: no stray space
    assert "time steps" not in line and "at least 1 step apart" in line
    table = method_table(aggregate(runs), ["dense", "cht"], [0.99])
    assert "MACs / sample at 0.99" in table and "| cht | 0.9600 ± 0.0000 | 7.7e+04 |" in table
    # A spiking grid keeps its time steps and SOPs.
    for run in runs:
        run.cfg["model"] = "snn-mlp"
    assert "8 time steps" in describe_recipe({}, runs)
    assert "SOPs / sample" in method_table(aggregate([_fake(tmp_path / "s", "cht", 0.99, 0, 0.9)]), ["cht"], [0.99])


def test_recipe_line_says_how_often_the_topology_was_updated(tmp_path):
    # On a short epoch the step floor, not the epoch, sets the interval: the line says what the runs did.
    base = {"model": "snn-mlp", "data": "nmnist:x", "time_steps": 8, "epochs": 100, "batch_size": 64, "optimizer": "adam"}
    base.update(lr=0.002, lr_schedule="cosine")
    runs = []
    for label, engine, interval, updates in (
        ("chsnn", {}, 100, 8),
        ("set", {}, 100, 8),
        ("chsnn_every_epoch", {"update_interval": 11}, 11, 75),  # its own interval: its label says it
        ("dense", None, 100, 0),
    ):
        run = _fake(tmp_path, label, 0.95, 0, 0.9)
        run.cfg = {**base, "engine": {"method": label.split("_")[0], "sparsity": 0.95, **(engine or {})}}
        summary = json.loads((run.run_dir / "summary.json").read_text())
        summary.update(update_interval=interval, topology_updates=updates, steps=1100, machine=f"CPU {label}")
        (run.run_dir / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    line = describe_recipe({}, runs)
    assert "at least 100 steps apart (every 100 steps, 8 updates in 1100 steps)" in line
    assert "75 updates" not in line
    # The machine is the one each run recorded, not the one the table is written on.
    assert machine_line(runs) == "CPU chsnn; CPU chsnn_every_epoch; CPU dense; CPU set"


def test_sweep_end_to_end_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    grid = {**TINY, "seeds": [0], "sparsities": [0.9], "methods": {"dense": {"method": "dense"}, "set": {"method": "set"}}}
    grid["ablation"] = {"sparsity": 0.9, "variants": {"set": {"method": "set"}, "static": {"method": "static"}}}
    path = write_grid(tmp_path, **grid)
    results = tmp_path / "RESULTS.md"
    assert main(["sweep", str(path), "--results", str(results), "--quiet", "--workers", "2"]) == 0
    out = tmp_path / "runs"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dense_seed0", "set_s0.9_seed0", "static_s0.9_seed0"]
    first = (out / "set_s0.9_seed0" / "summary.json").read_text()
    text = results.read_text()
    assert "<!-- sweep:grid -->" in text and f"`chsnn sweep {path}" in text
    acc = json.loads(first)["test_accuracy"]
    assert f"| set | {acc:.4f} ± 0.0000 |" in text
    assert "was not run" not in text  # no CH-SNN in this grid: no verdicts about it
    svg = (tmp_path / "figures" / "grid_accuracy.svg").read_text()
    import xml.etree.ElementTree as ET

    assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"  # a standalone, namespaced SVG file
    saved = json.loads((out / "results.json").read_text())
    assert saved["finished"] == saved["total"] == 3
    # a second call trains nothing: the summaries are untouched
    mtime = (out / "set_s0.9_seed0" / "summary.json").stat().st_mtime_ns
    assert main(["sweep", str(path), "--quiet"]) == 0
    assert (out / "set_s0.9_seed0" / "summary.json").stat().st_mtime_ns == mtime
    # the grid now asks for another lr: the dry run says which runs differ, and
    # --table-only refuses to tabulate them as the grid's (it names the key)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "set": {**grid["set"], "lr": 0.5}}))
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("differs (lr)") == 3 and "3 hold a run of a different config" in listed
    assert main(["sweep", str(path), "--table-only"]) == 2
    assert "differs in: lr" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["finished"] == 3  # the old tables stand


@pytest.mark.parametrize(
    "grid_path", sorted((Path(__file__).resolve().parent.parent / "models" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem
)
def test_shipped_grids_plan(grid_path):
    grid = load_grid(grid_path)
    runs = plan_runs(grid)
    seeds, sparsities = len(grid["seeds"]), len(grid["sparsities"])
    methods = [m for m in grid["methods"].values() if m.get("method") != "dense"]
    dense = len(grid["methods"]) - len(methods)  # one run per seed, whatever the sparsities
    ablation = grid.get("ablation") or {"variants": {}}
    extra = sum(1 for label in ablation["variants"] if label not in grid["methods"])
    assert len(runs) == seeds * (dense + len(methods) * sparsities + extra)
    assert {r.cfg["seed"] for r in runs} == set(grid["seeds"])


def test_grids_keep_each_methods_own_regrowth_where_the_zoo_config_samples_it():
    # snn-mlp_mnist.yaml samples CH-SNN's regrowth (soft_regrowth: true); its grids pin
    # null, so SET keeps random regrowth, RigL its top gradients and the chsnn row top-k
    from chsnn.sparse import make_config

    grid = load_grid(Path(__file__).resolve().parent.parent / "models" / "sweeps" / "snn-mlp_mnist_kfold.yaml")
    assert resolve_config(grid["config"], {}, [])["engine"]["soft_regrowth"] is True
    soft = {r.label: make_config(r.cfg["engine"]).soft_regrowth for r in plan_runs(grid) if r.cfg["seed"] == 0}
    assert soft["chsnn_soft_regrowth"] is True
    assert not any(soft[label] for label in ("chsnn", "rigl+sswi", "set+sswi", "static+ssi", "regrowth=random"))


def test_figures_render_to_the_same_bytes(tmp_path):
    from chsnn.sweep import accuracy_figure

    rows = aggregate([_fake(tmp_path, "dense", None, 0, 0.9), _fake(tmp_path, "set", 0.95, 0, 0.8)])
    first = accuracy_figure(rows, ["dense", "set"], [0.95], "t")
    assert first is not None and first == accuracy_figure(rows, ["dense", "set"], [0.95], "t")
    assert accuracy_figure(rows, ["set"], [0.95], "t") is None  # one point: no figure


def test_a_variant_named_in_compare_gets_its_own_paired_table(tmp_path):
    from chsnn.sweep_results import write_results

    methods = {"set": {"method": "set"}, "chsnn": {"method": "chsnn"}, "chsnn_every_epoch": {"method": "chsnn"}}
    with pytest.raises(ConfigError, match="compare must be a list of labels from methods"):
        load_grid(write_grid(tmp_path, methods=methods, compare=["chsnn_typo"]))
    grid = load_grid(write_grid(tmp_path, methods=methods, compare=["chsnn_every_epoch"], sparsities=[0.95]))
    grid.pop("ablation", None)
    runs = []
    for label, accs in (("set", (0.88, 0.86)), ("chsnn", (0.90, 0.90)), ("chsnn_every_epoch", (0.92, 0.91))):
        for seed, acc in enumerate(accs):
            run = _fake(tmp_path, label, 0.95, seed, acc)
            run.cfg = {"model": "snn-mlp", "data": "x", "time_steps": 4, "epochs": 1, "batch_size": 8, "optimizer": "adam"}
            run.cfg.update(lr=0.01, lr_schedule="cosine", engine={"method": "chsnn", "sparsity": 0.95})
            runs.append(run)
    body = write_results(grid, runs, "chsnn sweep grid.yaml", None, None)
    text = (tmp_path / "runs" / "results.md").read_text()
    assert body["finished"] == 6 and "chsnn_every_epoch against each method, paired by seed" in text
    # against set +4.5 points and chsnn +1.5, both beyond the stds (0.71 points at most): bold
    assert "| set | **+4.50** (2/2) |" in text and "| chsnn | **+1.50** (2/2) |" in text


def _slow_mcnemar_p(b: int, c: int) -> float:
    # the definition: twice the smaller binomial tail of Bin(b + c, 1/2), capped at 1
    from fractions import Fraction
    from math import comb

    n = b + c
    if n == 0:
        return 1.0
    tail = sum(Fraction(comb(n, k), 2**n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b,c", [(0, 0), (7, 0), (0, 7), (10, 10), (31, 24), (3, 12), (60, 40), (1, 2)])
def test_mcnemar_p_is_the_exact_binomial_test(b, c):
    assert mcnemar_p(b, c) == pytest.approx(_slow_mcnemar_p(b, c), rel=1e-12)


def test_discordant_pools_the_seeds_and_needs_the_same_test_samples():
    import numpy as np

    y = np.array([0, 1, 2, 3])
    ours = {0: (y, np.array([0, 1, 2, 0])), 1: (y, np.array([0, 0, 2, 3]))}
    rival = {0: (y, np.array([0, 0, 0, 3])), 1: (y, np.array([1, 1, 2, 3])), 2: (y, y)}
    # seed 0: ours alone right on 1 and 2, rival alone on 3; seed 1: ours alone on 0, rival alone on 1
    assert discordant(ours, rival) == (3, 2)  # seed 2 ran for the rival only: not counted
    assert discordant(ours, {0: (np.array([0, 1, 2, 2]), y)}) is None  # another test split
    assert discordant(ours, {5: (y, y)}) is None  # no seed in common


def test_comparison_table_adds_the_paired_sample_test_where_runs_saved_predictions(tmp_path):
    import numpy as np

    from chsnn.rundir import RunDir
    from chsnn.sweep_results import run_predictions, write_results

    grid = load_grid(write_grid(tmp_path, sparsities=[0.95], methods={"set": {"method": "set"}, "chsnn": {"method": "chsnn"}}))
    grid.pop("ablation", None)
    y = np.arange(100) % 10
    runs = []
    for label, wrong in (("set", 20), ("chsnn", 5)):  # set misses the first 20 samples, chsnn the first 5
        for seed in (0, 1):
            run = _fake(tmp_path, label, 0.95, seed, 1 - wrong / 100)
            run.cfg = {"model": "snn-mlp", "data": "x", "time_steps": 4, "epochs": 1, "batch_size": 8, "optimizer": "adam"}
            run.cfg.update(lr=0.01, lr_schedule="cosine", engine={"method": label, "sparsity": 0.95})
            predicted = y.copy()
            predicted[:wrong] = (y[:wrong] + 1) % 10
            RunDir(run.run_dir).write_predictions(y, predicted)
            runs.append(run)
    write_results(grid, runs, "chsnn sweep grid.yaml", None, None)
    text = (tmp_path / "runs" / "results.md").read_text()
    # 15 samples per seed only chsnn got right, none only set: 30:0 over both seeds
    assert f"| set | **+15.00** (2/2; 30:0, p {mcnemar_p(30, 0):.2g}) |" in text
    assert "two-sided exact McNemar p-value" in text
    # one run without predictions (an older run): that method's cells keep the seed count only
    (runs[0].run_dir / "predictions.npz").unlink()
    assert ("set", 0.95) not in run_predictions(runs)
    write_results(grid, runs, "chsnn sweep grid.yaml", None, None)
    text = (tmp_path / "runs" / "results.md").read_text()
    assert "| set | **+15.00** (2/2) |" in text and "McNemar" not in text


def test_compare_command_pairs_runs_by_seed(tmp_path, capsys):
    import numpy as np

    from chsnn.rundir import RunDir

    y = np.arange(50) % 5

    def run(name, seed, wrong, labels=y):
        path = tmp_path / name
        path.mkdir()
        (path / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
        predicted = labels.copy()
        predicted[wrong] = (labels[wrong] + 1) % 5
        RunDir(path).write_predictions(labels, predicted)
        return str(path)

    ours = [run("a0", 0, [0]), run("a1", 1, [])]
    rivals = [run("b1", 1, [1, 2, 3]), run("b0", 0, [0, 4, 5, 6, 7])]  # in another order: paired by seed, not position
    assert main(["compare", *ours, "--against", *rivals, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seeds"] == [0, 1] and result["samples"] == 100
    assert (result["only_ours"], result["only_rival"]) == (7, 0)  # sample 0 of seed 0 both missed
    assert result["accuracy"] == 0.99 and result["rival_accuracy"] == 0.92
    assert result["p_value"] == pytest.approx(_slow_mcnemar_p(7, 0))
    assert main(["compare", *ours, "--against", *rivals]) == 0
    out = capsys.readouterr().out
    assert "p = 0.0156 (a difference this uneven is unlikely by chance at the 5% level)" in out and "+7.00 points" in out
    # errors name the problem, on one line, exit 2
    cases = [
        ([ours[0], "--against", rivals[0]], "ran different seeds ([0] against [1])"),
        ([*ours, "--against", rivals[0], run("c1", 1, [])], "two runs of seed 1 on one side"),
        ([ours[0], "--against", run("d0", 0, [], labels=(y + 1) % 5)], "tested on different samples"),
        ([ours[0], "--against", str(tmp_path / "missing")], "does not exist"),
    ]
    (tmp_path / "e0").mkdir()
    (tmp_path / "e0" / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    cases.append(([ours[0], "--against", str(tmp_path / "e0")], "has no predictions.npz"))
    for argv, message in cases:
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_gpu_run_records_its_gpu_not_the_host_cpu(monkeypatch):
    import torch

    from chsnn.bench import machine_description

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    assert machine_description(torch.device("cuda", 0), brief=True) == f"NVIDIA H100, torch {torch.__version__}"
    cpu = machine_description(brief=True)
    assert machine_description(torch.device("cpu"), brief=True) == cpu and "cores, torch" in cpu
