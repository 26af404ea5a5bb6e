"""The sparse engine: invariants after any number of updates, exact resume,
each stage against an independent computation, and clear errors."""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from chsnn import ch_scores
from chsnn.sparse import KERNEL, LINEAR, ConfigError, EngineConfig, SparseEngine, find_targets

SPARSE_METHODS = ["static", "set", "rigl", "mest", "cht", "chts", "chsnn"]


def mlp(seed=0, sizes=(12, 24, 24, 5)):
    torch.manual_seed(seed)
    layers = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batches(n, seed=0, size=16, features=12, classes=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, features, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def make(method="chsnn", sparsity=0.8, opt="adam", seed=0, model=None, **options):
    model = model or mlp(seed)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), 1e-2, fused=opt == "adam-fused")
    cfg = {"method": method, "sparsity": sparsity, "update_interval": 2, "early_stop": False, **options}
    engine = SparseEngine(model, optimizer, cfg, calibration=batches(1, seed=99))
    return model, optimizer, engine


def assert_masked(engine, optimizer):
    for t in engine.targets:
        off = ~engine.mask(t.name)
        assert torch.all(t.weight[off] == 0), f"{t.name}: weight not zero at pruned positions"
        for key, value in optimizer.state.get(t.weight, {}).items():
            if isinstance(value, torch.Tensor) and value.shape == t.weight.shape:
                assert torch.all(value[off] == 0), f"{t.name}: optimizer {key} not zero at pruned positions"


# Discovery -------------------------------------------------------------------


def test_finds_linear_1x1_and_kernel_layers_and_keeps_output_dense():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv1d(8, 4, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Linear(16, 4), nn.Linear(4, 2)
    )
    targets, dense = find_targets(model)
    kinds = {t.name: (t.kind, t.n_out, t.n_in) for t in targets}
    assert kinds == {"0": (KERNEL, 8, 27), "1": (LINEAR, 8, 8), "2": (LINEAR, 4, 8), "4": (LINEAR, 4, 16)}
    assert dense == "5"  # the classifier; the depthwise conv is not sparsifiable
    targets, dense = find_targets(model, sparsify_output=True)
    assert dense is None and targets[-1].name == "5"
    names = [t.name for t in find_targets(model, include=["Conv2d"])[0]]
    assert names == ["0", "1"]
    names = [t.name for t in find_targets(model, exclude=["0", "Conv1d"])[0]]
    assert names == ["1", "4"]


def test_spikingjelly_and_snntorch_layers_are_found():
    from spikingjelly.activation_based import layer, neuron

    sj = nn.Sequential(
        layer.Conv2d(2, 4, 3), neuron.LIFNode(), layer.Flatten(), layer.Linear(4 * 6 * 6, 10), neuron.LIFNode(), layer.Linear(10, 3)
    )
    targets, dense = find_targets(sj)
    assert [(t.name, t.kind) for t in targets] == [("0", KERNEL), ("3", LINEAR)] and dense == "5"


# Errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"method": "magic"}, "valid methods are dense, static, set, rigl, mest, cht, chts, chsnn"),
        ({"sparsityy": 0.9}, "unknown engine option.*sparsityy.*allowed options"),
        ({"regrowth": "CH4"}, "regrowth.*valid values"),
        ({"zeta_schedule": "cosine"}, "total_steps"),
        ({"density_schedule": "sigmoid", "total_steps": 10}, "initial_density"),
        ({"chain": [["1", "9"]]}, "chain pair"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(ConfigError, match=message):
        SparseEngine(mlp(), None, {"method": "set", "sparsity": 0.8, **options})


def test_no_sparsifiable_layer():
    with pytest.raises(ConfigError, match="no sparsifiable layer"):
        SparseEngine(nn.Sequential(nn.ReLU()), None, "set")
    with pytest.raises(ConfigError, match="only such layer is the output layer"):
        SparseEngine(nn.Sequential(nn.Linear(4, 2)), None, "set")


def test_calibration_errors():
    with pytest.raises(ConfigError, match="yielded no batch"):
        SparseEngine(mlp(), None, "chsnn", calibration=[])
    with pytest.raises(ConfigError, match="needs calibration batches"):
        SparseEngine(mlp(), None, "chsnn")


def test_impossible_sparsity_is_named():
    with pytest.raises(ConfigError, match="no link"):
        SparseEngine(mlp(sizes=(4, 3, 2)), None, {"method": "set", "sparsity": 0.97})


def test_second_engine_on_same_model():
    model = mlp()
    SparseEngine(model, None, {"method": "set", "sparsity": 0.5})
    with pytest.raises(ConfigError, match="already has a weight_mask"):
        SparseEngine(model, None, {"method": "set", "sparsity": 0.5})


# Invariants --------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(SPARSE_METHODS),
    sparsity=st.sampled_from([0.5, 0.8, 0.95]),
    zeta=st.sampled_from([0.1, 0.3, 0.6]),
    opt=st.sampled_from(["adam", "adam-fused", "sgd"]),
    seed=st.integers(0, 1000),
)
def test_invariants_after_every_update(method, sparsity, zeta, opt, seed):
    model, optimizer, engine = make(method, sparsity, opt, seed, zeta=zeta, update_interval=1)
    targets = {t.name: engine.target_links(t, 1 - sparsity) for t in engine.targets}
    allow = engine.config.regrow_removed
    for x, y in batches(6, seed=seed):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert_masked(engine, optimizer)
        for t in engine.targets:
            mask2d = t.as_2d(engine.mask(t.name))
            assert int(mask2d.sum()) == targets[t.name], "density drifted from the target"
            if method == "static":
                continue
            ch = engine.last_changes[t.name]
            before, removed, regrown = ch["before"], ch["removed"], ch["regrown"]
            assert not torch.any(removed & ~before), "removed a link that did not exist"
            assert not torch.any(regrown & before & ~removed), "regrew a link that already existed"
            if not allow:
                assert not torch.any(regrown & removed), "regrew a link removed in the same update"
            assert torch.equal(mask2d, (before & ~removed) | regrown)
            assert torch.all(t.as_2d(t.weight.detach())[regrown & ~removed] == 0), "new links must start at 0"
    assert engine.n_updates == (0 if method == "static" else 6)


def test_gradients_are_masked_after_backward_and_again_before_the_step():
    model, optimizer, engine = make("set", 0.8, opt="sgd")
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    for t in engine.targets:  # what gradient clipping or a logger reads before the step
        assert torch.all(t.weight.grad[~engine.mask(t.name)] == 0)
    engine.targets[0].weight.grad.fill_(1.0)  # a gradient written after backward
    optimizer.step()
    assert_masked(engine, optimizer)


def test_kernel_layers_keep_equal_counts_per_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 4)
    )
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    for method in ("set", "cht"):
        for m in model.modules():
            if hasattr(m, "weight_mask"):
                del m.weight_mask
        engine = SparseEngine(model, opt, {"method": method, "sparsity": 0.5, "update_interval": 1}, calibration=[torch.rand(4, 3, 8, 8)])
        for _ in range(3):
            opt.zero_grad()
            model(torch.rand(4, 3, 8, 8)).sum().backward()
            opt.step()
        engine.remove() if method == "set" else None
        assert engine.n_updates == 3
    for s in engine.stats():
        assert s["kernel_active_min"] == s["kernel_active_max"] == 4  # round(0.5 * 9)
    assert_masked(engine, opt)


# Stages against independent computations ----------------------------------------


def assert_top(scores, candidates, chosen):
    assert chosen.sum() > 0
    assert torch.all(candidates[chosen])
    rest = candidates & ~chosen
    assert scores[chosen].min() >= scores[rest].max()


def test_ch3_regrowth_takes_the_top_scores():
    model, opt, engine = make("cht", 0.7, update_interval=1)
    train(model, opt, batches(1))
    assert engine.n_updates == 1
    for t in engine.targets:
        ch = engine.last_changes[t.name]
        after = ch["before"] & ~ch["removed"]
        scores = ch_scores(after, "CH3")
        assert (scores[ch["regrown"]] > 0).all()
        assert_top(scores, ~after, ch["regrown"])  # cht regrows among every absent position


