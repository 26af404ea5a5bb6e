"""The topology update's pure functions on small hand-made masks whose
answer is known: removal, chain removal, regrowth, group refill, commit."""

import pytest
import torch

from chsnn.sparse import EngineConfig, UpdateContext, strategies, topology
from chsnn.sparse.context import target_links
from chsnn.sparse.errors import ConfigError

B = torch.bool


def ctx_for(
    mask,
    weight=None,
    *,
    kind="linear",
    kernel_size=1,
    density=None,
    zeta=0.0,
    removed=None,
    grad=None,
    activity=None,
    stats=None,
    accumulated_grad=None,
    seed=0,
    **config,
):
    """A context for one (n_out, n_in) layer; density defaults to the mask's."""
    n_out, n_in = mask.shape
    cfg = EngineConfig.from_dict({"method": "set", "sparsity": 0.5, **config})
    if density is None:
        density = int(mask.sum()) / mask.numel()
    return UpdateContext(
        name="layer",
        kind=kind,
        n_out=n_out,
        n_in=n_in,
        kernel_size=kernel_size,
        config=cfg,
        generator=torch.Generator().manual_seed(seed),
        density=density,
        n_links=target_links(kind, n_out, n_in, kernel_size, density),
        mask=mask,
        removed=removed,
        zeta=zeta,
        weight=weight if weight is not None else torch.ones(n_out, n_in),
        grad=grad,
        activity=activity,
        stats=stats,
        accumulated_grad=accumulated_grad,
    )


def distinct_weights(n_out, n_in, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n_out * n_in, generator=g).float() + 1).reshape(n_out, n_in) * torch.where(
        torch.rand(n_out, n_in, generator=g) < 0.5, -1.0, 1.0
    )


# Removal ---------------------------------------------------------------------------


def test_removal_count_is_zeta_plus_the_excess_over_the_target():
    assert topology.removal_count(10, 0.3, 10) == 3
    assert topology.removal_count(10, 0.3, 8) == 5  # a decaying density: 2 more
    assert topology.removal_count(4, 1.0, 2) == 4  # never more than there are
    assert topology.removal_count(10, 0.0, 10) == 0


def test_magnitude_removal_removes_exactly_the_k_smallest():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(6, 8, generator=g) < 0.5
    w = distinct_weights(6, 8)
    ctx = ctx_for(mask, w, zeta=0.25)
    removed = topology.removal(ctx, strategies.REMOVALS["magnitude"](ctx))
    k = round(0.25 * int(mask.sum()))
    assert int(removed.sum()) == k and not (removed & ~mask).any()
    smallest = w.abs()[mask].sort().values[:k]
    assert torch.equal(w.abs()[removed].sort().values, smallest)


def test_links_list_the_mask_in_row_major_order():
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=B)
    w = torch.tensor([[9.0, -2.0, 3.0], [-4.0, 9.0, 9.0]])
    links = ctx_for(mask, w).links
    assert links.index.tolist() == [1, 2, 3]
    assert links.rows.tolist() == [0, 0, 1] and links.cols.tolist() == [1, 2, 0]
    assert links.magnitude.tolist() == [2.0, 3.0, 4.0] and links.magnitude.dtype == torch.float64


def test_lrs_removes_every_link_of_a_silent_neuron_first():
    mask = torch.ones(4, 5, dtype=B)
    w = distinct_weights(4, 5) + 100 * torch.sign(distinct_weights(4, 5))  # big weights everywhere...
    pre = torch.ones(5, dtype=torch.float64)
    pre[3] = 0.0  # ...but input 3 never fired
    post = torch.ones(4, dtype=torch.float64)
    post[0] = 0.0  # and output 0 never fired
    ctx = ctx_for(mask, w, zeta=0.4, activity={"pre": pre, "post": post}, removal="lrs")
    removed = topology.removal(ctx, strategies.REMOVALS["lrs"](ctx))
    assert int(removed.sum()) == 8  # 0.4 * 20
    assert removed[:, 3].all() and removed[0].all()  # the 4 + 5 - 1 = 8 links of silent neurons


