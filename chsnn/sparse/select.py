"""Choosing links: exact top-n with random ties, weighted sampling, per kernel.

All randomness comes from the caller's generator, so an engine's decisions
replay exactly from its saved RNG state.
"""

from __future__ import annotations

import torch

from chsnn.sparse.masks import count


def _randperm(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def kth_largest(keys: torch.Tensor, n: int) -> torch.Tensor:
    """The exact n-th largest value of a 1-D tensor (1 <= n <= numel).

    For a large tensor and a small n, a strided sample first bounds the answer
    from below, so the exact top-n runs only over the few values above that
    bound; if the bound was too high, it falls back to the full top-n."""
    size = keys.numel()
    if size > 1 << 16 and n < size // 8:
        stride = size // (1 << 14)
        sample = keys[::stride]
        m = min(sample.numel(), int(1.5 * n / stride) + 64)
        bound = torch.topk(sample, m, sorted=False).values.min()
        survivors = keys[keys >= bound]
        if survivors.numel() >= n:
            return torch.topk(survivors, n, sorted=False).values.min()
    return torch.topk(keys, n, sorted=False).values.min()


def select_top(
    scores: torch.Tensor | None, candidates: torch.Tensor, n: int, generator: torch.Generator, largest: bool = True
) -> torch.Tensor:
    """Bool mask (shape of ``candidates``) of the ``n`` candidates with the
    highest (or lowest) scores; ties at the cut are broken at random, and
    ``scores=None`` picks uniformly at random. Takes every candidate when
    there are at most ``n``."""
    flat_cand = candidates.reshape(-1)
    n_cand = count(flat_cand)
    if n >= n_cand:
        return candidates.clone()
    chosen = torch.zeros_like(candidates, dtype=torch.bool)
    if n <= 0:
        return chosen
    flat = chosen.view(-1)
    if scores is None:  # uniform without replacement: the top-n of iid keys
        scores = torch.rand(flat.numel(), generator=generator, device=generator.device, dtype=torch.float64).to(flat.device)
        largest = True
    keys = scores.reshape(-1).to(torch.float64)
    keys = torch.where(flat_cand, keys if largest else -keys, float("-inf"))
    cut = kth_largest(keys, n)
    above = keys > cut
    flat |= above
    need = n - count(above)
    ties = (keys == cut).nonzero().squeeze(1)
    flat[ties[_randperm(ties.numel(), generator, ties.device)[:need]]] = True
    return chosen


def sample_weighted(weights: torch.Tensor, candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of ``n`` candidates drawn without replacement with
    probability proportional to ``weights`` (Gumbel top-k); zero-weight
    candidates are drawn, at random, only once the positive ones run out."""
    idx = candidates.reshape(-1).nonzero().squeeze(1)
    w = weights.reshape(-1)[idx].to(torch.float64)
    u = torch.rand(idx.numel(), generator=generator, device=generator.device, dtype=torch.float64).to(idx.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    keys = torch.where(w > 0, torch.log(w.clamp_min(1e-300)) + gumbel, gumbel - 1e6)
    keyed = torch.full(candidates.shape, float("nan"), dtype=torch.float64, device=candidates.device)
    keyed.view(-1)[idx] = keys
    return select_top(keyed, candidates, n, generator)


def select_top_per_row(
    scores: torch.Tensor | None, candidates: torch.Tensor, n: int, generator: torch.Generator, largest: bool = True
) -> torch.Tensor:
    """Per row of a (rows, k) matrix, the ``n`` best candidates, random ties.
    Every row must hold at least ``n`` candidates (CHT-Conv kernels do)."""
    rows, k = candidates.shape
    chosen = torch.zeros_like(candidates, dtype=torch.bool)
    if n <= 0:
        return chosen
    rand = torch.rand(rows, k, generator=generator, device=generator.device).to(candidates.device)
    if scores is None:
        keys = rand
    else:
        keys = scores.to(torch.float64) if largest else -scores.to(torch.float64)
    keys = keys.masked_fill(~candidates, float("-inf"))
    # A random column order first, then a stable sort: ties fall at random.
    perm = rand.argsort(dim=1)
    order = torch.sort(keys.gather(1, perm), dim=1, descending=True, stable=True).indices[:, :n]
    chosen.scatter_(1, perm.gather(1, order), True)
    return chosen & candidates
