"""Benchmark the sparse engine: topology update time and masked training
overhead on a 784-1568-1568-1568-10 MLP; same as `chsnn bench engine`.

    python scripts/bench_engine.py [--device cpu|cuda] [--repeats N] [--steps N] [--no-write]
"""

import sys

from chsnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "engine", *sys.argv[1:]]))