def test_rigl_regrowth_takes_the_largest_dense_gradients():
    model, opt, engine = make("rigl", 0.7, update_interval=3, rigl_accumulation=2)
    dense = {t.name: [] for t in engine.targets}  # each backward's gradient, before any masking
    for t in engine.targets:
        t.weight.register_hook(lambda g, name=t.name: dense[name].append(g.detach().clone()))
    train(model, opt, batches(3))
    assert engine.n_updates == 1
    for t in engine.targets:
        acc = t.as_2d(torch.zeros_like(t.weight) + dense[t.name][1] + dense[t.name][2]).abs()  # the 2 steps before the update
        assert acc.sum() > 0
        ch = engine.last_changes[t.name]
        assert_top(acc, ~ch["before"], ch["regrown"])  # rigl: not the links it just removed


def test_magnitude_removal_removes_the_smallest():
    model, opt, engine = make("set", 0.6, update_interval=0)
    train(model, opt, batches(2))
    weights = {t.name: t.as_2d(t.weight.detach()).abs().clone() for t in engine.targets}
    engine.update_topology()
    for t in engine.targets:
        ch = engine.last_changes[t.name]
        w = weights[t.name]
        kept = ch["before"] & ~ch["removed"]
        assert w[ch["removed"]].max() <= w[kept].min()
        assert int(ch["removed"].sum()) == round(0.3 * int(ch["before"].sum()))


def test_lrs_removes_links_of_inactive_inputs_first():
    torch.manual_seed(0)
    model = mlp()
    calib = torch.rand(32, 12)
    calib[:, :3] = 0  # inputs 0-2 never fire in the calibration window
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    engine = SparseEngine(
        model, opt, {"method": "chsnn", "sparsity": 0.5, "update_interval": 0, "init": "random", "zeta": 0.5}, calibration=[calib]
    )
    engine.update_topology()
    ch = engine.last_changes["1"]
    dead = ch["before"][:, :3]
    assert dead.sum() > 0 and torch.all(ch["removed"][:, :3][dead])


def test_chain_removal_cuts_dead_hidden_neurons():
    torch.manual_seed(0)
    model = mlp(sizes=(12, 24, 24, 5))
    opt = torch.optim.SGD(model.parameters(), 0.0)
    options = {"method": "chsnn", "sparsity": 0.7, "update_interval": 0, "init": "random", "removal": "magnitude", "zeta": 0.1}
    engine = SparseEngine(model, opt, options, calibration=[torch.rand(8, 12)])
    first = engine.by_name["1"]
    m1 = engine.mask("1")
    degree = m1.sum(1).masked_fill(m1.sum(1) == 0, 99)
    h = int(degree.argmin())  # the hidden neuron with the fewest incoming links
    assert int(degree[h]) <= round(0.1 * int(m1.sum()))
    with torch.no_grad():  # hidden neuron h: every incoming link tiny, so all of them go
        first.weight[h][m1[h]] = 1e-9
        for other in range(24):
            if other != h:
                first.weight[other][m1[other]] += 1.0
    record = engine.update_topology()
    assert torch.all(engine.last_changes["1"]["removed"][h][m1[h]])
    out_links = engine.last_changes["3"]["before"][:, h]
    assert out_links.any()
    assert torch.all(engine.last_changes["3"]["removed"][:, h][out_links])
    assert {layer["name"]: layer["chain_removed"] for layer in record["layers"]}["3"] >= 1


def test_sscti_keeps_the_links_most_correlated_with_each_anchor():
    torch.manual_seed(0)
    model = mlp()
    calib = torch.rand(64, 12)
    calib[:, 5] = calib[:, 2] * 0.9 + 0.1 * torch.rand(64)  # a strongly correlated pair
    engine = SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.75, "weight_init": "kaiming"}, calibration=[calib])
    corr = np.abs(np.corrcoef(calib.numpy().T))
    np.fill_diagonal(corr, 0)
    scores = torch.from_numpy(corr[np.arange(24) % 12])
    mask = engine.mask("1")
    assert_top(scores, torch.ones_like(mask), mask)
    assert mask[2, 5] and mask[5, 2]


