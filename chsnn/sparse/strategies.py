"""The stage strategies, chosen by name from small registries.

Each registry maps a config value to a function; registering a function under
a new name makes it available to every config (``removal: my_score``):

    from chsnn.sparse.strategies import register_removal

    @register_removal("half_magnitude")
    def half_magnitude(links):          # lowest scores are removed first
        return links.magnitude / 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from chsnn.linkpred import MODELS as CH_MODELS
from chsnn.linkpred import ch_scores
from chsnn.sparse.masks import count
from chsnn.sparse.select import sample_weighted, select_top, select_top_per_row

TOPOLOGY_INITS: dict[str, Callable] = {}
WEIGHT_INITS: dict[str, Callable] = {}
REMOVALS: dict[str, Callable] = {}
SOFT_REMOVALS: set[str] = set()  # these sample the kept links by score^T
REGROWTHS: dict[str, Callable] = {}


def _register(registry: dict, name: str):
    def deco(fn):
        registry[name] = fn
        return fn

    return deco


def register_topology_init(name: str):
    """``fn(n_out, n_in, n_links, stats, cfg, generator) -> bool (n_out, n_in)``."""
    return _register(TOPOLOGY_INITS, name)


def register_weight_init(name: str):
    """``fn(cfg, n_in, mask2d, stats) -> per-neuron std (n_out, 1)``, or None to keep the weights."""
    return _register(WEIGHT_INITS, name)


def register_removal(name: str, soft: bool = False):
    """``fn(links: LinkScores) -> per-link score``; the lowest are removed."""
    if soft:
        SOFT_REMOVALS.add(name)
    return _register(REMOVALS, name)


def register_regrowth(name: str):
    """``fn(engine, target, after) -> (n_out, n_in) scores``, or None for random."""
    return _register(REGROWTHS, name)


# Topology initialisation (linear layers; kernels are random per kernel) --------


@register_topology_init("random")
def random_topology(n_out, n_in, n_links, stats, cfg, generator):
    """Erdos-Renyi: n_links positions uniformly at random (SET, RigL, MEST)."""
    return select_top(None, torch.ones(n_out, n_in, dtype=torch.bool, device=generator.device), n_links, generator)


CORRELATED_INITS = ("sscti", "csti", "csti_tiled")  # these read calibration correlations


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


def _top_links(scores, n_links, cfg, generator):
    everything = torch.ones_like(scores, dtype=torch.bool)
    if cfg.sscti_soft:
        return sample_weighted(scores, everything, n_links, generator)
    return select_top(scores, everything, n_links, generator)


@register_topology_init("sscti")
@register_topology_init("csti")
def correlated_topology(n_out, n_in, n_links, stats, cfg, generator):
    """SSCTI / CSTI: each output neuron is anchored at an input that varies
    (:func:`spread_anchors`); the links kept are the top ``n_links`` by
    |Pearson r| between an output's anchor and each input (over calibration
    samples: spike counts per sample for spiking layers); every output
    neuron keeps at least one link."""
    corr = stats.correlation().abs()
    varying = stats.varying()
    if not bool(varying.any()):  # nothing to correlate
        return random_topology(n_out, n_in, n_links, stats, cfg, generator)
    scores = corr[spread_anchors(n_out, varying.nonzero().squeeze(1))]
    return link_every_row(_top_links(scores, n_links, cfg, generator), scores, varying, generator)


@register_topology_init("csti_tiled")
def tiled_topology(n_out, n_in, n_links, stats, cfg, generator):
    """The CHT reference's CSTI for MLPs: the first sparse layer's input
    correlation (``stats``, d x d) tiled to the layer's shape, so every
    width must be 1x, 2x, ... the input width d; global top ``n_links`` by
    |r|, and every output neuron keeps at least one link."""
    from chsnn.sparse.config import ConfigError

    corr = stats.correlation().abs()
    d = corr.shape[0]
    if n_out % d or n_in % d:
        raise ConfigError(
            f"init=csti_tiled tiles the {d}-wide input correlation, so every sparse layer must be a whole multiple of {d} wide "
            f"(as in the CHT MLPs, hidden widths 1x or 2x the input); a layer is {n_out}x{n_in}: use init=csti, or change the widths"
        )
    scores = corr.repeat(n_out // d, n_in // d)
    varying = stats.varying().repeat(n_in // d)
    return link_every_row(_top_links(scores, n_links, cfg, generator), scores, varying if bool(varying.any()) else ~varying, generator)


# Weight initialisation ------------------------------------------------------------


@register_weight_init("keep")
def keep_weights(cfg, n_in, mask2d, stats):
    """The layer's own initialisation, masked."""
    return None


