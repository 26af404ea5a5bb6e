"""Benchmark exact and node CH3-L3 link prediction; same as `chsnn bench linkpred`.

python scripts/bench_linkpred.py [--device cpu|cuda] [--repeats N] [--no-write]
"""

import sys

from chsnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "linkpred", *sys.argv[1:]]))
