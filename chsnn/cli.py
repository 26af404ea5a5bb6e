"""The ``chsnn`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def _default_devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _bench(args: argparse.Namespace) -> int:
    from chsnn import bench

    devices = args.device or _default_devices()
    if any(d.startswith("cuda") for d in devices):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("chsnn: --device cuda was asked for, but torch sees no CUDA GPU on this machine")
    out = None if args.no_write else Path(args.out)
    return bench.run_linkpred(devices, args.repeats, out, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    from chsnn import __version__

    parser = argparse.ArgumentParser(prog="chsnn", description="Cannistraci-Hebb sparse training for spiking and ordinary networks.")
    parser.add_argument("--version", action="version", version=f"chsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a benchmark and record it in BENCHMARKS.md")
    bench.add_argument("name", choices=["linkpred"], help="which benchmark")
    bench.add_argument("--device", action="append", help="cpu or cuda (repeatable; default: cpu, and cuda when present)")
    bench.add_argument("--repeats", type=int, default=7, help="timed runs per case (median reported)")
    bench.add_argument("--out", default="BENCHMARKS.md", help="markdown file to update (default: BENCHMARKS.md)")
    bench.add_argument("--no-write", action="store_true", help="print the table only")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)
