"""The ``chsnn`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
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
    if args.repeats is not None and args.repeats < 1 or args.steps < 1:
        raise SystemExit("chsnn: --repeats and --steps must be at least 1")
    out = None if args.no_write else Path(args.out)
    progress = not args.quiet
    if args.name == "engine":
        command = "chsnn " + " ".join(shlex.quote(a) for a in args.argv)
        repeats = 15 if args.repeats is None else args.repeats
        return bench.run_engine(devices, repeats, out, progress=progress, steps=args.steps, command=command)
    repeats = 7 if args.repeats is None else args.repeats
    return bench.run_linkpred(devices, repeats, out, progress=progress)


def build_parser() -> argparse.ArgumentParser:
    from chsnn import __version__

    parser = argparse.ArgumentParser(prog="chsnn", description="Cannistraci-Hebb sparse training for spiking and ordinary networks.")
    parser.add_argument("--version", action="version", version=f"chsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a benchmark and record it in BENCHMARKS.md")
    bench.add_argument(
        "name",
        choices=["linkpred", "engine"],
        help="which benchmark: CH link prediction, or the sparse engine's topology updates and training overhead",
    )
    bench.add_argument("--device", action="append", help="cpu or cuda (repeatable; default: cpu, and cuda when present)")
    bench.add_argument(
        "--repeats", type=int, help="timed runs per case, median reported (default: 7; engine: 15 topology updates per method)"
    )
    bench.add_argument(
        "--steps", type=int, default=200, help="engine only: timed training steps per model in the overhead test (default: 200)"
    )
    bench.add_argument("--out", default="BENCHMARKS.md", help="markdown file to update (default: BENCHMARKS.md)")
    bench.add_argument("--no-write", action="store_true", help="print the table only")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_bench)

    from chsnn.commands import add_commands
    from chsnn.export import add_export_command
    from chsnn.report import add_report_command
    from chsnn.sweep import add_sweep_command

    add_commands(sub)
    add_report_command(sub)
    add_sweep_command(sub)
    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # SpikingJelly probes for Triton on import; on a CPU machine torch logs that as a warning.
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    from chsnn.linkpred import LinkPredictionMemoryError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command line quoted in reports
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (
        ValueError,
        FileNotFoundError,
        LinkPredictionMemoryError,
    ) as exc:  # ConfigError, DataError, MissingDataError, CheckpointError, bad model options
        print(f"chsnn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a file or directory that cannot be written or read
        print(f"chsnn {args.command}: error: {exc.filename or ''}: {exc.strerror or exc} (permission denied)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `chsnn ... | head` stopped reading: end quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        return 141  # 128 + SIGPIPE
    except KeyboardInterrupt as exc:  # Ctrl-C: no traceback; train has said where its state is
        from chsnn.trainer import RunInterrupted

        if not isinstance(exc, RunInterrupted):
            print(f"\nchsnn {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """An error message on one line (messages quoting a file's text may hold newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__
