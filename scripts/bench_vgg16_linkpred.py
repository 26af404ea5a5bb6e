"""Peak memory and time of CH3 link prediction per VGG16 conv layer (CHT-Conv).

For each conv of the full-width VGG16 (CIFAR input) and each sparsity, builds
a kernel-level mask as a CHT-Conv update sees it (every 3x3 kernel keeps
round(density * 9) positions; an update first removes round(0.3 * k) of them
in every kernel), then scores it with ``ch_scores(mask, "CH3", "exact")`` and
reports the kernel chosen, the wall time and the peak resident memory that
the call adds (Linux: VmHWM after resetting it through /proc/self/clear_refs).

    python scripts/bench_vgg16_linkpred.py                 # 50% and 70%
    python scripts/bench_vgg16_linkpred.py --sparsity 0.7 --method node

One process, one layer at a time; the figures are per update and per layer.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from chsnn import linkpred
from chsnn.models.registry import build_model
from chsnn.sparse.targets import KERNEL, find_targets


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def kernel_mask(n_out: int, n_in_ch: int, k: int, sparsity: float, zeta: float, g: torch.Generator) -> torch.Tensor:
    """(n_out, n_in_ch * k) mask after a CHT-Conv removal: every kernel keeps
    round((1 - sparsity) * k) positions, then loses round(zeta * that)."""
    keep = round((1.0 - sparsity) * k)
    keep -= round(zeta * keep)
    ranks = torch.rand(n_out * n_in_ch, k, generator=g).argsort(1).argsort(1)
    return (ranks < keep).view(n_out, n_in_ch * k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--method", default="exact", choices=linkpred.METHODS)
    ap.add_argument("--zeta", type=float, default=0.3)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    model = build_model("vgg16", (3, 32, 32), 10)
    convs = [t for t in find_targets(model)[0] if t.kind == KERNEL]
    del model
    g = torch.Generator().manual_seed(0)
    rows = []
    print(
        "| sparsity | layer | scored graph (out x in*k) | density scored | kernel | chunk | seconds | peak added MiB | process peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in args.sparsity:
        for t in convs:
            mask = kernel_mask(t.n_out, t.n_in // t.kernel_size, t.kernel_size, s, args.zeta, g)
            before = _status_kib("VmRSS")
            _reset_peak()
            t0 = time.perf_counter()
            scores = linkpred.ch_scores(mask, "CH3", args.method)
            seconds = time.perf_counter() - t0
            peak = _status_kib("VmHWM")
            choice = linkpred.last_choice()
            del scores
            row = {
                "sparsity": s,
                "layer": t.name,
                "shape": f"{t.n_out}x{t.n_in}",
                "density": float(mask.float().mean()),
                "method": choice.get("linkpred"),
                "kernel": choice.get("linkpred_kernel"),
                "chunk": choice.get("linkpred_chunk"),
                "seconds": seconds,
                "peak_added_mib": (peak - before) / 1024,
                "process_peak_mib": peak / 1024,
            }
            rows.append(row)
            print(
                f"| {s:g} | {t.name} | {row['shape']} | {row['density']:.3f} | {row['method']}/{row['kernel']} | {row['chunk']} | "
                f"{seconds:.2f} | {row['peak_added_mib']:.0f} | {row['process_peak_mib']:.0f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