@register_weight_init("kaiming")
def kaiming(cfg, n_in, mask2d, stats):
    """Dense Kaiming normal: std = sqrt(gain / n_in)."""
    return torch.full((mask2d.shape[0], 1), math.sqrt(cfg.init_gain / n_in), dtype=torch.float64, device=mask2d.device)


@register_weight_init("swi")
def swi(cfg, n_in, mask2d, stats):
    """SWI: std = sqrt(gain / ((1 - S) * n_in)), Kaiming when dense."""
    density = int(torch.count_nonzero(mask2d)) / mask2d.numel()
    return torch.full((mask2d.shape[0], 1), math.sqrt(cfg.init_gain / (density * n_in)), dtype=torch.float64, device=mask2d.device)


@register_weight_init("sswi")
def sswi(cfg, n_in, mask2d, stats):
    """SSWI: the variance is divided by each neuron's effective active inputs,
    the sum of E[a^2] over its presynaptic neurons (in-degree x mean firing
    rate for spikes), so the initial membrane input has variance ``gain``
    whatever the sparsity and firing rate."""
    indeg = mask2d.sum(1, dtype=torch.float64)
    effective = indeg
    if stats is not None:
        effective = mask2d.to(torch.float64) @ stats.second_moment.to(mask2d.device)
        effective = torch.where(effective > 1e-12, effective, indeg)  # only silent inputs: fall back (the engine warns)
    return torch.sqrt(cfg.init_gain / effective.clamp_min(1e-12)).unsqueeze(1)


# Removal ---------------------------------------------------------------------------


@dataclass
class LinkScores:
    """What removal scores read, for one layer's existing links as a list."""

    magnitude: torch.Tensor  # |w| per link, float64
    rows: torch.Tensor  # output neuron of each link
    cols: torch.Tensor  # input neuron of each link
    n_out: int
    n_in: int
    cfg: object
    grad: torch.Tensor | None = None  # |dL/dw| per link, when known
    activity: dict | None = None  # {"pre": (n_in,), "post": (n_out,) or None}

    def relative_importance(self) -> torch.Tensor:
        """|w| over the total |w| of its input plus over that of its output."""
        w = self.magnitude
        col = torch.zeros(self.n_in, dtype=w.dtype, device=w.device).index_add_(0, self.cols, w)
        row = torch.zeros(self.n_out, dtype=w.dtype, device=w.device).index_add_(0, self.rows, w)
        return w / col[self.cols].clamp_min(1e-300) + w / row[self.rows].clamp_min(1e-300)


@register_removal("magnitude")
def magnitude(links: LinkScores):
    return links.magnitude


@register_removal("mest")
def mest(links: LinkScores):
    """MEST: |w| + c |g|."""
    if links.grad is None:
        return links.magnitude
    return links.magnitude + links.cfg.mest_grad_coeff * links.grad


@register_removal("ri")
def relative_importance(links: LinkScores):
    return links.relative_importance()


@register_removal("lrs")
def hybrid_lrs(links: LinkScores):
    """CH-SNN's hybrid link removal score: magnitude and relative importance,
    each scaled to [0, 1] and mixed by ``lrs_alpha``; links of neurons that
    were silent on the calibration window score -1 and go first."""
    w, ri, a = links.magnitude, links.relative_importance(), links.cfg.lrs_alpha
    scores = a * w / w.max().clamp_min(1e-300) + (1 - a) * ri / ri.max().clamp_min(1e-300)
    if links.activity is not None:
        inactive = links.activity["pre"][links.cols] == 0
        if links.activity["post"] is not None:
            inactive |= links.activity["post"][links.rows] == 0
        scores = scores.masked_fill(inactive, -1.0)
    return scores


@register_removal("soft", soft=True)
def soft_magnitude(links: LinkScores):
    """CHTs: the kept links are sampled with probability ~ |w|^T."""
    return links.magnitude


# Regrowth ----------------------------------------------------------------------------


@register_regrowth("none")
@register_regrowth("random")
def random_regrowth(engine, target, after):
    return None


@register_regrowth("gradient")
def gradient_regrowth(engine, target, after):
    """RigL: |dense gradient| summed over the steps before the update."""
    acc = engine._rigl_acc.get(target.name)
    return None if acc is None else target.as_2d(acc).abs()


def _ch_regrowth(model: str):
    def regrowth(engine, target, after):
        return ch_scores(after, model, engine.config.linkpred)

    regrowth.__doc__ = f"{model}-L3 link prediction on the layer after removal."
    return regrowth


for _model in CH_MODELS:
    register_regrowth(_model)(_ch_regrowth(_model))
