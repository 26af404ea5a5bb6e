"""SSCTI on the N-MNIST spiking CNN: what topology it draws, and does it help
once the features it correlates are trained? (issue 12)

On the N-MNIST spiking CNN, SSCTI draws the sparse FC layer's topology from
the correlations of the conv features at initialisation, when the convs are
untrained; on the validation split a random topology does better. This
script tests that explanation: each run starts its convs (and their
BatchNorm statistics) from a finished run of the same seed, so calibration
correlates trained features, then trains as usual; CH-SNN with SSCTI
against CH-SNN with a random topology, everything else equal.

The donor runs trained on the same seed's training part of the validation
split, so no validation (or test) recording is seen before it is scored.

    python scripts/sscti_nmnist_cnn.py            # 12 runs, about 12 minutes on 2 cores
    python scripts/sscti_nmnist_cnn.py --table    # the table of finished runs only
    python scripts/sscti_nmnist_cnn.py --probe    # the initial FC topologies, measured (no training)

The probe builds each run's network and initial topology (as training
would, then stops) and measures the FC layer: how many of its inputs have a
link, the largest number of links on one input, the mean |r| between two
inputs that feed the same output neuron (how redundant a neuron's inputs
are), and the mean firing rate of the inputs left without links.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

GRID_DIR = Path("runs/tuning/snn-cnn_nmnist_val_zeta")  # the validation runs of snn-cnn_nmnist_val_zeta.yaml
RECIPE = "chsnn_z0.5"  # CH-SNN at its tuned zeta: the config each run starts from
DONOR = "set+sswi_z0.3_s0.95"  # whose trained convs each run starts from (a method that does not use SSCTI)
ARMS = {"trained_convs": {}, "trained_convs_init=random": {"init": "random"}}


def run_config(sparsity: float, seed: int, engine: dict) -> dict:
    cfg = yaml.safe_load((GRID_DIR / f"{RECIPE}_s{sparsity}_seed{seed}" / "config.yaml").read_text())
    cfg["engine"] = {**cfg["engine"], **engine}
    return cfg


def use_trained_convs(seed: int) -> None:
    """From here on, build_model starts the convs from the donor run of ``seed``."""
    import chsnn.models
    from chsnn.checkpoint import load_checkpoint

    donor = load_checkpoint(GRID_DIR / f"{DONOR}_seed{seed}" / "latest.pt")["model"]
    convs = {k: v for k, v in donor.items() if k.startswith("features.")}
    # The library's own builder, not the wrapper an earlier call in this process left.
    build = getattr(chsnn.models.build_model, "original", chsnn.models.build_model)

    def build_with_trained_convs(*args, **kwargs):
        model = build(*args, **kwargs)
        missing = set(convs) - set(model.state_dict())
        if missing:
            raise SystemExit(f"the donor's conv weights do not fit this model: {sorted(missing)[:3]}")
        model.load_state_dict(convs, strict=False)
        return model

    build_with_trained_convs.original = build
    chsnn.models.build_model = build_with_trained_convs


def one_run(job: tuple[str, float, int, str]) -> str:
    import torch

    from chsnn.commands import train

    arm, sparsity, seed, out = job
    if (Path(out) / "summary.json").exists():
        return out
    torch.set_num_threads(1)
    use_trained_convs(seed)
    train(run_config(sparsity, seed, ARMS[arm]), Path(out), quiet=True)
    return out


PROBES = {  # label: (engine options, convs trained?)
    "SSCTI": ({}, False),
    "random": ({"init": "random"}, False),
    "SSCTI, sscti_soft": ({"sscti_soft": True}, False),
    "SSCTI, sscti_per_neuron": ({"sscti_per_neuron": True}, False),
    "SSCTI, sscti_cover_inputs": ({"sscti_cover_inputs": True}, False),
    "SSCTI, trained convs": ({}, True),
    "random, trained convs": ({"init": "random"}, True),
}


def probe(sparsity: float, seed: int, engine: dict, trained: bool, stats_of: dict) -> tuple:
    """(inputs linked, most links on one input, mean |r| of a neuron's input
    pairs, mean rate of unlinked inputs) of the FC layer's initial topology.
    ``stats_of`` caches each (seed, trained) calibration, which a random
    topology does not record."""
    import chsnn.models
    from chsnn.trainer import Runner

    build = chsnn.models.build_model
    try:
        if trained:
            use_trained_convs(seed)
        runner = Runner(run_config(sparsity, seed, engine))
    finally:
        chsnn.models.build_model = build
    if runner.engine.input_stats is not None:
        stats_of[seed, trained] = runner.engine.input_stats
    stats = stats_of[seed, trained]
    mask = runner.engine.mask("fc").cpu()
    corr = stats.correlation().abs().cpu()
    redundancy = []
    for row in mask:
        ins = row.nonzero().squeeze(1)
        if ins.numel() > 1:
            redundancy.append(float(corr[ins][:, ins].sum()) / (ins.numel() * (ins.numel() - 1)))
    linked = mask.any(0)
    rate = stats.mean_abs.cpu()
    unlinked_rate = float(rate[~linked].mean()) if bool((~linked).any()) else float("nan")
    return int(linked.sum()), int(mask.sum(0).max()), sum(redundancy) / len(redundancy), unlinked_rate, int(stats.varying().sum())


def probe_table(sparsities, seeds) -> str:
    import warnings

    import torch

    torch.set_num_threads(2)
    stats_of: dict = {}
    lines = [
        "| sparsity | initial topology | FC inputs linked (of 256) | most links on one input "
        "| mean abs(r) of a neuron's input pairs | rate of unlinked inputs |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for sp in sparsities:
        for label, (engine, trained) in PROBES.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = [probe(sp, seed, engine, trained, stats_of) for seed in seeds]
            linked = "/".join(str(r[0]) for r in rows) + f" (varying: {'/'.join(str(r[4]) for r in rows)})"
            rates = [r[3] for r in rows if r[3] == r[3]]
            rate = f"{statistics.mean(rates):.3f}" if rates else "(none unlinked)"
            lines.append(
                f"| {sp} | {label} | {linked} | {'/'.join(str(r[1]) for r in rows)} | {statistics.mean(r[2] for r in rows):.3f} | {rate} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def table(out_dir: Path, sparsities, seeds) -> str:
    lines = ["| variant | " + " | ".join(str(s) for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    sources = {
        f"{RECIPE} (untrained convs, SSCTI)": (GRID_DIR, RECIPE),
        f"{RECIPE}_init=random (untrained convs)": (GRID_DIR, f"{RECIPE}_init=random"),
    }
    sources.update({f"{RECIPE}_{arm}": (out_dir, f"{RECIPE}_{arm}") for arm in ARMS})
    for label, (where, name) in sources.items():
        cells = []
        for sp in sparsities:
            acc = [
                json.loads(p.read_text())["test_accuracy"]
                for seed in seeds
                if (p := where / f"{name}_s{sp}_seed{seed}" / "summary.json").exists()
            ]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells.append(f"{statistics.mean(acc):.4f} ± {sd:.4f} ({len(acc)} seeds)" if acc else "not run")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/tuning/snn-cnn_nmnist_val_trained_convs"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.99])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the table of finished runs and stop")
    ap.add_argument("--probe", action="store_true", help="measure the initial FC topologies of each variant (no training) and stop")
    args = ap.parse_args()
    for seed in args.seeds:
        for name in (f"{DONOR}_seed{seed}", f"{RECIPE}_s{args.sparsities[0]}_seed{seed}"):
            if not (GRID_DIR / name).is_dir():
                raise SystemExit(f"needs {GRID_DIR / name}: run `chsnn sweep models/sweeps/tuning/snn-cnn_nmnist_val_zeta.yaml` first")
    if args.probe:
        print("Initial FC topology, per seed (" + ", ".join(map(str, args.seeds)) + "); the mean over seeds where one number:\n")
        probe_table(args.sparsities, args.seeds)
        return
    if not args.table:
        jobs = [
            (arm, sp, seed, str(args.out / f"{RECIPE}_{arm}_s{sp}_seed{seed}"))
            for sp in args.sparsities
            for arm in ARMS
            for seed in args.seeds
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            for done in pool.map(one_run, jobs):
                print("finished", done, flush=True)
    print("Validation accuracy (176 recordings per seed), mean ± std over seeds:\n")
    print(table(args.out, args.sparsities, args.seeds))


if __name__ == "__main__":
    main()
