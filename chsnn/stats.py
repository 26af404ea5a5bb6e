"""Paired tests between two classifiers on the same test samples: pure
functions over label and prediction arrays (a run's predictions.npz), used
by ``chsnn sweep``'s tables and ``chsnn compare``."""

from __future__ import annotations


def mcnemar_p(only_ours: int, only_rival: int) -> float:
    """Two-sided exact McNemar test: the probability, if both classifiers were
    equally good, of a split of the discordant samples at least this uneven
    (a binomial test of ``only_ours`` out of ``only_ours + only_rival`` at 1/2)."""
    from scipy.stats import binomtest

    n = only_ours + only_rival
    return 1.0 if n == 0 else float(binomtest(only_ours, n, 0.5).pvalue)


def discordant(ours: dict, rival: dict) -> tuple[int, int] | None:
    """Test samples that only ``ours`` got right and that only ``rival`` got
    right, pooled over the seeds both ran; ``ours``/``rival``: seed ->
    (labels, predicted). None unless every common seed has predictions on
    both sides over the same labels (the same test split)."""
    common = sorted(set(ours) & set(rival))
    if not common:
        return None
    only_ours = only_rival = 0
    for seed in common:
        (y_a, p_a), (y_b, p_b) = ours[seed], rival[seed]
        if y_a.shape != y_b.shape or not (y_a == y_b).all():
            return None
        right_a, right_b = p_a == y_a, p_b == y_b
        only_ours += int((right_a & ~right_b).sum())
        only_rival += int((right_b & ~right_a).sum())
    return only_ours, only_rival
