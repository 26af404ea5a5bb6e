"""CH-SNN's topology evolution, as the CHT reference does it: updates keep
what was learned, SSCTI links every neuron, calibration sees training's
activity, schedules end at 75% of training, and runs report how far each
layer's topology evolved."""

import json
import warnings

import numpy as np
import pytest
import torch
from test_engine import batches, mlp, train
from torch import nn

from chsnn.cli import main
from chsnn.sparse import ConfigError, EngineConfig, SparseEngine
from chsnn.sparse.calibration import record_activity
from chsnn.sparse.strategies import link_every_input, link_every_row, spread_anchors, top_links_per_row


def _weight_state(engine, optimizer):
    out = {}
    for t in engine.targets:
        state = optimizer.state[t.weight]
        out[t.name] = (t.as_2d(t.weight.detach()).clone(), t.as_2d(state["exp_avg"]).clone(), t.as_2d(state["exp_avg_sq"]).clone())
    return out


@pytest.mark.parametrize("method, options", [("cht", {}), ("chsnn", {"regrow_removed": True})])
def test_a_link_removed_and_regrown_keeps_its_weight_and_state_and_a_new_link_starts_at_zero(method, options):
    model = mlp(1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    cfg = {"method": method, "sparsity": 0.6, "update_interval": 0, "zeta": 0.5, **options}
    engine = SparseEngine(model, opt, cfg, calibration=batches(1, seed=99))
    train(model, opt, batches(5))
    before = _weight_state(engine, opt)
    engine.update_topology()
    after = _weight_state(engine, opt)
    kept_somewhere = new_somewhere = False
    for t in engine.targets:
        ch = engine.last_changes[t.name]
        kept, new = ch["removed"] & ch["regrown"], ch["regrown"] & ~ch["removed"]
        gone = ch["removed"] & ~ch["regrown"]
        kept_somewhere |= bool(kept.any())
        new_somewhere |= bool(new.any())
        for b, a in zip(before[t.name], after[t.name]):
            assert torch.equal(a[kept], b[kept]), "a removed-and-regrown link lost its weight or optimizer state"
            assert torch.all(a[new] == 0) and torch.all(a[gone] == 0), "new and removed links must be at 0 with zero state"
            untouched = ~(ch["removed"] | ch["regrown"])
            assert torch.equal(a[untouched], b[untouched])
        assert bool(b[kept].ne(0).any()) or not bool(kept.any())  # the kept weights were learned, not zeros
    assert kept_somewhere and new_somewhere, "the update should both re-grow removed links and grow new ones"


def test_sscti_anchors_spread_over_varying_inputs_and_every_output_neuron_is_linked():
    torch.manual_seed(0)
    n_in, n_out = 60, 20
    x = torch.rand(256, n_in)
    x[:, :30] = 0.0  # the first half never varies (as a silent corner of a sensor)
    x[:, 45:] = 0.3  # and the last quarter is constant
    model = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, 3))
    engine = SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.97}, calibration=[x])  # 36 links for 20 neurons
    mask = engine.mask("0")
    assert int(mask.sum()) == round(0.03 * n_in * n_out)
    assert bool(mask.any(1).all()), "an output neuron was left without links"
    assert not bool(mask[:, :30].any()) and not bool(mask[:, 45:].any()), "links to inputs that never vary"
    varying = torch.arange(30, 45)
    anchors = spread_anchors(n_out, varying)
    assert set(anchors.tolist()) <= set(varying.tolist()) and anchors.unique().numel() == 15  # all varying inputs anchor some output


def test_link_every_row_keeps_the_count_and_moves_only_the_weakest_links():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 10, generator=g, dtype=torch.float64)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :4] = True  # rows 2..5 empty, 9 links
    fixed = link_every_row(mask, scores, torch.ones(10, dtype=torch.bool), g)
    assert int(fixed.sum()) == 9 and bool(fixed.any(1).all())
    for r in range(2, 6):  # each empty row got its best input
        assert fixed[r, int(scores[r].argmax())]
    assert fixed[0, int((scores[0] * mask[0]).argmax())] and fixed[1, int((scores[1] * mask[1]).argmax())]