def test_soft_removal_keeps_the_count_and_drops_zero_weights_first():
    mask = torch.ones(3, 4, dtype=B)
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    w[0, 1] = w[2, 3] = w[1, 0] = 0.0
    ctx = ctx_for(mask, w, zeta=0.25, removal="soft")
    removed = topology.removal(ctx, strategies.REMOVALS["soft"](ctx), soft=True)
    assert int(removed.sum()) == 3
    assert removed[0, 1] and removed[2, 3] and removed[1, 0]


def test_kernel_removal_takes_the_smallest_in_every_kernel():
    # 2 output channels x 3 input channels, kernels of 4 positions: n_in = 12
    mask = torch.ones(2, 12, dtype=B)
    w = distinct_weights(2, 12, seed=3)
    ctx = ctx_for(mask, w, kind="kernel", kernel_size=4, density=0.5)
    removed = topology.removal(ctx)
    kernels, weights = removed.reshape(-1, 4), w.abs().reshape(-1, 4)
    assert (kernels.sum(1) == 2).all()  # per kernel, 4 - round(0.5 * 4)
    for k, r in zip(weights, kernels):
        assert torch.equal(r, k <= k.sort().values[1])  # its two smallest


# Chain removal ----------------------------------------------------------------------


def test_a_neuron_that_lost_all_incoming_links_loses_its_outgoing_ones():
    # a: 3 hidden x 2 inputs; b: 2 outputs x 3 hidden
    before = {"a": torch.ones(3, 2, dtype=B), "b": torch.ones(2, 3, dtype=B)}
    removed = {"a": torch.tensor([[0, 0], [1, 1], [0, 0]], dtype=B), "b": torch.zeros(2, 3, dtype=B)}  # hidden 1: no input left
    out, added = topology.chain_removal([("a", "b")], before, removed)
    assert torch.equal(out["b"], torch.tensor([[0, 1, 0], [0, 1, 0]], dtype=B))  # its outgoing links
    assert torch.equal(out["a"], removed["a"]) and added == {"a": 0, "b": 2}
    assert not removed["b"].any(), "the input dicts are left as they were"


def test_a_neuron_that_lost_all_outgoing_links_loses_its_incoming_ones():
    before = {"a": torch.ones(3, 2, dtype=B), "b": torch.ones(2, 3, dtype=B)}
    removed = {"a": torch.zeros(3, 2, dtype=B), "b": torch.tensor([[0, 0, 1], [0, 0, 1]], dtype=B)}  # hidden 2: no output left
    out, added = topology.chain_removal([("a", "b")], before, removed)
    assert torch.equal(out["a"], torch.tensor([[0, 0], [0, 0], [1, 1]], dtype=B)) and added == {"a": 2, "b": 0}


def test_chain_removal_cascades_through_the_stack_and_skips_missing_layers():
    # a (2x2) -> b (2x2) -> c (2x2); b's hidden output 0 is fed only by a's hidden output 0
    before = {"a": torch.ones(2, 2, dtype=B), "b": torch.tensor([[1, 0], [1, 1]], dtype=B), "c": torch.ones(2, 2, dtype=B)}
    removed = {"a": torch.tensor([[1, 1], [0, 0]], dtype=B), "b": torch.zeros(2, 2, dtype=B), "c": torch.zeros(2, 2, dtype=B)}
    out, added = topology.chain_removal([("a", "b"), ("b", "c")], before, removed)
    assert torch.equal(out["b"], torch.tensor([[1, 0], [1, 0]], dtype=B))  # a's dead neuron 0 cuts b's column 0
    assert torch.equal(out["c"], torch.tensor([[1, 0], [1, 0]], dtype=B))  # which killed b's neuron 0: c's column 0
    assert added == {"a": 0, "b": 2, "c": 2}
    frozen_c = {k: v for k, v in removed.items() if k != "c"}
    out, added = topology.chain_removal([("a", "b"), ("b", "c")], before, frozen_c)
    assert set(out) == {"a", "b"} and added == {"a": 0, "b": 2}


# Regrowth --------------------------------------------------------------------------