def test_swi_and_sswi_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 2))
    SparseEngine(model, None, {"method": "cht", "sparsity": 0.9}, calibration=[torch.rand(64, 400)])
    w = model[0].weight.detach()
    std = w[w != 0].std().item()
    assert std == pytest.approx(np.sqrt(2.0 / (0.1 * 400)), rel=0.05)
    # SSWI: variance over each neuron's effective active inputs (in-degree x E[a^2])
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 2))
    x = (torch.rand(256, 400) < 0.2).float()  # spikes at rate 0.2: E[a^2] = 0.2
    SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.9}, calibration=[x])
    w = model[0].weight.detach()
    std = w[w != 0].std().item()
    assert std == pytest.approx(np.sqrt(2.0 / (40 * 0.2)), rel=0.08)
    # SSWI with the layer's mean rate: the same here, where every input fires at 0.2
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 2))
    SparseEngine(model, None, {"method": "chsnn", "sparsity": 0.9, "weight_init": "sswi_layer"}, calibration=[x])
    w = model[0].weight.detach()
    assert w[w != 0].std().item() == pytest.approx(np.sqrt(2.0 / (40 * 0.2)), rel=0.08)


def test_soft_methods_and_mest_run(monkeypatch):
    for method in ("chts", "mest"):
        model, opt, engine = make(method, 0.8, update_interval=2, total_steps=6, end_fraction=1.0)
        train(model, opt, batches(6))
        assert engine.n_updates == 3
        assert_masked(engine, opt)


# Schedules ------------------------------------------------------------------------


def test_cosine_zeta_and_sigmoid_density_follow_their_schedules():
    model, opt, engine = make(
        "set",
        0.9,
        update_interval=2,
        zeta_schedule="cosine",
        total_steps=12,
        end_fraction=1.0,
        density_schedule="sigmoid",
        initial_density=0.5,
    )
    cfg = engine.config
    assert cfg.density_at(0) == 0.5 and cfg.density_at(12) == pytest.approx(0.1)
    first = engine.targets[0]
    assert int(engine.mask(first.name).sum()) == engine.target_links(first, 0.5)
    for i, batch in enumerate(batches(12)):
        train(model, opt, [batch])
        step = i + 1
        for t in engine.targets:
            assert int(engine.mask(t.name).sum()) == engine.target_links(
                t, cfg.density_at(step) if step % 2 == 0 else cfg.density_at(step - step % 2)
            )
    zetas = [r["zeta"] for r in engine.records]
    assert zetas == sorted(zetas, reverse=True) and zetas[-1] == pytest.approx(0.0, abs=1e-12)


def test_early_stop_freezes_converged_layers():
    model, opt, engine = make("cht", 0.8, update_interval=1, early_stop=True, early_stop_overlap=0.5)
    train(model, opt, batches(8))
    assert engine.frozen, "CH regrowth of fresh zero-weight links should converge"
    frozen = sorted(engine.frozen)
    masks = {n: engine.mask(n).clone() for n in frozen}
    train(model, opt, batches(3, seed=5))
    for n in frozen:
        assert torch.equal(masks[n], engine.mask(n))
    assert any(layer["frozen"] for r in engine.records for layer in r["layers"])


# Resume -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [("set", {}), ("rigl", {"rigl_accumulation": 2}), ("chts", {"total_steps": 12}), ("chsnn", {"hebb": {"lr": 1e-3}}), ("mest", {})],
)
def test_resume_is_bit_identical(method, options):
    data = batches(12, seed=3)
    model, opt, engine = make(method, 0.8, update_interval=3, **options)
    train(model, opt, data[:7])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "engine": engine.state_dict()}, buf)
    train(model, opt, data[7:])

    model2, opt2, engine2 = make(method, 0.8, update_interval=3, seed=1234, **options)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    engine2.load_state_dict(ckpt["engine"])
    train(model2, opt2, data[7:])
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    strip = lambda records: [{**r, "ms": 0, "layers": [{**layer, "ms": 0} for layer in r["layers"]]} for r in records]  # noqa: E731
    assert strip(engine.records) == strip(engine2.records)


# Learning rule, compile, frameworks ------------------------------------------------


