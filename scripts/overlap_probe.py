"""Why CH3-L3 regrows the links it has just removed.

A topology update removes links and asks CH3-L3 which absent links to grow.
This probe measures, on three kinds of sparse layer (512 x 1800 at 5%
density, the default spiking MLP's first layer), the fraction of the removed
links that CH3-L3 picks again when they are candidates (the overlap that
early stop reads), against the chance level of a random pick:

1. an Erdos-Renyi random graph, 30% of its links removed at random;
2. a block graph (groups of outputs sharing input sets, what SSCTI's
   correlated anchors build), 30% removed at random;
3. a random graph after one CH3-L3 update, with the links that update grew
   removed again (they start at weight 0, so magnitude-based removal takes
   them first at the next update).

    python scripts/overlap_probe.py [--seed 0]

Prints one line per case. Link prediction recovers the missing links of any
graph with structure; on (2) and (3) the removed links are exactly what it
recovers, so an update that may regrow them changes nothing.
"""

from __future__ import annotations

import argparse

import torch

from chsnn import ch_scores
from chsnn.sparse.select import select_top


def regrow_overlap(mask: torch.Tensor, removed: torch.Tensor, generator: torch.Generator) -> dict:
    """Remove ``removed`` from ``mask``, regrow as many by CH3-L3 top scores
    (removed links allowed), and report the overlap and the scores."""
    after = mask & ~removed
    n = int(removed.sum())
    scores = ch_scores(after, "CH3", "exact")
    candidates = ~after
    regrown = select_top(scores, candidates, n, generator)
    return {
        "overlap": int((regrown & removed).sum()) / n,
        "chance": n / int(candidates.sum()),
        "score_removed": float(scores[removed].mean()),
        "score_other": float(scores[candidates & ~removed].mean()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-out", type=int, default=512)
    p.add_argument("--n-in", type=int, default=1800)
    p.add_argument("--density", type=float, default=0.05)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    n_out, n_in = args.n_out, args.n_in
    links = round(args.density * n_out * n_in)
    everything = torch.ones(n_out, n_in, dtype=torch.bool)

    cases = []
    er = select_top(None, everything, links, g)
    cases.append(("random graph, 30% removed at random", er, select_top(None, er, round(0.3 * links), g)))

    groups = 32
    block = torch.zeros(n_out, n_in, dtype=torch.bool)
    for b in range(groups):
        cols = torch.randperm(n_in, generator=g)[: round(args.density * n_in)]
        block[b * n_out // groups : (b + 1) * n_out // groups, cols] = True
    cases.append(
        (f"block graph ({groups} groups), 30% removed at random", block, select_top(None, block, round(0.3 * int(block.sum())), g))
    )

    kept = er & ~select_top(None, er, round(0.3 * links), g)
    grown = select_top(ch_scores(kept, "CH3", "exact"), ~kept, links - int(kept.sum()), g)
    cases.append(("random graph after one CH3 update, its new links removed", kept | grown, grown))

    print(f"{n_out}x{n_in} at density {args.density}, seed {args.seed}")
    for label, mask, removed in cases:
        r = regrow_overlap(mask, removed, g)
        print(
            f"  {label:58s} overlap {r['overlap']:.3f} (chance {r['chance']:.4f}); "
            f"mean CH3 score of the removed links {r['score_removed']:.2f}, of the other absent links {r['score_other']:.2f}"
        )


if __name__ == "__main__":
    main()