def test_regrowth_takes_the_best_candidates_up_to_the_target():
    before = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=B)
    removed = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=B)
    after = before & ~removed
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4)  # the last positions score highest
    ctx = ctx_for(after, density=4 / 12, removed=removed)
    regrown = topology.regrowth(ctx, scores)
    assert regrown.nonzero().tolist() == [[2, 1], [2, 3]]  # (2, 2) was just removed: not a candidate
    again = topology.regrowth(ctx.replace(config=EngineConfig.from_dict({"method": "cht", "sparsity": 0.5})), scores)
    assert again.nonzero().tolist() == [[2, 2], [2, 3]]  # cht regrows removed links too


def test_regrowth_falls_back_to_removed_links_when_too_few_remain():
    after = torch.tensor([[1, 0], [0, 0]], dtype=B)
    removed = torch.tensor([[0, 1], [1, 0]], dtype=B)
    ctx = ctx_for(after, density=1.0, removed=removed)
    regrown = topology.regrowth(ctx, None)
    assert torch.equal(regrown, ~after)  # 3 needed, only (1, 1) was never removed


def test_random_regrowth_draws_the_count_from_the_generator():
    after = torch.zeros(5, 6, dtype=B)
    after[0, :3] = True
    removed = torch.zeros(5, 6, dtype=B)
    draws = [topology.regrowth(ctx_for(after, density=0.4, removed=removed, seed=s), None) for s in (7, 7, 8)]
    assert all(int(d.sum()) == 12 - 3 and not (d & after).any() for d in draws)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_soft_regrowth_samples_only_positively_scored_candidates_first():
    after = torch.zeros(4, 4, dtype=B)
    removed = torch.zeros(4, 4, dtype=B)
    scores = torch.zeros(4, 4, dtype=torch.float64)
    scores[1, 2] = scores[3, 0] = scores[0, 0] = 5.0
    ctx = ctx_for(after, density=3 / 16, removed=removed, soft_regrowth=True)
    assert topology.regrowth(ctx, scores).nonzero().tolist() == [[0, 0], [1, 2], [3, 0]]


def test_kernel_regrowth_regrows_the_same_count_in_every_kernel():
    after = torch.zeros(2, 8, dtype=B)  # 4 kernels of 4 positions
    after.view(-1, 4)[:, 0] = True
    removed = torch.zeros(2, 8, dtype=B)
    removed.view(-1, 4)[:, 1] = True
    scores = torch.arange(16, dtype=torch.float64).reshape(2, 8)
    ctx = ctx_for(after, kind="kernel", kernel_size=4, density=0.5, removed=removed)
    regrown = topology.regrowth(ctx, scores).reshape(-1, 4)
    assert regrown.tolist() == [[False, False, False, True]] * 4  # one per kernel, its best candidate (not the removed 1)


def test_a_random_share_of_regrowth_reaches_positions_the_scores_never_pick():
    # CH3-L3 scores 0 wherever no length-3 path reaches: here columns 4-9.
    after = torch.zeros(6, 10, dtype=B)
    removed = torch.zeros(6, 10, dtype=B)
    scores = torch.zeros(6, 10, dtype=torch.float64)
    scores[:, :4] = torch.arange(1, 25, dtype=torch.float64).reshape(6, 4)
    n = 12
    by_score = topology.regrowth(ctx_for(after, density=n / 60, removed=removed), scores)
    assert int(by_score.sum()) == n and not by_score[:, 4:].any()
    reached = torch.zeros(6, 10, dtype=B)
    for seed in range(5):
        ctx = ctx_for(after, density=n / 60, removed=removed, seed=seed, regrow_random_share=0.5)
        mixed = topology.regrowth(ctx, scores)
        assert int(mixed.sum()) == n
        best = scores.reshape(-1).topk(n - 6).indices
        assert bool(mixed.reshape(-1)[best].all())  # the scored half is the six best
        reached |= mixed
    assert reached[:, 4:].any()  # the random half lands where the scores are 0
    assert torch.equal(topology.regrowth(ctx_for(after, density=n / 60, removed=removed, regrow_random_share=0.0), scores), by_score)


