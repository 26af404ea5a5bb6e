"""The stage strategies, chosen by name from four registries.

Every strategy is a function of one argument, the layer's
:class:`~chsnn.sparse.context.UpdateContext`; registering one under a new name
makes it available to every config (``removal: half_magnitude``):

    from chsnn.sparse import register_removal

    @register_removal("half_magnitude")
    def half_magnitude(ctx):            # one score per link; the lowest go first
        return ctx.links.magnitude / 2

What each stage returns:

* topology init: the bool ``(n_out, n_in)`` mask, ``ctx.n_links`` links;
* weight init: each output neuron's weight std ``(n_out, 1)``, or None to
  keep the layer's own weights (masked);
* removal: one score per link of ``ctx.links``; the lowest are removed
  (``soft=True``: the kept links are sampled with probability ~ score^T);
* regrowth: ``(n_out, n_in)`` scores, the highest regrown first, or None for
  uniformly random (``dense_gradients=True``: the engine sums the dense
  gradient before each update into ``ctx.accumulated_grad``).

A name can be registered once; registering it again raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from chsnn.linkpred import MODELS as CH_MODELS
from chsnn.linkpred import ch_scores
from chsnn.sparse.context import LinkScores, UpdateContext
from chsnn.sparse.errors import ConfigError
from chsnn.sparse.masks import count
from chsnn.sparse.select import sample_weighted, select_top, select_top_per_row

__all__ = [
    "TOPOLOGY_INITS",
    "WEIGHT_INITS",
    "REMOVALS",
    "REGROWTHS",
    "SOFT_REMOVALS",
    "DENSE_GRADIENT_REGROWTHS",
    "CORRELATED_INITS",
    "ACTIVITY_WEIGHT_INITS",
    "LinkScores",
    "UpdateContext",
    "register_topology_init",
    "register_weight_init",
    "register_removal",
    "register_regrowth",
]

TOPOLOGY_INITS: dict[str, Callable] = {}
WEIGHT_INITS: dict[str, Callable] = {}
REMOVALS: dict[str, Callable] = {}
SOFT_REMOVALS: set[str] = set()  # these sample the kept links by score^T
REGROWTHS: dict[str, Callable] = {}
DENSE_GRADIENT_REGROWTHS: set[str] = set()  # these read ctx.accumulated_grad
CORRELATED_INITS: set[str] = set()  # topology inits that read calibration correlations (ctx.stats)
ACTIVITY_WEIGHT_INITS: set[str] = set()  # weight inits that read calibration activity (ctx.stats)


def _register(registry: dict, stage: str, name: str, flags: set | None = None):
    """Decorator adding a strategy under a new name (and to ``flags``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {stage} strategy needs a non-empty string name, got {name!r}")

    def deco(fn):
        if name in registry:
            old = registry[name]
            where = f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', repr(old))}"
            raise ValueError(f"a {stage} strategy named {name!r} is already registered ({where}); choose another name")
        registry[name] = fn
        if flags is not None:
            flags.add(name)
        return fn

    return deco


def register_topology_init(name: str, correlated: bool = False):
    """Decorator: ``fn(ctx) -> bool (n_out, n_in) mask`` of ``ctx.n_links``
    links. ``correlated``: it reads the calibration statistics ``ctx.stats``
    (with correlations), so the engine runs calibration for it."""
    return _register(TOPOLOGY_INITS, "topology init", name, CORRELATED_INITS if correlated else None)


def register_weight_init(name: str, reads_activity: bool = False):
    """Decorator: ``fn(ctx) -> per-neuron std (n_out, 1)`` for the links of
    ``ctx.mask``, or None to keep the weights. ``reads_activity``: it reads
    the calibration statistics ``ctx.stats``, so the engine runs calibration for it."""
    return _register(WEIGHT_INITS, "weight init", name, ACTIVITY_WEIGHT_INITS if reads_activity else None)


def register_removal(name: str, soft: bool = False):
    """Decorator: ``fn(ctx) -> one score per link of ctx.links``; the lowest
    are removed (``soft``: the kept ones are sampled by score^T)."""
    return _register(REMOVALS, "removal", name, SOFT_REMOVALS if soft else None)


def register_regrowth(name: str, dense_gradients: bool = False):
    """Decorator: ``fn(ctx) -> (n_out, n_in) scores`` of the positions
    (``ctx.mask`` holds the links after removal), the highest regrown first,
    or None for random. ``dense_gradients``: the rule reads
    ``ctx.accumulated_grad``, so the engine accumulates it."""
    return _register(REGROWTHS, "regrowth", name, DENSE_GRADIENT_REGROWTHS if dense_gradients else None)


# Topology initialisation (linear layers; kernels are random per kernel) --------


@register_topology_init("random")
def random_topology(ctx: UpdateContext):
    """Erdos-Renyi: n_links positions uniformly at random (SET, RigL, MEST)."""
    everything = torch.ones(ctx.n_out, ctx.n_in, dtype=torch.bool, device=ctx.generator.device)
    return select_top(None, everything, ctx.n_links, ctx.generator)


def spread_anchors(n_out: int, varying: torch.Tensor) -> torch.Tensor:
    """Anchor input of each output neuron: evenly spread over the inputs that
    vary (so no anchor has zero variance and, with fewer outputs than inputs,
    the anchors cover the whole input instead of its first ``n_out``); with
    more outputs than varying inputs they are tiled, CHT's ``y mod n_in``."""
    n = varying.numel()
    y = torch.arange(n_out, device=varying.device)
    return varying[(y * n) // n_out] if n_out <= n else varying[y % n]


def link_every_row(mask: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor, generator) -> torch.Tensor:
    """Give each output neuron (row) left without a link its best-scoring
    allowed input, and take as many of the lowest-scoring links from rows
    that keep another, so the number of links is unchanged. Needs at least
    as many links as rows; otherwise the mask is returned as it is."""
    n_out = mask.shape[0]
    empty = ~mask.any(1)
    n_empty = int(empty.sum())
    if n_empty == 0 or count(mask) < n_out:
        return mask
    mask = mask.clone()
    # the link each row keeps in any case: its best one (random ties)
    best = select_top_per_row(scores, mask | ~mask.any(1, keepdim=True), 1, generator)
    donors = mask & ~best
    drop = select_top(scores, donors, n_empty, generator, largest=False)
    cand = allowed.unsqueeze(0).expand(n_empty, -1)
    pick = select_top_per_row(scores[empty], cand, 1, generator)
    mask &= ~drop
    mask[empty] = pick
    return mask


def link_every_input(mask: torch.Tensor, scores: torch.Tensor, varying: torch.Tensor, generator) -> torch.Tensor:
    """Give each varying input (column) left without a link its best-scoring
    output, and take as many of the lowest-scoring links whose row and column
    both keep another, so the number of links is unchanged and no row or
    column is emptied. An input without links is lost for good under CH3
    regrowth (no length-3 path reaches it), which global top-k leaves for the
    inputs least correlated with every anchor. When too few links can go, the
    inputs with the best links are covered first."""
    empty = (varying & ~mask.any(0)).nonzero().squeeze(1)
    if empty.numel() == 0:
        return mask
    links = mask.nonzero()
    links = links[torch.randperm(links.shape[0], generator=generator, device=generator.device).to(links.device)]
    weakest_first = torch.sort(scores[links[:, 0], links[:, 1]].to(torch.float64), stable=True).indices
    per_row, per_col = mask.sum(1).tolist(), mask.sum(0).tolist()
    drops = []
    for r, c in links[weakest_first].tolist():
        if len(drops) == empty.numel():
            break
        if per_row[r] > 1 and per_col[c] > 1:
            drops.append((r, c))
            per_row[r] -= 1
            per_col[c] -= 1
    if not drops:
        return mask
    col_scores = scores.t()[empty]  # (empty inputs, n_out)
    best_row = select_top_per_row(col_scores, torch.ones_like(col_scores, dtype=torch.bool), 1, generator)
    if len(drops) < empty.numel():
        best = col_scores.max(1).values
        keep = select_top(best, torch.ones_like(best, dtype=torch.bool), len(drops), generator)
        empty, best_row = empty[keep], best_row[keep]
    mask = mask.clone()
    gone = torch.tensor(drops, device=mask.device)
    mask[gone[:, 0], gone[:, 1]] = False
    mask[best_row.nonzero()[:, 1], empty] = True
    return mask


def _cover(mask: torch.Tensor, scores: torch.Tensor, varying: torch.Tensor, ctx: UpdateContext) -> torch.Tensor:
    """Every output neuron keeps a link and, with ``sscti_cover_inputs``, so
    does every varying input."""
    mask = link_every_row(mask, scores, varying, ctx.generator)
    if ctx.config.sscti_cover_inputs:
        mask = link_every_input(mask, scores, varying, ctx.generator)
    return mask


def _top_links(scores, ctx: UpdateContext):
    everything = torch.ones_like(scores, dtype=torch.bool)
    if ctx.config.sscti_soft:
        return sample_weighted(scores, everything, ctx.n_links, ctx.generator)
    if ctx.config.sscti_per_neuron:
        return top_links_per_row(scores, ctx.n_links, ctx.generator)
    return select_top(scores, everything, ctx.n_links, ctx.generator)


def top_links_per_row(scores: torch.Tensor, n_links: int, generator) -> torch.Tensor:
    """``n_links`` links spread evenly over the rows: each row its
    ``n_links // rows`` best-scoring inputs (random ties), and the rows
    whose next-best input scores highest one more each, for the remainder.
    (Global top-k gives the inputs most correlated with every anchor dozens
    of links each.)"""
    rows, cols = scores.shape
    per_row = min(cols, n_links // rows)
    mask = select_top_per_row(scores, torch.ones_like(scores, dtype=torch.bool), per_row, generator)
    left = n_links - count(mask)
    if left <= 0 or per_row == cols:
        return mask
    next_best = select_top_per_row(scores, ~mask, 1, generator)
    next_score = scores.masked_fill(~next_best, float("-inf")).amax(1)
    row_gets = select_top(next_score, torch.ones(rows, dtype=torch.bool, device=mask.device), left, generator)
    return mask | (next_best & row_gets.unsqueeze(1))


@register_topology_init("sscti", correlated=True)
@register_topology_init("csti", correlated=True)
def correlated_topology(ctx: UpdateContext):
    """SSCTI / CSTI: each output neuron is anchored at an input that varies
    (:func:`spread_anchors`); the links kept are the top ``n_links`` by
    |Pearson r| between an output's anchor and each input (over calibration
    samples: spike counts per sample for spiking layers); every output
    neuron keeps at least one link, and with ``sscti_cover_inputs`` every
    varying input too."""
    stats = ctx.stats
    corr = stats.correlation().abs()
    varying = stats.varying()
    if not bool(varying.any()):  # nothing to correlate
        return random_topology(ctx)
    scores = corr[spread_anchors(ctx.n_out, varying.nonzero().squeeze(1))]
    return _cover(_top_links(scores, ctx), scores, varying, ctx)


@register_topology_init("csti_tiled", correlated=True)
def tiled_topology(ctx: UpdateContext):
    """The CHT reference's CSTI for MLPs: the first sparse layer's input
    correlation (``ctx.input_stats``, d x d) tiled to the layer's shape, so
    every width must be 1x, 2x, ... the input width d; global top
    ``n_links`` by |r|, and every output neuron keeps at least one link."""
    stats, n_out, n_in = ctx.input_stats, ctx.n_out, ctx.n_in
    corr = stats.correlation().abs()
    d = corr.shape[0]
    if n_out % d or n_in % d:
        raise ConfigError(
            f"init=csti_tiled tiles the {d}-wide input correlation, so every sparse layer must be a whole multiple of {d} wide "
            f"(as in the CHT MLPs, hidden widths 1x or 2x the input); a layer is {n_out}x{n_in}: use init=csti, or change the widths"
        )
    scores = corr.repeat(n_out // d, n_in // d)
    varying = stats.varying().repeat(n_in // d)
    return _cover(_top_links(scores, ctx), scores, varying if bool(varying.any()) else ~varying, ctx)


# Weight initialisation ------------------------------------------------------------


@register_weight_init("keep")
def keep_weights(ctx: UpdateContext):
    """The layer's own initialisation, masked."""
    return None


@register_weight_init("kaiming")
def kaiming(ctx: UpdateContext):
    """Dense Kaiming normal: std = sqrt(gain / n_in)."""
    return torch.full((ctx.n_out, 1), math.sqrt(ctx.config.init_gain / ctx.n_in), dtype=torch.float64, device=ctx.mask.device)


@register_weight_init("swi")
def swi(ctx: UpdateContext):
    """SWI: std = sqrt(gain / ((1 - S) * n_in)), Kaiming when dense."""
    density = count(ctx.mask) / ctx.mask.numel()
    return torch.full((ctx.n_out, 1), math.sqrt(ctx.config.init_gain / (density * ctx.n_in)), dtype=torch.float64, device=ctx.mask.device)


@register_weight_init("sswi", reads_activity=True)
def sswi(ctx: UpdateContext):
    """SSWI: the variance is divided by each neuron's effective active inputs,
    the sum of E[a^2] over its presynaptic neurons (in-degree x mean firing
    rate for spikes), so the initial membrane input has variance ``gain``
    whatever the sparsity and firing rate. A neuron whose inputs were all
    silent falls back to its in-degree (firing rate 1), with a warning."""
    mask2d, stats = ctx.mask, ctx.stats
    indeg = mask2d.sum(1, dtype=torch.float64)
    effective = indeg
    if stats is not None:
        effective = mask2d.to(torch.float64) @ stats.second_moment.to(mask2d.device)
        if stats.any_active:  # (all silent: the engine has warned about the whole layer)
            _warn_silent_neurons(ctx, int(((effective <= 1e-12) & mask2d.any(1)).sum()))
        effective = torch.where(effective > 1e-12, effective, indeg)
    return torch.sqrt(ctx.config.init_gain / effective.clamp_min(1e-12)).unsqueeze(1)


@register_weight_init("sswi_layer", reads_activity=True)
def sswi_layer(ctx: UpdateContext):
    """SSWI with one firing rate per layer: each neuron's in-degree times the
    mean E[a^2] over all the layer's presynaptic neurons (CH-SPEC section 3
    read as "the mean presynaptic firing rate" of the layer). Unlike
    ``sswi`` it does not scale up a neuron whose links all reach rarely
    active inputs (e.g. SSCTI's links among border pixels of direct-coded
    MNIST), so no neuron starts with weights tens of times the others'."""
    mask2d, stats = ctx.mask, ctx.stats
    indeg = mask2d.sum(1, dtype=torch.float64)
    rate = 1.0
    if stats is not None and stats.any_active:  # (all silent: the engine has warned, firing rate 1)
        rate = float(stats.second_moment.double().mean())
    return torch.sqrt(ctx.config.init_gain / (indeg * rate).clamp_min(1e-12)).unsqueeze(1)


def _warn_silent_neurons(ctx: UpdateContext, fell_back: int) -> None:
    if fell_back:
        warnings.warn(
            f"{ctx.label}: {fell_back} of its {ctx.n_out} output neurons have only silent inputs on the calibration data; "
            "SSWI scales their weights by their in-degree (firing rate 1)",
            RuntimeWarning,
            stacklevel=4,
        )


# Removal: one score per existing link (ctx.links), the lowest removed -------------


@register_removal("magnitude")
def magnitude(ctx: UpdateContext):
    return ctx.links.magnitude


@register_removal("mest")
def mest(ctx: UpdateContext):
    """MEST: |w| + c |g|."""
    links = ctx.links
    if links.grad is None:
        return links.magnitude
    return links.magnitude + ctx.config.mest_grad_coeff * links.grad


@register_removal("ri")
def relative_importance(ctx: UpdateContext):
    return ctx.links.relative_importance()


@register_removal("lrs")
def hybrid_lrs(ctx: UpdateContext):
    """CH-SNN's hybrid link removal score: magnitude and relative importance,
    each scaled to [0, 1] and mixed by ``lrs_alpha``; links of neurons that
    were silent on the calibration window score -1 and go first."""
    links = ctx.links
    w, ri, a = links.magnitude, links.relative_importance(), ctx.config.lrs_alpha
    scores = a * w / w.max().clamp_min(1e-300) + (1 - a) * ri / ri.max().clamp_min(1e-300)
    if links.activity is not None:
        inactive = links.activity["pre"][links.cols] == 0
        if links.activity["post"] is not None:
            inactive |= links.activity["post"][links.rows] == 0
        scores = scores.masked_fill(inactive, -1.0)
    return scores


@register_removal("soft", soft=True)
def soft_magnitude(ctx: UpdateContext):
    """CHTs: the kept links are sampled with probability ~ |w|^T."""
    return ctx.links.magnitude


# Regrowth: (n_out, n_in) scores of the positions, the highest regrown ----------------


@register_regrowth("none")
@register_regrowth("random")
def random_regrowth(ctx: UpdateContext):
    return None


@register_regrowth("gradient", dense_gradients=True)
def gradient_regrowth(ctx: UpdateContext):
    """RigL: |dense gradient| summed over the steps before the update."""
    acc = ctx.accumulated_grad
    return None if acc is None else acc.abs()


def _ch_regrowth(model: str):
    def regrowth(ctx: UpdateContext):
        return ch_scores(ctx.mask, model, ctx.config.linkpred)

    regrowth.__name__ = regrowth.__qualname__ = f"ch_regrowth_{model}"
    regrowth.__doc__ = f"{model}-L3 link prediction on the layer after removal."
    return regrowth


for _model in CH_MODELS:
    register_regrowth(_model)(_ch_regrowth(_model))
