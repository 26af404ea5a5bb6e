"""The scale of each sparse layer's weights at the start and the end of a run.

For each finished run directory: rebuilds the network and its initial masks
and weights exactly as training does (from the run's config.yaml), then
reads the final weights from its latest.pt, and prints per sparse linear layer the
standard deviation of the linked weights at step 0 and at the end (with the
10/50/90/99% quantiles of its neurons' own), and the
layer's firing rate and the test accuracy after the first and the last
epoch (metrics.jsonl). Written to ask whether SSWI's start still shows at
the end of training, e.g. CH-SNN against its ablation without SSWI:

    python scripts/weight_scale.py runs/sweep/snn-mlp_mnist_kfold/chsnn_s0.95_seed0 \\
        runs/sweep/snn-mlp_mnist_kfold/weight_init=kaiming_s0.95_seed0
    python scripts/weight_scale.py runs/sweep/snn-mlp_mnist_kfold/chsnn_s0.95_seed0 --large 5
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from chsnn.rundir import RunDir, load_run
from chsnn.sparse.calibration import record_activity
from chsnn.trainer import Runner


def neuron_stds(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's std of its linked weights (0 below two links), and which neurons have two links or more."""
    weight, mask = weight.double(), mask.bool()
    counted = mask.sum(1) > 1
    stds = torch.stack([weight[i][mask[i]].std() if counted[i] else torch.tensor(0.0, dtype=torch.float64) for i in range(len(mask))])
    return stds, counted


def linked_std(weight: torch.Tensor, mask: torch.Tensor) -> str:
    """The std of a layer's linked weights, and the 10/50/90/99% quantiles of
    its neurons' own stds (neurons with two links or more)."""
    stds, counted = neuron_stds(weight, mask)
    overall = f"{float(weight.double()[mask.bool()].std()):.3f}"
    if not bool(counted.any()):
        return overall
    q = torch.quantile(stds[counted], torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64))
    return f"{overall} (per neuron {' / '.join(f'{float(v):.3f}' for v in q)})"


def large_weight_neurons(weight: torch.Tensor, mask: torch.Tensor, second_moment: torch.Tensor, threshold: float) -> str:
    """The neurons whose linked weights start with a std above ``threshold``:
    how many, their in-degree, and how active their inputs were (mean E[a^2]
    over the calibration data), against the other neurons'; for square
    inputs (an image), how far their inputs lie from the image's centre."""
    mask = mask.bool()
    indeg = mask.sum(1)
    large = neuron_stds(weight, mask)[0] > threshold
    if not bool(large.any()):
        return f"no neuron starts with a std above {threshold}"
    moment = second_moment.double().cpu()

    def inputs_of(rows, per_input):
        return float((mask[rows].double() @ per_input).sum() / mask[rows].sum())

    text = (
        f"{int(large.sum())} of {len(indeg)} neurons start with a std above {threshold}: median in-degree "
        f"{float(indeg[large].float().median()):.0f} (others {float(indeg[~large].float().median()):.0f}), mean E[a^2] of their inputs "
        f"{inputs_of(large, moment):.4f} (others {inputs_of(~large, moment):.4f})"
    )
    side = round(mask.shape[1] ** 0.5)
    if side * side == mask.shape[1]:
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        centre = (side - 1) / 2
        distance = ((ys - centre) ** 2 + (xs - centre) ** 2).sqrt().flatten().double()
        near, far = inputs_of(large, distance), inputs_of(~large, distance)
        text += f", mean distance of their inputs from the image centre {near:.1f} pixels (others {far:.1f})"
    return text


def describe(run: Path, threshold: float | None = None) -> list[str]:
    run_dir = RunDir(run).require()
    cfg = run_dir.config()
    cfg["device"] = "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = Runner(cfg)
    start = {t.name: (t.module.weight.detach().clone(), runner.engine.mask(t.name).cpu()) for t in runner.engine.targets}
    if threshold is not None:  # the activity each layer saw at initialisation, recorded again
        engine = runner.engine
        stats = record_activity(
            runner.model, engine.calibration_data.batches, engine.targets, engine.forward_fn, correlate=False, spiking=engine.spiking
        )
    final = load_run(run)  # the trained model (latest.pt), masks applied, and its masks
    final_weights = dict(final.model.named_parameters())
    history = run_dir.metrics()
    if not history:
        raise SystemExit(f"{run}: no epoch in metrics.jsonl (give a finished run directory)")
    first, last = history[0], history[-1]
    lines = [
        f"{run.name}: weight_init {runner.engine.config.weight_init}, test accuracy {first['test_accuracy']:.4f} after epoch 1, "
        f"{last['test_accuracy']:.4f} after epoch {last['epoch']}"
    ]
    names = [n for n, _ in runner.model.named_modules()]
    for name, (w0, m0) in start.items():
        w1, m1 = final_weights[f"{name}.weight"].detach(), final.masks[name]
        # The first spiking layer after this one (hidden.0 -> hidden.1) carries its firing rate.
        after = next((n for n in names[names.index(name) + 1 :] if n in last.get("firing_rates", {})), None)
        rates = [h.get("firing_rates", {}).get(after) for h in (first, last)]
        rate_text = "" if rates[0] is None else f"; firing rate {rates[0]:.3f} after epoch 1, {rates[1]:.3f} at the end"
        lines.append(f"  {name}: std of linked weights {linked_std(w0, m0)} at step 0, {linked_std(w1, m1)} at the end{rate_text}")
        if threshold is not None:
            lines.append(f"    {large_weight_neurons(w0, m0, stats[name].second_moment, threshold)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished run directories (config.yaml, latest.pt, metrics.jsonl)")
    ap.add_argument("--large", type=float, metavar="STD", help="also describe the neurons whose linked weights start with a std above STD")
    args = ap.parse_args()
    for run in args.runs:
        try:
            print("\n".join(describe(run, args.large)))
        except (FileNotFoundError, ValueError) as exc:  # no such directory, no config.yaml or checkpoint, an unreadable one
            raise SystemExit(f"{run}: {exc}") from None


if __name__ == "__main__":
    main()