def test_a_random_share_in_kernel_regrowth_keeps_the_count_per_kernel():
    after = torch.zeros(2, 16, dtype=B)  # 8 kernels of 4 positions
    after.view(-1, 4)[:, 0] = True
    removed = torch.zeros(2, 16, dtype=B)
    scores = torch.arange(32, dtype=torch.float64).reshape(2, 16)
    ctx = ctx_for(after, kind="kernel", kernel_size=4, density=0.75, removed=removed, regrow_random_share=0.5)
    regrown = topology.regrowth(ctx, scores).reshape(-1, 4)
    assert regrown.sum(1).tolist() == [2] * 8 and not (regrown & after.view(-1, 4)).any()
    assert bool(regrown[:, 3].all())  # the one link by score is each kernel's best


@pytest.mark.parametrize("share", [-0.1, 1.5, "half"])
def test_a_random_share_outside_0_1_fails_naming_the_option(share):
    with pytest.raises(ConfigError, match="regrow_random_share"):
        EngineConfig.from_dict({"method": "chsnn", "regrow_random_share": share})


# Row groups --------------------------------------------------------------------------


def test_refill_gives_an_empty_group_a_link_and_keeps_the_count():
    groups = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=B)  # rows 0-1, rows 2-3
    after = torch.zeros(4, 3, dtype=B)
    after[0, 0] = True
    regrown = torch.zeros(4, 3, dtype=B)
    regrown[0, 1] = regrown[1, 2] = True  # both regrown links in group 0: group 1 empty
    scores = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    g = torch.Generator().manual_seed(0)
    out = topology.refill_groups(groups, after, regrown, scores, g)
    assert int(out.sum()) == 2 and (groups.float() @ (after | out).any(1).float() > 0).all()
    assert out[3, 2] and out[1, 2] and not out[0, 1]  # group 1 got its best; row 0 (which keeps another link) gave its weakest
    kept = topology.refill_groups(groups, after, regrown, scores, g, keep_empty=torch.tensor([False, True]))
    assert torch.equal(kept, regrown)  # a group chain removal emptied stays empty


def test_groups_emptied_names_the_groups_that_lost_every_link():
    groups = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=B)
    then = torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=B)
    now = torch.tensor([[0, 0], [0, 0], [1, 0]], dtype=B)
    assert topology.groups_emptied(groups, then, now).tolist() == [True, False]


# Commit ------------------------------------------------------------------------------


def test_commit_resets_links_removed_for_good_and_new_links_only():
    before = torch.tensor([[1, 1, 1, 0, 0]], dtype=B)
    removed = torch.tensor([[1, 1, 0, 0, 0]], dtype=B)
    regrown = torch.tensor([[0, 1, 0, 1, 0]], dtype=B)
    mask, reset = topology.commit(before, removed, regrown)
    assert mask.tolist() == [[False, True, True, True, False]]
    # gone for good: reset; removed and regrown: kept; untouched: kept; new: reset; absent: nothing
    assert reset.tolist() == [[True, False, False, True, False]]


def test_initial_kernel_masks_hold_the_same_count_per_kernel():
    ctx = ctx_for(torch.zeros(4, 27, dtype=B), kind="kernel", kernel_size=9, density=1 / 3)
    mask = topology.random_kernel_mask(ctx)
    assert mask.shape == (4, 27) and (mask.reshape(-1, 9).sum(1) == 3).all()


@pytest.mark.parametrize("name", ["magnitude", "mest", "ri", "lrs", "soft"])
def test_every_removal_strategy_scores_each_link(name):
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(2)) < 0.6
    ctx = ctx_for(mask, distinct_weights(5, 7), grad=torch.rand(5, 7), removal=name)
    assert strategies.REMOVALS[name](ctx).shape == (int(mask.sum()),)


