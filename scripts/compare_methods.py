"""Train one config under several sparse-training methods and tabulate them.

    python scripts/compare_methods.py --config snn-mlp_mnist --data mnist:../shared/data/mnist \
        --methods dense set rigl chsnn --sparsity 0.95 [--seeds 0] [--out runs/compare] [--section KEY]

Each run is a normal `chsnn train` run directory under --out (finished runs are
reused); the table (accuracy, sparsity, SOPs, time) goes to stdout and, with
--section, into BENCHMARKS.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from chsnn.bench import machine_description, markdown_table, write_section
from chsnn.commands import train
from chsnn.config import resolve_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data")
    p.add_argument("--methods", nargs="+", default=["dense", "set", "rigl", "chsnn"])
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--section", help="BENCHMARKS.md section key to write (e.g. compare:mnist)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    command = "python scripts/compare_methods.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    rows = []
    for method in args.methods:
        results = []
        for seed in args.seeds:
            overrides = {"data": args.data, "epochs": args.epochs, "seed": seed, "engine": {"method": method, "sparsity": args.sparsity}}
            cfg = resolve_config(args.config, overrides, args.set)
            run_dir = Path(args.out) / f"{args.config}_{method}_s{args.sparsity}_seed{seed}"
            summary_path = run_dir / "summary.json"
            if summary_path.is_file():
                summary = json.loads(summary_path.read_text())
            else:
                print(f"training {method}, seed {seed} -> {run_dir}", file=sys.stderr)
                summary = train(cfg, run_dir, quiet=True)
            results.append(summary)

        def stat(key):
            values = [r[key] for r in results if r.get(key) is not None]
            if not values:
                return None
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        acc, sops, wall, energy = stat("test_accuracy"), stat("sops_per_sample"), stat("wall_seconds"), stat("energy_pj_per_sample")
        rows.append(
            {
                "method": method,
                "sparsity": round(results[0]["sparsity"], 4),
                "seeds": len(results),
                "test accuracy": f"{acc[0]:.4f}" + (f" ± {acc[1]:.4f}" if len(results) > 1 else ""),
                "best epoch accuracy": f"{statistics.mean(r['best_test_accuracy'] for r in results):.4f}",
                "SOPs / sample": "" if sops is None else f"{sops[0]:.4g}",
                "energy µJ / sample": "" if energy is None else f"{energy[0] / 1e6:.4g}",
                "percolation": f"{statistics.mean(r['percolation'] for r in results):.3f}",
                "train s": f"{wall[0]:.0f}",
                "run": str(Path(args.out) / f"{args.config}_{method}_s{args.sparsity}_seed*"),
            }
        )
    table = markdown_table(rows)
    print(table)
    if args.section:
        note = results[0].get("data_note", "")
        body = (
            f"## {args.title or args.config}\n\n"
            f"Command: `{command}`  \n"
            f"Machine: {machine_description(__import__('torch').device('cpu'))}  \n"
            f"Data: {args.data or cfg['data']} ({note})\n\n{table}\n\n"
            "`test accuracy` is the final epoch's, mean ± standard deviation over the seeds (each seed also draws its own "
            "data split where the data set is split); `dense` has no sparse layers (sparsity 0). "
            "SOPs count one accumulate per input spike per existing outgoing synapse of every linear layer.\n"
        )
        write_section(Path("BENCHMARKS.md"), args.section, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
