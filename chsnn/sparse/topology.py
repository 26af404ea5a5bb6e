"""One topology update as pure functions of masks and scores.

An update of a layer with links ``before`` (CH-SPEC sections 3-5):

1. :func:`removal` picks the links to remove: a fraction ``zeta`` of them plus
   any excess over the target count, the lowest-scoring first (per kernel for
   CHT-Conv layers);
2. :func:`chain_removal` then removes, through chained layers, the links of
   hidden neurons left without incoming or without outgoing links;
3. :func:`regrowth` regrows, among the absent positions, the highest-scoring
   ones up to the target count (random, RigL's gradients, CH link prediction,
   or sampled by score for soft regrowth);
4. :func:`refill_groups` moves regrown links so no row group (an attention
   head's q/k/v block) is left empty;
5. :func:`commit` gives the new mask, and where weights and optimizer state
   restart at 0.

The functions take tensors and an :class:`~chsnn.sparse.context.UpdateContext`
and return masks; all randomness comes from ``ctx.generator`` (or the one
passed), so an update replays exactly from the engine's saved RNG state. They
read no engine: the engine gathers the inputs, calls them, and applies the
result to its buffers, weights and optimizer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from chsnn.sparse.context import UpdateContext
from chsnn.sparse.masks import any_along, count
from chsnn.sparse.select import sample_weighted, select_top, select_top_per_row
from chsnn.sparse.targets import KERNEL

__all__ = [
    "removal_count",
    "removal",
    "remove_per_kernel",
    "chain_removal",
    "regrowth",
    "groups_emptied",
    "refill_groups",
    "Commit",
    "commit",
    "random_kernel_mask",
]


def removal_count(n_links: int, zeta: float, target: int) -> int:
    """Links to remove out of ``n_links``: a fraction ``zeta``, plus the
    excess over ``target`` (a decaying density schedule), at most all."""
    return min(n_links, round(zeta * n_links) + max(0, n_links - target))


def removal(ctx: UpdateContext, scores: torch.Tensor | None = None, soft: bool = False) -> torch.Tensor:
    """Bool ``(n_out, n_in)`` mask of the links of ``ctx.mask`` to remove.

    Linear layers: ``scores`` holds one score per link of ``ctx.links`` (a
    removal strategy's output); the :func:`removal_count` lowest go, or with
    ``soft`` the kept links are sampled with probability ~ score^T (the
    config's temperature at ``ctx.step``). Kernel layers ignore ``scores``:
    see :func:`remove_per_kernel`."""
    if ctx.kind == KERNEL:
        return remove_per_kernel(ctx)
    link = ctx.links.index
    n = removal_count(link.numel(), ctx.zeta, ctx.n_links)
    everyone = torch.ones(link.numel(), dtype=torch.bool, device=ctx.mask.device)
    if soft:  # keep links sampled by score^T
        keep = sample_weighted(scores.pow(ctx.config.temperature_at(ctx.step)), everyone, link.numel() - n, ctx.generator)
        return _links_to_mask(ctx.mask, link[~keep])
    return _links_to_mask(ctx.mask, link[select_top(scores, everyone, n, ctx.generator, largest=False)])


def remove_per_kernel(ctx: UpdateContext) -> torch.Tensor:
    """CHT-Conv: in every kernel the same number of its smallest |w| (MEST:
    |w| + c |g|), so each kernel keeps an equal count."""
    rows = ctx.as_kernels(ctx.mask)
    per = count(rows[0])
    n = removal_count(per, ctx.zeta, ctx.per_kernel)
    scores = ctx.weight.abs().to(torch.float64).reshape(-1)
    if ctx.config.removal == "mest" and ctx.grad is not None:
        scores = scores + ctx.config.mest_grad_coeff * ctx.grad.abs().to(torch.float64).reshape(-1)
    return ctx.as_2d(select_top_per_row(ctx.as_kernels(scores), rows, n, ctx.generator, largest=False))


def _links_to_mask(like: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(like)
    out.view(-1)[flat_index] = True
    return out


def chain_removal(
    chains: list[tuple[str, str]], before: dict[str, torch.Tensor], removed: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Chain removal over layer pairs ``(a, b)`` whose outputs of ``a`` are the
    inputs of ``b``: a hidden neuron left without incoming links (in ``a``)
    loses its outgoing ones (in ``b``) and vice versa, repeated through the
    stack until nothing changes. Pairs naming a layer missing from
    ``removed`` (a frozen one) are skipped.

    Returns the enlarged removed masks and, per layer, the links chain
    removal added."""
    removed = dict(removed)
    added = {name: 0 for name in removed}
    changed = True
    while changed:
        changed = False
        for a, b in chains:
            if a not in removed or b not in removed:
                continue
            ma, mb = before[a] & ~removed[a], before[b] & ~removed[b]
            kill_b = mb & ~any_along(ma, 1).unsqueeze(0)  # outgoing links of neurons without input
            kill_a = ma & ~any_along(mb, 0).unsqueeze(1)  # incoming links of neurons without output
            for name, kill in ((a, kill_a), (b, kill_b)):
                n = count(kill)
                if n:
                    removed[name] = removed[name] | kill
                    added[name] += n
                    changed = True
    return removed, added


def regrowth(ctx: UpdateContext, scores: torch.Tensor | None) -> torch.Tensor:
    """Bool ``(n_out, n_in)`` mask of the positions to regrow, so the layer
    ``ctx.mask`` (after removal) gets back to ``ctx.n_links`` links.

    Candidates are the absent positions, without the links just removed
    (``ctx.removed``) unless ``config.regrow_removed`` or too few remain.
    The highest ``scores`` win (random ties; ``None``: uniformly at random),
    or with ``config.soft_regrowth`` they are sampled by score; with
    ``config.regrow_random_share`` that share of the links is then drawn
    uniformly from the candidates left. Kernel layers regrow the same count
    in every kernel."""
    after = ctx.mask
    candidates = ~after if ctx.config.regrow_removed else ~after & ~ctx.removed
    share = ctx.config.regrow_random_share if scores is not None else 0.0
    if ctx.kind == KERNEL:
        rows_after = ctx.as_kernels(after)
        n = ctx.per_kernel - count(rows_after[0])
        rows_cand = ctx.as_kernels(candidates)
        if int(rows_cand.sum(1).min()) < n:  # a kernel has too few: allow re-growing removed
            rows_cand = ~rows_after
        kscores = None if scores is None else ctx.as_kernels(scores)
        n_random = round(share * n)
        chosen = select_top_per_row(kscores, rows_cand, n - n_random, ctx.generator)
        if n_random:
            chosen |= select_top_per_row(None, rows_cand & ~chosen, n_random, ctx.generator)
        return ctx.as_2d(chosen)
    n = ctx.n_links - count(after)
    if count(candidates) < n:
        candidates = ~after
    n_random = round(share * n)
    if ctx.config.soft_regrowth and scores is not None:
        chosen = sample_weighted(scores, candidates, n - n_random, ctx.generator)
    else:
        chosen = select_top(scores, candidates, n - n_random, ctx.generator)
    if n_random:
        chosen |= select_top(None, candidates & ~chosen, n_random, ctx.generator)
    return chosen


def groups_emptied(groups: torch.Tensor, links_then: torch.Tensor, links_now: torch.Tensor) -> torch.Tensor:
    """Bool per row group (``groups``: groups x n_out membership): the groups
    that held a link in ``links_then`` and hold none in ``links_now``."""
    had = (groups & any_along(links_then, 1)).any(1)
    has = (groups & any_along(links_now, 1)).any(1)
    return had & ~has


def refill_groups(
    groups: torch.Tensor,
    after: torch.Tensor,
    regrown: torch.Tensor,
    scores: torch.Tensor | None,
    generator: torch.Generator,
    keep_empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Give every row group (``groups``: groups x n_out membership) that
    ``after | regrown`` leaves without links one regrown link, its best
    candidate by ``scores`` (None: random), taken from the weakest regrown
    link of a row that keeps others; groups flagged in ``keep_empty`` (those
    chain removal emptied) stay empty. The count of regrown links is
    unchanged."""
    regrown = regrown.clone()
    for g in range(groups.shape[0]):
        rows_linked = any_along(after | regrown, 1)
        if bool((groups[g] & rows_linked).any()) or (keep_empty is not None and bool(keep_empty[g])):
            continue
        in_group = groups[g].unsqueeze(1) & ~after & ~regrown
        pick = select_top(scores, in_group, 1, generator)
        per_row = (after | regrown).sum(1)
        donors = regrown & (per_row > 1).unsqueeze(1)
        if not bool(donors.any()) or not bool(pick.any()):
            continue
        drop = select_top(scores, donors, 1, generator, largest=False)
        regrown = (regrown & ~drop) | pick
    return regrown


class Commit(NamedTuple):
    mask: torch.Tensor  # the layer's new links
    reset: torch.Tensor  # where weight and optimizer state restart at 0


def commit(before: torch.Tensor, removed: torch.Tensor, regrown: torch.Tensor) -> Commit:
    """The commit rule: the new mask is ``before`` minus ``removed`` plus
    ``regrown``. Links removed for good and genuinely new links restart at
    weight 0 with zero optimizer state; a link removed and regrown in the
    same update keeps both, as in the CHT reference, and so does every link
    the update did not touch."""
    return Commit((before & ~removed) | regrown, removed ^ regrown)


def random_kernel_mask(ctx: UpdateContext) -> torch.Tensor:
    """CHT-Conv's initial topology: ``ctx.per_kernel`` random positions in
    every kernel, as a ``(n_out, n_in)`` mask."""
    rows = torch.ones(ctx.n_out * ctx.n_in // ctx.kernel_size, ctx.kernel_size, dtype=torch.bool, device=ctx.generator.device)
    return ctx.as_2d(select_top_per_row(None, rows, ctx.per_kernel, ctx.generator))