def test_gradient_regrowth_reads_the_accumulated_gradient_from_the_context():
    after = torch.zeros(2, 3, dtype=B)
    acc = torch.tensor([[0.1, -3.0, 0.2], [2.0, 0.0, -0.5]])
    ctx = ctx_for(after, density=2 / 6, removed=torch.zeros(2, 3, dtype=B), accumulated_grad=None)
    assert strategies.REGROWTHS["gradient"](ctx) is None  # nothing accumulated: random
    scores = strategies.REGROWTHS["gradient"](ctx.replace(accumulated_grad=acc))
    assert topology.regrowth(ctx, scores).nonzero().tolist() == [[0, 1], [1, 0]]
    assert "gradient" in strategies.DENSE_GRADIENT_REGROWTHS


def test_sswi_counts_the_neurons_whose_inputs_were_all_silent_once():
    from types import SimpleNamespace

    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=B)
    stats = SimpleNamespace(second_moment=torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64), any_active=True)
    ctx = ctx_for(mask, stats=stats, weight_init="sswi").replace(label="layer (Linear 3x3)")
    with pytest.warns(RuntimeWarning, match="layer \\(Linear 3x3\\): 2 of its 3 output neurons have only silent inputs"):
        std = strategies.WEIGHT_INITS["sswi"](ctx)
    gain = ctx.config.init_gain
    assert torch.allclose(std.squeeze(1), torch.tensor([gain / 0.5, gain / 1, gain / 2], dtype=torch.float64).sqrt())  # silent: in-degree


def test_sswi_layer_scales_by_the_layers_mean_rate_where_sswi_scales_each_neuron_by_its_own_inputs():
    from types import SimpleNamespace

    # Neuron 0 links only the rarely active input 2; neurons 1 and 2 link busy inputs.
    mask = torch.tensor([[0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=B)
    second_moment = torch.tensor([0.5, 0.3, 0.001], dtype=torch.float64)
    stats = SimpleNamespace(second_moment=second_moment, any_active=True)
    gain = EngineConfig.from_dict({"method": "set", "sparsity": 0.5}).init_gain
    indeg = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    per_layer = strategies.WEIGHT_INITS["sswi_layer"](ctx_for(mask, stats=stats, weight_init="sswi_layer")).squeeze(1)
    assert torch.allclose(per_layer, (gain / (indeg * second_moment.mean())).sqrt())
    per_neuron = strategies.WEIGHT_INITS["sswi"](ctx_for(mask, stats=stats, weight_init="sswi")).squeeze(1)
    assert torch.allclose(per_neuron, (gain / torch.tensor([0.001, 0.8, 0.801], dtype=torch.float64)).sqrt())
    assert per_neuron[0] / per_neuron[1] > 25 and per_layer[0] / per_layer[1] < 1.5  # the rare-input neuron's outlier is gone
    silent = SimpleNamespace(second_moment=torch.zeros(3, dtype=torch.float64), any_active=False)
    assert torch.allclose(strategies.WEIGHT_INITS["sswi_layer"](ctx_for(mask, stats=silent)).squeeze(1), (gain / indeg).sqrt())


def test_the_stages_that_read_calibration_data_are_named():
    from chsnn.sparse.layout import calibration_uses

    uses = calibration_uses(EngineConfig.from_dict({"method": "chsnn", "sparsity": 0.9, "weight_init": "sswi_layer", "init": "csti_tiled"}))
    assert uses == ["init=csti_tiled", "weight_init=sswi_layer", "removal=lrs (inactive neurons)"]


def test_soft_regrowth_leaves_rigl_its_top_gradients_and_says_so(monkeypatch):
    # a config that samples CH-SNN's regrowth (the MLP zoo configs) run with --method rigl
    from chsnn.sparse import config as engine_config
    from chsnn.sparse import make_config

    monkeypatch.setattr(engine_config, "_WARNED", set())
    with pytest.warns(UserWarning, match="regrowth=gradient .RigL. takes the top gradients"):
        rigl = make_config("rigl", soft_regrowth=True)
    assert rigl.soft_regrowth is False and rigl.regrowth == "gradient"
    assert make_config("chsnn", soft_regrowth=True).soft_regrowth is True
    assert make_config("rigl").soft_regrowth is False and make_config("chts").soft_regrowth is True
