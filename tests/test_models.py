"""The model zoo: the forward convention (time-major input, reset, mean
readout), surrogate gradients, binary spikes, the snnTorch backend against
SpikingJelly, a tiny training run, sizing, the registry and its errors."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from chsnn.models import MODELS, build_model, model_defaults, neuron_backend, register_model, registry
from chsnn.models.cnn import pool_plan

# Input shapes each model is checked on (models registered later fall back to DEFAULT_SHAPES).
SHAPES = {
    "snn-mlp": [(2, 24, 24), (20,), (1, 8, 8)],
    "snn-cnn": [(1, 8, 8), (2, 24, 24), (2, 34, 34), (3, 32, 32), (2, 128, 128)],
}
DEFAULT_SHAPES = [(2, 24, 24), (1, 8, 8)]
# Small sizes keep every test fast.
SMALL = {"snn-mlp": dict(hidden=[48, 32]), "snn-cnn": dict(channels=[8, 16], hidden=32)}
CASES = [(name, shape, {}) for name in sorted(MODELS) for shape in SHAPES.get(name, DEFAULT_SHAPES)]
CASES += [("snn-mlp", shape, {"backend": "snntorch"}) for shape in SHAPES["snn-mlp"][:2]]
CASES += [("snn-mlp", (20,), {"surrogate": "sigmoid", "tau": 4.0}), ("snn-cnn", (2, 24, 24), {"pool": "avg", "surrogate": "sigmoid"})]
BACKENDS = ["spikingjelly", "snntorch"]


def spikes_in(shape, t=4, n=3, rate=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(t, n, *shape, generator=g) < rate).float()


def model_input(model, n, seed=0, t=4):
    if model.spiking:
        return spikes_in(model.input_shape, t=t, n=n, seed=seed)
    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))


def first_layer(model):
    return next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def neurons(model):
    """The spiking neuron modules of either framework."""
    from snntorch import Leaky
    from spikingjelly.activation_based import neuron

    return [m for m in model.modules() if isinstance(m, (neuron.BaseNode, Leaky))]


def build(name, shape, n_classes=5, **options):
    torch.manual_seed(0)
    return build_model(name, shape, n_classes, time_steps=4, **{**SMALL.get(name, {}), **options})


@pytest.fixture
def scratch_registry():
    """Lets a test register models and removes them afterwards."""
    models, entries = dict(MODELS), dict(registry._ENTRIES)
    yield
    MODELS.clear()
    MODELS.update(models)
    registry._ENTRIES.clear()
    registry._ENTRIES.update(entries)


# The forward convention -------------------------------------------------------------


@pytest.mark.parametrize("name,shape,options", CASES)
def test_every_model_builds_and_follows_the_forward_convention(name, shape, options):
    model = build(name, shape, n_classes=7, **options)
    assert model.input_shape == shape and model.n_classes == 7 and model.model_name == name
    assert model.time_steps == (4 if model.spiking else None)
    x3, x5 = model_input(model, 3, seed=1), model_input(model, 5, seed=2)
    first = model(x3)
    assert first.shape == (3, 7) and torch.isfinite(first).all()
    assert model(x5).shape == (5, 7)  # another batch size right after: states were reset
    again = model(x3)
    assert torch.equal(first, again), "the same input gave different outputs: neuron states leaked between calls"
    layer = first_layer(model)
    model.zero_grad()
    model(x5).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, "no (surrogate) gradient reached the first layer"


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_resets_states_left_by_anyone(backend):
    model = build("snn-mlp", (20,), backend=backend, v_threshold=0.3)
    x = spikes_in((20,), n=6, rate=0.6)
    clean = model(x)
    for node in neurons(model):  # leave a potential just under the threshold behind
        if hasattr(node, "mem"):
            node.mem = torch.full((6, node_width(model, node)), 0.29)
        else:
            node.v = 0.29
    assert torch.equal(model(x), clean)


def node_width(model, node):
    return next(getattr(model, f"fc{i}").out_features for i in range(model.depth) if getattr(model, f"lif{i}") is node)


def test_readout_is_the_time_average_of_the_output_layer():
    model = build("snn-mlp", (20,))
    x = spikes_in((20,), t=6, n=4)
    steps = model.forward_steps(x)
    assert steps.shape == (6, 4, 5)
    torch.testing.assert_close(model(x), steps.mean(0))
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o))
    model(x)
    torch.testing.assert_close(model(x), seen[0].mean(0))  # no neuron after the readout


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_holds_no_graph_after_forward(name):
    model = build(name, SHAPES.get(name, DEFAULT_SHAPES)[0])
    x = model_input(model, 2)
    model(x).sum().backward()
    on_graph = [f"{layer}.{key}" for layer, module in model.named_modules() for key, t in held_tensors(module) if t.grad_fn is not None]
    assert on_graph == [], "states still on the autograd graph (they keep it alive and break deepcopy)"
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), model(x))  # the copy computes what the original does


def held_tensors(module):
    """(name, tensor) a module keeps between calls: its tensor attributes, and
    tensors in dict attributes (where SpikingJelly keeps neuron states)."""
    for key, value in vars(module).items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        yield from ((k, v) for k, v in items if isinstance(v, torch.Tensor))


def test_time_major_input_is_checked():
    model = build("snn-cnn", (2, 24, 24))
    with pytest.raises(ValueError, match=r"time-major input \(T, N, 2, 24, 24\)"):
        model(torch.zeros(3, 2, 24, 24))
    with pytest.raises(ValueError, match="time-major"):
        model(torch.zeros(4, 3, 2, 24, 25))


# Spikes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,backend", [("snn-mlp", "spikingjelly"), ("snn-mlp", "snntorch"), ("snn-cnn", None)])
def test_neuron_outputs_are_binary_spikes(name, backend):
    options = {"backend": backend} if backend else {}
    shape = (2, 24, 24)
    model = build(name, shape, v_threshold=0.5, **options)
    outputs = []
    for node in neurons(model):
        node.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    model(spikes_in(shape, rate=0.8))
    assert outputs, "no spiking neuron ran"
    values = torch.cat([o.flatten() for o in outputs])
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    assert values.sum() > 0, "no neuron fired: the test input is too weak to check anything"


# snnTorch backend --------------------------------------------------------------------


def test_snntorch_backend_trains_a_step():
    model = build("snn-mlp", (2, 24, 24), backend="snntorch")
    assert type(model).__name__ == "SnnTorchMLP" and model.spiking
    x, y = spikes_in((2, 24, 24), n=8), torch.arange(8) % 5
    assert model(x).shape == (8, 5) and model(x[:, :3]).shape == (3, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.fc0.weight.detach().clone()
    loss0 = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss0.backward()
    assert model.fc0.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(model.fc0.weight, before)
    assert F.cross_entropy(model(x), y) < loss0


def test_snntorch_and_spikingjelly_backends_compute_the_same_network():
    """Same weights -> same spikes and logits, same gradients (float64)."""
    options = dict(hidden=[32, 16], surrogate="sigmoid", tau=3.0)
    sj = build_model("snn-mlp", (20,), 3, 8, **options).double()
    st = build_model("snn-mlp", (20,), 3, 8, backend="snntorch", **options).double()
    pairs = [(sj.hidden[0], st.fc0), (sj.hidden[2], st.fc1), (sj.head, st.head)]
    with torch.no_grad():
        for a, _b in pairs[:2]:
            a.weight.mul_(6)  # strong enough to fire often
        for a, b in pairs:
            b.load_state_dict(a.state_dict())
    x = spikes_in((20,), t=8, n=16, rate=0.5).double()
    sj_spikes, st_spikes = [], []
    sj.hidden[1].register_forward_hook(lambda m, i, o: sj_spikes.append(o))
    st.lif0.register_forward_hook(lambda m, i, o: st_spikes.append(o))
    out_sj, out_st = sj(x), st(x)
    assert 0.05 < sj_spikes[0].mean() < 0.95
    assert torch.equal(sj_spikes[0], torch.stack(st_spikes))
    torch.testing.assert_close(out_sj, out_st)
    out_sj.square().sum().backward()
    out_st.square().sum().backward()
    for a, b in pairs:
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_is_shared_by_the_time_steps(backend):
    model = build("snn-mlp", (20,), backend=backend, hidden=[64], dropout=0.5, v_threshold=0.2)
    x = spikes_in((20,), t=6, n=4, rate=0.7)
    outputs = []
    model.head.register_forward_pre_hook(lambda m, a: outputs.append(a[0].detach()))

    def readout_input(train):
        outputs.clear()
        model.train(train)
        model(x)
        return torch.stack(outputs) if backend == "snntorch" else outputs[0]  # (T, N, 64)

    plain, dropped = readout_input(False), readout_input(True)
    kept = (dropped == 2 * plain).all(0)  # kept spikes are scaled by 1 / (1 - p) ...
    off = (dropped == 0).all(0)  # ... dropped units are silent at every step
    assert (kept | off).all()
    active = plain.sum(0) > 0
    assert 0.2 < (off & active).sum() / active.sum() < 0.8


# Training -------------------------------------------------------------------------


def rate_task(n=64, features=16, t=8, seed=0):
    """Two classes: the first or the second half of the inputs fires fast."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    fast = torch.zeros(n, features, dtype=torch.bool)
    fast[:, : features // 2] = (y == 0)[:, None]
    fast[:, features // 2 :] = (y == 1)[:, None]
    rate = torch.where(fast, 0.6, 0.1)
    return (torch.rand(t, n, features, generator=g) < rate).float(), y


@pytest.mark.parametrize("backend", BACKENDS)
def test_snn_mlp_learns_a_rate_coded_task(backend):
    x, y = rate_task()
    torch.manual_seed(0)
    model = build_model("snn-mlp", (16,), 2, time_steps=8, hidden=[32], backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.9


# Sizing ---------------------------------------------------------------------------


def test_default_sizes():
    mlp = build_model("snn-mlp", (2, 24, 24), 10, time_steps=8)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [512, 512, 10]
    assert sum(p.numel() for p in mlp.parameters()) == 1152 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert mlp.options == model_defaults("snn-mlp") | {"hidden": [512, 512]}
    cnn = build_model("snn-cnn", (2, 24, 24), 10, time_steps=8)
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)] == [32, 64]
    assert cnn.feature_shape == (64, 6, 6) and cnn.fc.out_features == 256
    big = build_model("snn-cnn", (3, 32, 32), 10)
    assert [m.out_channels for m in big.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 128]


@pytest.mark.parametrize(
    "shape,features", [((1, 8, 8), (64, 2, 2)), ((2, 34, 34), (128, 4, 4)), ((2, 128, 128), (128, 4, 4)), ((2, 128, 64), (128, 4, 4))]
)
def test_cnn_pools_large_inputs_down_to_a_small_linear(shape, features):
    model = build_model("snn-cnn", shape, 10)
    assert model.feature_shape == features
    assert model.fc.in_features == features[0] * features[1] * features[2]


def test_pool_plan():
    assert pool_plan(24, 2) == ([2, 2], 6)
    assert pool_plan(128, 3) == ([4, 4, 2], 4)
    assert pool_plan(3, 3) == ([2, 1, 1], 1)
    assert pool_plan(1, 2) == ([1, 1], 1)
    assert pool_plan(1024, 2)[1] > 6  # the model adds an adaptive pool then
    model = build_model("snn-cnn", (1, 200, 200), 3, channels=[4])
    assert model.feature_shape == (4, 6, 6)
    assert model(spikes_in((1, 200, 200), t=1, n=1)).shape == (1, 3)


def test_rebuild_from_attributes():
    model = build_model("snn-cnn", (2, 34, 34), 11, time_steps=5, hidden=64, surrogate="sigmoid")
    twin = build_model(model.model_name, model.input_shape, model.n_classes, model.time_steps, **model.options)
    assert twin.state_dict().keys() == model.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(twin.state_dict().values(), model.state_dict().values()))