def test_link_every_input_links_each_varying_input_without_emptying_a_row_or_column():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 12, generator=g, dtype=torch.float64)
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[:, :3] = True  # 24 links on inputs 0-2; inputs 3-11 have none
    varying = torch.ones(12, dtype=torch.bool)
    varying[11] = False  # a constant input stays without links
    fixed = link_every_input(mask, scores, varying, g)
    assert int(fixed.sum()) == 24
    assert bool(fixed[:, :11].any(0).all()) and not bool(fixed[:, 11].any())
    assert bool(fixed.any(1).all()) and bool(fixed[:, :3].any(0).all())  # no row or old input emptied
    for c in range(3, 11):  # each newly linked input got exactly its best output
        assert fixed[:, c].sum() == 1 and fixed[int(scores[:, c].argmax()), c]
    gone = mask & ~fixed  # the links that went are the weakest of those that could go
    assert int(gone.sum()) == 8 and scores[gone].max() <= scores[mask & fixed].min()


def test_link_every_input_covers_the_best_inputs_first_when_too_few_links_can_move():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(3, 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 0] = mask[2, 0] = mask[2, 1] = True  # only (2, 0) can go without emptying a row or column
    fixed = link_every_input(mask, scores, torch.ones(6, dtype=torch.bool), g)
    assert int(fixed.sum()) == 4 and bool(fixed.any(1).all()) and bool(fixed[:, :2].any(0).all())
    assert not fixed[2, 0]
    ((row, col),) = (fixed & ~mask).nonzero().tolist()  # one input of 2-5 covered: the one with the best link
    assert col == 2 + int(scores[:, 2:].max(0).values.argmax()) and row == int(scores[:, col].argmax())


def test_sscti_cover_inputs_links_every_varying_input_of_a_layer():
    torch.manual_seed(0)
    n_in, n_out = 40, 40
    x = torch.rand(512, n_in)
    x[:, 20:] = x[:, :20] + 0.01 * torch.rand(512, 20)  # inputs 20-39 echo 0-19: strongly correlated pairs
    x[:, 35:] = torch.rand(512, 5)  # except 35-39, independent of everything
    model = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, 3))
    cfg = {"method": "chsnn", "sparsity": 0.95}  # 80 links for 40 x 40
    plain = SparseEngine(model, None, cfg, calibration=[x]).mask("0")
    model = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, 3))
    covered = SparseEngine(model, None, {**cfg, "sscti_cover_inputs": True}, calibration=[x]).mask("0")
    assert not bool(plain[:, 35:].any(0).all()), "global top-k should leave the uncorrelated inputs out"
    assert bool(covered.any(0).all()) and bool(covered.any(1).all())
    assert int(covered.sum()) == int(plain.sum()) == 80
    assert int(plain.sum(1).max()) > 2  # global top-k: uneven rows
    model = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, 3))
    even = SparseEngine(model, None, {**cfg, "sscti_per_neuron": True}, calibration=[x]).mask("0")
    assert int(even.sum()) == 80 and even.sum(1).tolist() == [2] * n_out


def test_top_links_per_row_gives_every_row_its_share_of_its_best_inputs():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(7, 20, generator=g, dtype=torch.float64)
    scores[:, 0] = 10.0  # a hub input: global top-k would give it every row
    mask = top_links_per_row(scores, 25, g)  # 3 per row, and 4 left over
    assert int(mask.sum()) == 25 and int(mask.sum(1).min()) == 3 and int(mask.sum(1).max()) == 4
    for r in range(7):  # each row's best are in, as many as it has links
        k = int(mask[r].sum())
        assert bool(mask[r, scores[r].topk(k).indices].all())
    fourth = scores.sort(1, descending=True).values[:, 3]  # the 4 extra links went to the rows with the best 4th input
    assert set(mask.sum(1).eq(4).nonzero().squeeze(1).tolist()) == set(fourth.topk(4).indices.tolist())


def test_sscti_per_neuron_and_soft_sscti_cannot_be_combined():
    with pytest.raises(ConfigError, match="sscti_per_neuron"):
        EngineConfig(method="chsnn", sparsity=0.9, sscti_soft=True, sscti_per_neuron=True).resolved()


def test_correlation_is_over_samples_of_spike_counts_and_streams_over_batches():
    """Spiking layers: one correlation sample per input sample (its counts
    over the time steps), accumulated over every calibration batch."""
    from chsnn.models import build_model

    model = build_model("snn-mlp", (20,), 3, time_steps=6, hidden=[8])
    target = [t for t in SparseEngine(model, None, "set", sparsity=0.5).targets if t.name == "hidden.0"][0]
    g = torch.Generator().manual_seed(1)
    parts = [(torch.rand(6, 32, 20, generator=g) < torch.rand(1, 32, 20, generator=g)).float() for _ in range(3)]
    stats = record_activity(model, parts, [target], lambda m, x: m(x), correlate=True, spiking=True)["hidden.0"]
    counts = torch.cat([p.sum(0) for p in parts]).double().numpy()
    expected = np.corrcoef(counts.T)
    np.fill_diagonal(expected, 0)
    assert stats.n_samples == 96 and stats.n == 96 * 6
    assert np.allclose(stats.correlation().numpy(), np.nan_to_num(expected), atol=1e-10)
    assert torch.allclose(stats.second_moment, torch.cat(parts).reshape(-1, 20).double().pow(2).mean(0))


