# A/B timing of CH3 link prediction: a saved copy of an older chsnn/linkpred.py
# (git show <commit>:chsnn/linkpred.py > /tmp/wt14/linkpred_old.py) against the current one, interleaved.
# A/B: main's linkpred (before) vs this branch's (after), interleaved, same masks, CH3.
import importlib.util
import statistics
import sys
import time

import torch

from chsnn import linkpred as new
from chsnn.bench import random_mask

spec = importlib.util.spec_from_file_location("linkpred_old", "/tmp/wt14/linkpred_old.py")
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
cases = [(1568, 784, 0.01), (1568, 1568, 0.01), (1024, 1024, 0.05)]
R = int(sys.argv[1]) if len(sys.argv) > 1 else 7
for o, i, d in cases:
    m = random_mask(o, i, d, torch.device("cpu"))
    for meth in ("exact", "node"):
        t = {"before": [], "after": []}
        for mod in (old, new, old, new):
            mod.ch_scores(m, "CH3", meth)
        for _ in range(R):
            for name, mod in (("before", old), ("after", new)):
                s = time.perf_counter()
                mod.ch_scores(m, "CH3", meth)
                t[name].append(time.perf_counter() - s)
        ch = new.last_choice()
        print(
            f"| {i}x{o} at {d:.0%} | {meth} | {statistics.median(t['before']) * 1e3:.1f} | "
            f"{statistics.median(t['after']) * 1e3:.1f} | {ch['linkpred_kernel']} |",
            flush=True,
        )