# Neuron kernels and the sparse engine ----------------------------------------------------


def test_neuron_backend_is_torch_on_cpu():
    assert neuron_backend("cpu") == "torch"
    assert neuron_backend(torch.device("cpu")) == "torch"
    assert neuron_backend() in ("torch", "cupy", "triton", "auto")
    if not torch.cuda.is_available():
        assert neuron_backend() == "torch" and neuron_backend("cuda") == "torch"
    model = build("snn-mlp", (20,))
    model(spikes_in((20,)))
    assert model.neuron_backend == "torch"


def test_neuron_backend_choice_on_a_cuda_machine(monkeypatch):
    """The helper's decisions, with CUDA and the kernel packages faked."""
    from chsnn.models import base

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(base, "lif_takes_backend", lambda: True)
    monkeypatch.setattr(base, "_lif_supported_backends", lambda: ("torch", "cupy", "triton"))
    monkeypatch.setattr(base, "_importable", lambda name: name == "triton")
    assert neuron_backend("cuda") == "triton" and neuron_backend() == "triton"
    assert neuron_backend("cpu") == "torch"
    monkeypatch.setattr(base, "_importable", lambda name: True)
    assert neuron_backend("cuda:0") == "cupy"
    monkeypatch.setattr(base, "_lif_supported_backends", lambda: ("torch",))
    assert neuron_backend("cuda") == "torch"  # this SpikingJelly has no GPU kernel for LIF
    monkeypatch.setattr(base, "lif_takes_backend", lambda: False)
    assert neuron_backend("cuda") == "auto"  # SpikingJelly 2: it picks its own kernels