def test_hebb_set_adds_the_hebbian_term():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 4))
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    engine = SparseEngine(
        layer,
        opt,
        {"method": "set", "sparsity": 0.5, "update_interval": 0, "sparsify_output": True, "hebb": {"lr": 0.1, "decay": 1.0, "window": 1}},
    )
    xs = [torch.rand(5, 6) for _ in range(2)]
    w0 = layer[0].weight.detach().clone()
    for x in xs:
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    post1 = (xs[0] @ w0.T + layer[0].bias).mean(0).double()
    post2 = (xs[1] @ w0.T + layer[0].bias).mean(0).double()
    expected = w0.double() + 0.1 * torch.outer(post2 - post1, xs[1].mean(0).double()) * engine.mask("0")
    torch.testing.assert_close(layer[0].weight.detach().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_masks_hold_under_torch_compile_without_recompiles(backend):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, opt, engine = make("chsnn", 0.8, update_interval=2)
    compiled = torch.compile(model, backend=backend)
    for x, y in batches(6):
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
        assert_masked(engine, opt)
    assert engine.n_updates == 3
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, "a topology update forced a recompile"


def test_spiking_models_train_with_chsnn():
    import snntorch as snn
    from snntorch import utils as snn_utils
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    sj = nn.Sequential(
        layer.Linear(12, 32, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
        layer.Linear(32, 32, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
        layer.Linear(32, 5, step_mode="m"),
    )
    st = nn.Sequential(
        nn.Linear(12, 32), snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(32, 32), snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(32, 5)
    )
    for model, reset in ((sj, functional.reset_net), (st, snn_utils.reset)):
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        spikes = (torch.rand(4, 8, 12) < 0.3).float()  # (time, batch, features)
        engine = SparseEngine(model, opt, {"method": "chsnn", "sparsity": 0.8, "update_interval": 2}, calibration=[spikes])
        for _ in range(4):
            x = (torch.rand(4, 16, 12) < 0.3).float()  # another batch size than calibration
            opt.zero_grad()
            out = model(x) if model is sj else torch.stack([model(x[t]) for t in range(4)])
            out.mean(0).sum().backward()
            opt.step()
            reset(model)
        assert engine.n_updates == 2
        assert_masked(engine, opt)
        assert engine.sparsity() == pytest.approx(0.8, abs=1e-3)


def test_dense_method_attaches_nothing():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    engine = SparseEngine(model, opt, "dense")
    train(model, opt, batches(2))
    assert engine.step_count == 2 and engine.sparsity() == 0.0 and not hasattr(model[1], "weight_mask")


def test_config_round_trip_and_records():
    model, opt, engine = make("chsnn", 0.8, update_interval=2)
    train(model, opt, batches(4))
    assert EngineConfig.from_dict(engine.state_dict()["config"]) == engine.config
    rec = engine.records[-1]
    assert {"step", "update", "zeta", "density", "layers", "percolation", "ms"} <= set(rec)
    assert {"name", "links", "density", "removed", "regrown", "overlap", "active_in", "active_out", "chain_removed", "ms"} <= set(
        rec["layers"][0]
    )
    assert 0 < rec["percolation"] <= 1


def test_strategies_are_chosen_by_name_from_registries():
    from chsnn.sparse import strategies

    @strategies.register_removal("test_reverse_magnitude")
    def reverse(ctx):  # remove the largest links first
        return -ctx.links.magnitude

    try:
        model, opt, engine = make("set", 0.6, update_interval=0, removal="test_reverse_magnitude")
        train(model, opt, batches(2))
        weights = {t.name: t.as_2d(t.weight.detach()).abs().clone() for t in engine.targets}
        engine.update_topology()
        for t in engine.targets:
            ch = engine.last_changes[t.name]
            kept = ch["before"] & ~ch["removed"]
            assert weights[t.name][ch["removed"]].min() >= weights[t.name][kept].max()
    finally:
        del strategies.REMOVALS["test_reverse_magnitude"]
    with pytest.raises(ConfigError, match="removal.*valid values are magnitude, mest, ri, lrs, soft"):
        make("set", removal="test_reverse_magnitude")


@pytest.mark.parametrize("seed", range(8))
def test_row_groups_never_left_empty_by_regrowth(seed):
    """Attention heads: every (head, q|k|v) row block keeps a link."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), 0.05)
    groups = {"0": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]}
    engine = SparseEngine(
        model, opt, {"method": "set", "sparsity": 0.95, "zeta": 1.0, "update_interval": 1, "seed": seed}, row_groups=groups
    )
    for x in torch.rand(6, 4, 16):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        groups_now = engine.active_groups()["0"]
        assert (groups_now["active"], groups_now["total"]) == (6, 6) and all(groups_now["alive"])
        assert int(engine.mask("0").sum()) == engine.target_links(engine.by_name["0"], 0.05)
    with pytest.raises(ConfigError, match="row_groups"):
        SparseEngine(mlp(), None, {"method": "set", "sparsity": 0.5}, row_groups={"1": [[99]]})