def test_calibration_of_a_batchnorm_network_sees_activity_and_leaves_its_statistics_alone():
    from chsnn.models import build_model

    torch.manual_seed(0)
    model = build_model("snn-cnn", (2, 12, 12), 4, time_steps=4, channels=[4, 8], hidden=16)
    x = (torch.rand(4, 16, 2, 12, 12) < 0.3).float()
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    running = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent layer would warn
        engine = SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.9, "include": ["fc"]}, calibration=[x])
    fc = engine.by_name["fc"]
    stats = record_activity(model, engine.calibration, [fc], engine.forward_fn, spiking=True)["fc"]
    assert float(stats.mean_abs.mean()) > 0.01, "the FC layer's inputs are silent at calibration"
    for m, (mean, var) in zip(bn, running):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)


def test_a_layer_silent_at_calibration_gets_a_warning():
    model = mlp()
    with pytest.warns(RuntimeWarning, match="none of its 12 inputs was active"):
        SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.8}, calibration=[torch.zeros(16, 12)])


def test_zeta_anneals_to_zero_at_75_percent_and_updates_end_there():
    cfg = EngineConfig.from_dict({"method": "set", "total_steps": 100, "update_interval": 10})
    assert cfg.zeta_schedule == "cosine" and cfg.end_step == 75
    assert cfg.zeta_at(0) == pytest.approx(0.3) and cfg.zeta_at(75) == pytest.approx(0.0, abs=1e-15)
    assert 0 < cfg.zeta_at(40) < 0.3
    model, opt = mlp(), None
    engine = SparseEngine(model, opt, {"method": "set", "sparsity": 0.8, "total_steps": 100, "update_interval": 10})
    assert engine.update_due(70) and not engine.update_due(80)
    assert EngineConfig.from_dict({"method": "set"}).zeta_schedule == "constant"  # no total_steps: nothing to anneal over


def test_cht_preset_uses_chain_removal_like_the_reference():
    assert EngineConfig.from_dict({"method": "cht"}).chain_removal is True


def test_chsnn_regrowth_explores_instead_of_taking_back_what_it_removed():
    model = mlp(1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    engine = SparseEngine(
        model, opt, {"method": "chsnn", "sparsity": 0.6, "update_interval": 2, "early_stop": True}, calibration=batches(1, seed=99)
    )
    initial = {t.name: engine.mask(t.name).clone() for t in engine.targets}
    train(model, opt, batches(8))
    assert engine.n_updates == 4 and not engine.frozen
    for t in engine.targets:
        ch = engine.last_changes[t.name]
        assert not bool((ch["removed"] & ch["regrown"]).any())
    turnover = engine.topology_summary()
    assert all(turnover[name]["turnover"] > 0 for name in initial)
    assert all(turnover[name]["overlaps"] == [0.0] * 4 for name in initial)


def test_csti_tiled_repeats_the_input_correlation_and_refuses_other_widths():
    torch.manual_seed(0)
    x = torch.rand(128, 8)
    x[:, 3] = x[:, 1] + 0.01 * torch.rand(128)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    engine = SparseEngine(model, None, {"method": "cht", "init": "csti_tiled", "sparsity": 0.8}, calibration=[x])
    for name in ("0", "2"):
        m = engine.mask(name)
        assert bool(m.any(1).all())
    m0 = engine.mask("0")
    assert m0[1, 3] and m0[3, 1] and m0[9, 3] and m0[11, 1]  # the correlated pair, in both tiles
    bad = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 2))
    with pytest.raises(ConfigError, match="multiple of 8"):
        SparseEngine(bad, None, {"method": "cht", "init": "csti_tiled", "sparsity": 0.9, "sparsify_output": True}, calibration=[x])