def test_model_sets_the_lif_backend_on_spikingjelly_releases_that_take_one(monkeypatch):
    from chsnn.models import base

    model = build("snn-cnn", (1, 8, 8))
    lifs = [m for m in neurons(model)]
    for node in lifs:  # what an older SpikingJelly's LIFNode carries
        node.backend = "torch"
    model._lif_takes_backend, model._backend_device = True, None
    calls = []
    monkeypatch.setattr(base, "neuron_backend", lambda device: calls.append(device) or "cupy")
    model.sync_neuron_backend(torch.device("cpu"))
    model.sync_neuron_backend(torch.device("cpu"))
    assert len(calls) == 1 and model.neuron_backend == "cupy"
    assert len(lifs) == 3 and all(node.backend == "cupy" for node in lifs)


@pytest.mark.parametrize("name,backend", [("snn-mlp", "spikingjelly"), ("snn-mlp", "snntorch"), ("snn-cnn", None)])
def test_sparse_engine_sees_hidden_layers_and_keeps_the_readout_dense(name, backend):
    from chsnn.sparse import SparseEngine, find_targets

    options = {"backend": backend} if backend else {}
    model = build(name, (1, 8, 8), **options)
    targets, output = find_targets(model)
    assert output == "head"
    assert targets[0].module is first_layer(model) and len(targets) == (3 if name == "snn-cnn" else 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = SparseEngine(
        model, opt, {"method": "chsnn", "sparsity": 0.8, "update_interval": 1, "early_stop": False}, calibration=[spikes_in((1, 8, 8), n=4)]
    )
    x, y = spikes_in((1, 8, 8), n=4, seed=3), torch.arange(4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert engine.n_updates >= 1
    for t in engine.targets:
        assert torch.all(t.weight[~engine.mask(t.name)] == 0)


# Registry and errors -----------------------------------------------------------------


def test_registry_lists_the_models():
    assert {"snn-mlp", "snn-cnn"} <= set(MODELS)
    assert all(isinstance(text, str) and text and "\n" not in text for text in MODELS.values())
    assert set(model_defaults("snn-mlp")) == {"hidden", "tau", "v_threshold", "surrogate", "dropout", "backend", "neuron_backend"}


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="unknown model 'snn-mpl'") as info:
        build_model("snn-mpl", (2, 24, 24), 10)
    assert "did you mean 'snn-mlp'" in str(info.value)
    assert all(name in str(info.value) for name in MODELS)


def test_unknown_option_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown option 'hiden' for model 'snn-mlp'") as info:
        build_model("snn-mlp", (2, 24, 24), 10, hiden=[64])
    assert all(option in str(info.value) for option in model_defaults("snn-mlp"))
    with pytest.raises(ValueError, match="allowed options: channels, hidden"):
        build_model("snn-cnn", (2, 24, 24), 10, backend="snntorch")


@pytest.mark.parametrize(
    "name,args,options,message",
    [
        ("snn-mlp", ((2, 24, 24), 0), {}, "n_classes must be a positive integer"),
        ("snn-mlp", ((2, 0, 24), 10), {}, "input_shape must be a tuple of positive integers"),
        ("snn-mlp", ((), 10), {}, "input_shape must have at least one dimension"),
        ("snn-mlp", ((2, 24, 24), 10, 0), {}, "time_steps must be a positive integer"),
        ("snn-mlp", ((20,), 10), {"hidden": 0}, "option hidden must be a positive integer"),
        ("snn-mlp", ((20,), 10), {"hidden": []}, "option hidden must be"),
        ("snn-mlp", ((20,), 10), {"hidden": [64, -1]}, "option hidden must be"),
        ("snn-mlp", ((20,), 10), {"hidden": "512"}, "option hidden must be"),
        ("snn-mlp", ((20,), 10), {"tau": 0.5}, "option tau must be a number > 1"),
        ("snn-mlp", ((20,), 10), {"v_threshold": 0}, "option v_threshold must be a number > 0"),
        ("snn-mlp", ((20,), 10), {"dropout": 1.0}, r"option dropout must be a number >= 0 and < 1"),
        ("snn-mlp", ((20,), 10), {"surrogate": "relu"}, "option surrogate='relu' is not allowed; choose one of: atan, sigmoid"),
        ("snn-mlp", ((20,), 10), {"backend": "norse"}, "choose one of: spikingjelly, snntorch"),
        ("snn-mlp", ((20,), 10), {"neuron_backend": "cuda"}, "choose one of: auto, torch, cupy, triton"),
        ("snn-cnn", ((2, 24, 24), 10), {"channels": [16, 0]}, "option channels must be"),
        ("snn-cnn", ((2, 24, 24), 10), {"hidden": -4}, "option hidden must be a positive integer"),
        ("snn-cnn", ((2, 24, 24), 10), {"pool": "min"}, "choose one of: max, avg"),
        ("snn-cnn", ((576,), 10), {}, r"snn-cnn needs input_shape \(channels, height, width\)"),
    ],
)
def test_bad_sizes_and_options_raise_value_error(name, args, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, *args, **options)


def test_register_model_and_non_spiking_models(scratch_registry):
    @register_model(spiking=False)
    def tiny_ann(input_shape, n_classes, time_steps, *, width=8):
        """A tiny ANN for the registry test.

        More text that is not the description."""
        assert time_steps is None
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, n_classes))

    assert MODELS["tiny-ann"] == "A tiny ANN for the registry test."
    model = build_model("tiny-ann", (6,), 3, time_steps=8, width=4)
    assert model.spiking is False and model.time_steps is None and model.options == {"width": 4}
    assert model(torch.rand(2, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="allowed options: width"):
        build_model("tiny-ann", (6,), 3, depth=2)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny-ann")(tiny_ann)

    @register_model
    def plain_snn(input_shape, n_classes, time_steps):
        return nn.Linear(input_shape[0], n_classes)

    model = build_model("plain-snn", 6, 2, time_steps=3)
    assert model.spiking is True and model.time_steps == 3 and model.input_shape == (6,)
    assert MODELS["plain-snn"] == "plain-snn"  # no docstring: the name
    with pytest.raises(ValueError, match="allowed options: none"):
        build_model("plain-snn", 6, 2, width=3)
