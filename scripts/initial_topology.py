"""The initial topology a run starts from, measured per sparse layer.

Builds the run's network, calibration and initial masks exactly as training
does (from the run's saved config), then stops, and prints for each
sparse layer how many of its inputs have a link (of those that vary over
the calibration data), the most links on one input, and the mean
presynaptic rate of the linked and of the unlinked varying inputs. An input
without links stays unused under CH3-L3 regrowth, which needs a length-3
path to reach it.

    python scripts/initial_topology.py runs/tuning/snn-mlp_nmnist_val_e100/chsnn_s0.95_seed0
    python scripts/initial_topology.py RUN --sparsity 0.99

(RUN/config.yaml, the form this script once took, is read as RUN.)
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from chsnn.rundir import RunDir
from chsnn.sparse.calibration import record_activity
from chsnn.trainer import Runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run directory (or its config.yaml)")
    ap.add_argument("--sparsity", type=float, help="override the engine's sparsity")
    args = ap.parse_args()
    run = args.run.parent if args.run.name == "config.yaml" else args.run
    try:
        cfg = RunDir(run).require().config()
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{args.run}: {exc}") from None
    cfg["device"] = "cpu"
    if args.sparsity is not None:
        cfg["engine"] = {**cfg["engine"], "sparsity": args.sparsity}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = Runner(cfg)
    engine = runner.engine
    # The activity each layer saw, recorded again over the same calibration batches. The
    # initialisation may have run them as one forward: with BatchNorm (batch statistics)
    # the rates and the varying inputs can then differ slightly from what it saw.
    stats = record_activity(
        runner.model, engine.calibration_data.batches, engine.targets, engine.forward_fn, correlate=True, spiking=engine.spiking
    )
    print(f"{run} (sparsity {cfg['engine']['sparsity']}, init {engine.config.init}):")
    for t in engine.targets:
        mask = engine.mask(t.name).cpu()
        s = stats[t.name]
        rate = s.mean_abs.cpu()
        varying = s.varying().cpu()
        linked = mask.any(0)
        unlinked = varying & ~linked
        print(
            f"  {t.name} {tuple(mask.shape)}: inputs linked {int(linked.sum())} of {int(varying.sum())} varying "
            f"({mask.shape[1]} in all); most links on one input {int(mask.sum(0).max())}; "
            f"mean rate linked {float(rate[linked].mean()):.3f}, unlinked varying "
            + (f"{float(rate[unlinked].mean()):.3f}" if bool(unlinked.any()) else "(none)")
        )


if __name__ == "__main__":
    main()