def test_turnover_and_frozen_steps_appear_in_summary_json(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        "digits",
        "--model",
        "snn-mlp",
        "--set",
        "model_options.hidden=[64]",
        "--set",
        "batch_size=128",
        "--set",
        "time_steps=4",
        "--quiet",
        "--epochs",
        "3",
        "--method",
        "cht",
        "--sparsity",
        "0.9",
        "--set",
        "engine.update_interval=2",
        "--set",
        "engine.early_stop_overlap=0.05",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    layer = summary["layers"][0]
    assert {"turnover", "frozen_at_step", "overlaps", "updates"} <= set(layer)
    assert 0.0 < layer["turnover"] <= 1.0
    assert layer["updates"] == len(layer["overlaps"]) >= 1
    assert layer["frozen_at_step"] is not None and layer["frozen_at_step"] % 2 == 0
    # the interval the run used and the machine it ran on, for tables rebuilt later
    assert summary["update_interval"] == 2 and summary["machine"].endswith(f"torch {torch.__version__}")


def test_calibration_data_is_bounded_by_memory_for_large_event_frames(monkeypatch):
    """Calibration inputs stay on the device for the whole run, so they are
    capped in bytes (1 GiB: 512 DVS128 recordings of 16 frames) before
    calibration_samples' 4096; here a cap of 100 samples' worth."""
    from chsnn import train as training
    from chsnn import trainer

    per_sample = 4 * 2 * 16 * 16 * 4  # float32 frames of 2x16x16 over 4 steps
    monkeypatch.setattr(trainer, "CALIBRATION_BYTES", 100 * per_sample)  # where the Runner reads it
    cfg = training.resolve_config(
        None,
        {
            "data": "random",
            "model": "snn-mlp",
            "model_options": {"hidden": [8]},
            "time_steps": 4,
            "batch_size": 32,
            "data_options": {"input_shape": [2, 16, 16], "n_classes": 3, "kind": "events", "n_train": 640, "n_test": 8},
        },
    )
    runner = training.Runner(cfg)
    assert runner.engine.config.calibration_batches == 4  # ceil(100 / 32)
    assert sum(x.shape[1] for x in runner.engine.calibration) == 128


def test_initialisation_in_one_forward_equals_one_pass_per_layer(monkeypatch):
    """A spiking MLP over several calibration batches: the one-forward
    initialisation (each layer initialised as the pass reaches it) gives the
    masks and weights of one partial pass per layer."""
    from chsnn.models import build_model
    from chsnn.sparse import initialisation

    g = torch.Generator().manual_seed(3)
    parts = [(torch.rand(6, 32, 20, generator=g) < torch.rand(1, 32, 20, generator=g)).float() for _ in range(3)]

    def build():
        torch.manual_seed(0)
        model = build_model("snn-mlp", (20,), 3, time_steps=6, hidden=[16, 16])
        return SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.8, "seed": 0}, calibration=parts)

    one = build()
    monkeypatch.setattr(initialisation, "one_pass_budget", lambda device, training_bytes: 0)
    per_layer = build()
    assert one.init_passes == 1 and per_layer.init_passes == len(per_layer.targets) == 2
    for t, u in zip(one.targets, per_layer.targets):
        assert torch.equal(one.mask(t.name), per_layer.mask(u.name))
        assert torch.allclose(t.weight, u.weight, atol=1e-6)
    assert torch.allclose(one.input_stats.correlation(), per_layer.input_stats.correlation(), atol=1e-12)


def test_a_layer_called_at_every_time_step_is_initialised_one_pass_per_layer():
    """A model stepping through time in Python calls each layer T times per
    forward: the one-forward initialisation cannot see a whole sample there."""

    class Stepping(nn.Module):
        spiking = True

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):  # (T, N, 12)
            return torch.stack([self.out(torch.relu(self.fc2(torch.relu(self.fc1(step))))) for step in x]).mean(0)

    x = torch.rand(4, 32, 12)
    engine = SparseEngine(Stepping(), None, {"method": "chsnn", "sparsity": 0.8}, calibration=[x[:, :16], x[:, 16:]])
    assert engine.trace.calls == {"fc1": 4, "fc2": 4} and engine.init_passes == 2


