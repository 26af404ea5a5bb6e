"""Time dense-masked against sparse CPU inference of a spiking MLP.

    python scripts/bench_sparse_inference.py [--sizes 784,1568,1568,10] [--batch 64]
        [--time-steps 8] [--densities 0.5,0.2,0.1,0.05,0.02,0.01] [--repeats 15]
        [--methods torch,scipy,spikes] [--threads N] [--section KEY [--out BENCHMARKS.md]]

The network is chsnn's ``snn-mlp`` (SpikingJelly LIF, tau 2, threshold 1)
with the CHT paper's layer sizes by default, 784-1568-1568-10: the hidden
layers are sparse at each density (random masks with exactly ``round(d * n)``
links, the way the engine keeps them), the readout dense, as the engine
leaves it. Weights are drawn N(0, (gain / sqrt(d * fan_in))^2) on the links,
so every density sees a comparable firing rate (reported); the input is
Bernoulli spikes at ``--input-rate``. Each timed call is one forward of
``T x N`` samples (``--time-steps`` x ``--batch``) with ``torch.no_grad()``.

Per density, the dense masked model (the trained model as it is, zeros
included, its own SpikingJelly forward: ``model``), the inference pipeline
of :mod:`chsnn.inference` with every layer dense (``dense``: ``F.linear``
over the zeros, the same LIF code as the sparse methods) and each sparse
method are timed in interleaved rounds (model, dense, torch, scipy, spikes,
model, ...),
so a change of machine load hits all alike; the table gives medians and the
speed-up over ``dense`` (the products alone), and each method's break-even density (where its time
crosses the dense time, interpolated on log-density). The outputs of every
method are checked against the dense model's (max abs difference of the
logits in the table).

The table goes to stdout; with ``--section KEY`` it is also written into
``--out`` (BENCHMARKS.md) between ``<!-- KEY -->`` markers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build(sizes: list[int], density: float, gain: float, seed: int):
    """A SpikingJelly snn-mlp with random masks at ``density`` on its hidden layers."""
    from chsnn.bench import random_mask
    from chsnn.models import build_model

    torch.manual_seed(seed)
    model = build_model("snn-mlp", (sizes[0],), sizes[-1], time_steps=None, hidden=sizes[1:-1], neuron_backend="torch").eval()
    masks = {}
    with torch.no_grad():
        linears = [(f"hidden.{n}", m) for n, m in model.hidden.named_children() if isinstance(m, torch.nn.Linear)]
        for i, (name, m) in enumerate(linears):
            mask = random_mask(m.out_features, m.in_features, density, "cpu", seed=seed + i)
            std = gain / (density * m.in_features) ** 0.5
            m.weight.copy_(torch.randn(m.weight.shape) * std * mask)
            m.bias.zero_()
            masks[name] = mask
    return model, masks


def firing_rate(model, x) -> float:
    spikes, total = 0.0, 0
    handles = []

    def hook(mod, args, out):
        nonlocal spikes, total
        spikes += float(out.sum())
        total += out.numel()

    for m in model.hidden:
        if hasattr(m, "v_threshold"):
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return spikes / max(1, total)


def measure(args) -> tuple[list[dict], dict]:
    from chsnn.inference import break_even, to_sparse_inference

    methods = args.methods
    gen = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(args.time_steps, args.batch, args.sizes[0], generator=gen) < args.input_rate).float()
    rows, times = [], {"model": [], "dense": [], **{m: [] for m in methods}}
    for density in args.densities:
        model, masks = build(args.sizes, density, args.gain, args.seed)
        # "model": the trained network's own forward (SpikingJelly layers); "dense": the
        # inference pipeline of chsnn.inference with every layer dense (F.linear over the
        # zeros), so the sparse methods differ from it only in the products.
        dense = to_sparse_inference(model, masks, max_density=0.0)
        variants = {"model": model, "dense": dense, **{m: to_sparse_inference(model, masks, method=m) for m in methods}}
        with torch.no_grad():
            ref = model(x)
            diffs = {m: float((variants[m](x) - ref).abs().max()) for m in ["dense", *methods]}
            for _ in range(args.warmup):
                for v in variants.values():
                    v(x)
            samples = {k: [] for k in variants}
            for _ in range(args.repeats):
                for k, v in variants.items():  # interleaved: model, dense, torch, scipy, spikes, model, ...
                    t0 = time.perf_counter()
                    v(x)
                    samples[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(s) * 1e3 for k, s in samples.items()}
        for k in med:
            times[k].append(med[k])
        row = {
            "density": f"{density:g}",
            "sparsity": f"{1 - density:.0%}",
            "hidden firing rate": f"{firing_rate(model, x):.3f}",
            "model ms": med["model"],
            "dense ms": med["dense"],
        }
        for m in methods:
            row[f"{m} ms"] = med[m]
            row[f"{m} speed-up"] = f"x{med['dense'] / med[m]:.2f}"
        row["max abs diff"] = f"{max(diffs.values()):.1e}"
        rows.append(row)
        if not args.quiet:
            print(f"density {density:g}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()), file=sys.stderr)
    even = {m: break_even(args.densities, times["dense"], times[m]) for m in methods}
    return rows, even


def _even_text(d, densest: float) -> str:
    if d is None:
        return "never faster here"
    if d >= densest:
        return f"faster at every density measured (up to {densest:g})"
    return f"{d:.3g}"


def report(args, rows, even, other_load, command: str) -> str:
    from chsnn.bench import machine_description, markdown_table

    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sizes = "-".join(map(str, args.sizes))
    lines = [
        f"## Sparse CPU inference of the spiking MLP ({sizes})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description(torch.device('cpu'))}  ",
        f"Measured: {when}; float32; one forward = T {args.time_steps} x batch {args.batch} samples; "
        f"median of {args.repeats} interleaved timed calls per variant after {args.warmup} warm-up rounds"
        + (f"; other processes used {other_load:.0%} of the CPU meanwhile" if other_load is not None else "")
        + ".",
        "",
        f"snn-mlp {sizes} (SpikingJelly LIF), hidden layers sparse at the density shown (random masks), readout dense; "
        f"input spikes at rate {args.input_rate}. "
        "`torch`: CSR weights, `torch.addmm`; `scipy`: `scipy.sparse.csr_matrix` product; "
        "`spikes`: event-driven `embedding_bag` over the input spikes (dense weights). "
        "`model`: the trained network's own forward (SpikingJelly `LIFNode`s); `dense`: the inference pipeline of `chsnn.inference` "
        "with every layer dense (`F.linear` over the zeros, same LIF code as the sparse methods, bit-identical to `model`); "
        "speed-ups and break-even are against `dense`, so they measure the sparse products alone. "
        "`max abs diff`: largest difference of any variant's logits from `model`'s (float rounding, ~1e-7; "
        "a larger one is a neuron whose membrane sat on the threshold to the last bit and fired in one order of summation only).",
        "",
        markdown_table(rows),
        "",
        "Break-even density against `dense` (each method is faster below it): "
        + "; ".join(f"`{m}` {_even_text(d, max(args.densities))}" for m, d in even.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_ints, default=[784, 1568, 1568, 10], help="layer widths, input first (default 784,1568,1568,10)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--time-steps", type=int, default=8)
    p.add_argument(
        "--densities", type=_floats, default=[0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01], help="hidden-layer densities (default 0.5 ... 0.01)"
    )
    p.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=["torch", "scipy", "spikes"])
    p.add_argument("--repeats", type=int, default=15, help="timed calls per variant and density (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--input-rate", type=float, default=0.2, help="input spike probability")
    p.add_argument("--gain", type=float, default=5.0, help="weight scale: std gain / sqrt(density * fan_in)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--section", help="also write the table into --out between <!-- KEY --> markers")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from chsnn.inference import METHODS

    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if any(not 0 < d <= 1 for d in args.densities) or args.repeats < 1 or len(args.sizes) < 3:
        p.error("densities must be in (0, 1], --repeats >= 1, --sizes needs input, at least one hidden layer and output")
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    from chsnn.bench import _OtherLoad

    with _OtherLoad() as load:
        rows, even = measure(args)
    command = "python scripts/bench_sparse_inference.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    text = report(args, rows, even, load.fraction, command.strip())
    print(text)
    if args.section:
        from chsnn.bench import write_section

        write_section(Path(args.out), args.section, text)
        print(f"written to {args.out} under <!-- {args.section} -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