def test_correlation_sums_of_spike_counts_equal_float64_to_the_last_bit():
    from chsnn.sparse.calibration import sums_and_gram

    g = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 9, (4000, 300), generator=g).float()  # counts over T=8 steps
    total, gram = sums_and_gram(counts)
    assert torch.equal(total, counts.double().sum(0)) and torch.equal(gram, counts.double().T @ counts.double())
    rates = torch.rand(500, 40, generator=g)  # not whole numbers: float64 throughout
    total, gram = sums_and_gram(rates)
    assert torch.equal(gram, rates.double().T @ rates.double())


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_a_random_share_of_regrowth_links_inputs_that_ch3_never_reaches(share):
    # SSCTI leaves the inputs that never varied at calibration unlinked, and
    # CH3-L3 scores 0 at every position of an unlinked input.
    torch.manual_seed(0)
    x = torch.rand(256, 60)
    x[:, :30] = 0.0
    model = nn.Sequential(nn.Linear(60, 20), nn.ReLU(), nn.Linear(20, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    cfg = {"method": "chsnn", "sparsity": 0.8, "update_interval": 0, "zeta": 0.3, "regrow_random_share": share}
    engine = SparseEngine(model, opt, cfg, calibration=[x])
    assert not bool(engine.mask("0")[:, :30].any())
    for _ in range(3):
        engine.update_topology()
    mask = engine.mask("0")
    assert int(mask.sum()) == round(0.2 * 60 * 20)
    assert bool(mask[:, :30].any()) == (share > 0)


def _features_then_sparse(silent_from: int):
    """A dense feature layer ("0") feeding a sparse one ("2"): features
    ``silent_from`` and on are silent (ReLU of a negative bias) until
    "training" turns them on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        model[0].bias[silent_from:] = -100.0
    return model


def test_reinit_fraction_draws_the_topology_again_on_the_trained_features():
    model = _features_then_sparse(silent_from=20)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    cfg = {"method": "chsnn", "sparsity": 0.8, "update_interval": 0, "exclude": ["0"], "total_steps": 10, "reinit_fraction": 0.4}
    data = batches(4, seed=3)
    engine = SparseEngine(model, opt, cfg, calibration=data)
    assert engine.config.reinit_step == 4
    # SSCTI on the untrained features: the silent ones get no link
    assert not bool(engine.mask("2")[:, 20:].any())
    train(model, opt, data[:3])
    with torch.no_grad():  # what training would do: the silent features come on
        model[0].bias[20:] = 0.5
    engine.update_topology()  # an update of the first topology, at step 3
    initial = engine.mask("2").clone()
    assert engine.reinitialised_at is None and engine.topology_summary()["2"]["updates"] == 1
    train(model, opt, data[3:])  # step 4: the second draw
    assert engine.reinitialised_at == 4
    mask = engine.mask("2")
    assert bool(mask[:, 20:].any()), "the second draw sees the features that came on"
    assert not torch.equal(mask, initial)
    assert int(mask.sum()) == round(0.2 * 40 * 30)
    weight = engine.by_name["2"].weight.detach()
    assert bool((weight[~mask] == 0).all()) and bool((weight[mask] != 0).all())
    state = opt.state[engine.by_name["2"].weight]
    assert float(state["exp_avg"].abs().sum()) == 0.0 and float(state["exp_avg_sq"].abs().sum()) == 0.0
    summary = engine.topology_summary()["2"]
    assert summary["turnover"] == 0.0 and summary["updates"] == 0, "counted from the second draw"
    # and a resumed engine knows it happened
    resumed = SparseEngine(_features_then_sparse(20), None, cfg, calibration=data)
    resumed.load_state_dict(engine.state_dict())
    assert resumed.reinitialised_at == 4 and torch.equal(resumed.mask("2"), mask)


def test_without_reinit_fraction_the_initialisation_is_drawn_once():
    model = _features_then_sparse(silent_from=20)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    data = batches(4, seed=3)
    cfg = {"method": "chsnn", "sparsity": 0.8, "update_interval": 0, "exclude": ["0"], "total_steps": 10}
    engine = SparseEngine(model, opt, cfg, calibration=data)
    initial = engine.mask("2").clone()
    with torch.no_grad():
        model[0].bias[20:] = 0.5
    train(model, opt, data)
    assert engine.config.reinit_step is None and engine.reinitialised_at is None
    assert torch.equal(engine.mask("2"), initial)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reinit_fraction": 1.0, "total_steps": 10}, "reinit_fraction=1.0 is not allowed"),
        ({"reinit_fraction": -0.1, "total_steps": 10}, "reinit_fraction=-0.1 is not allowed"),
        ({"reinit_fraction": "half", "total_steps": 10}, "reinit_fraction='half' is not allowed"),
        ({"reinit_fraction": 0.1}, "reinit_fraction need total_steps"),
    ],
)
def test_bad_reinit_fraction_fails_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_dict({"method": "chsnn", **options})


def test_a_run_with_reinit_fraction_reports_the_step_of_the_second_draw(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", "snn-mlp", "--set", "model_options.hidden=[64]", "--set", "batch_size=128"]
    args += ["--set", "time_steps=4", "--epochs", "2", "--method", "chsnn", "--sparsity", "0.9"]
    args += ["--set", "engine.reinit_fraction=0.5", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["reinitialised_at_step"] == round(0.5 * steps)
    assert f"initialisation drawn again at step {round(0.5 * steps)}" in capsys.readouterr().out
