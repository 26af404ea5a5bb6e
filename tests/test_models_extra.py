"""The ANN mlp, vgg16 / snn-vgg16 and spikformer models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from chsnn.models import MODELS, build_model, model_defaults
from chsnn.sparse import find_targets

SMALL_SF = dict(embed_dims=32, num_heads=2, depths=1)


def build(name, shape, n_classes=5, time_steps=2, **options):
    torch.manual_seed(0)
    return build_model(name, shape, n_classes, time_steps, **options)


def model_input(model, n, t=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.spiking:
        return (torch.rand(t, n, *model.input_shape, generator=g) < 0.4).float()
    return torch.rand(n, *model.input_shape, generator=g)


def first_layer(model):
    return next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))


CASES = [
    ("mlp", (1, 28, 28), dict(width=0.05)),
    ("mlp", (20,), dict(width=0.02, depth=2, dropout=0.1)),
    ("vgg16", (3, 32, 32), dict(width=0.125)),
    ("vgg16", (2, 48, 40), dict(width=0.0625)),
    ("snn-vgg16", (3, 32, 32), dict(width=0.125)),
    ("snn-vgg16", (2, 64, 64), dict(width=0.0625)),
    ("spikformer", (3, 32, 32), SMALL_SF),
    ("spikformer", (2, 64, 64), SMALL_SF),
    ("spikformer", (2, 128, 128), SMALL_SF),
]


@pytest.mark.parametrize("name,shape,options", CASES)
def test_builds_and_follows_the_forward_convention(name, shape, options):
    model = build(name, shape, n_classes=7, **options)
    assert model.input_shape == shape and model.n_classes == 7 and model.model_name == name
    assert model.spiking == (name not in ("mlp", "vgg16"))
    assert model.time_steps == (2 if model.spiking else None)
    layers = dict(model.named_modules())
    chains = model.default_engine_options.get("chain", [])
    assert all(n in layers for chain in chains for n in chain) and all(n in layers for n in model.head_groups)  # real layers
    assert bool(model.default_engine_options) == bool(model.head_groups) == (name == "spikformer")  # only attention needs them
    x2, x3 = model_input(model, 2, seed=1), model_input(model, 3, seed=2)
    if "dropout" in options:
        model.eval()
    first = model(x2)
    assert first.shape == (2, 7) and torch.isfinite(first).all()
    assert model(x3).shape == (3, 7)  # another batch size
    assert torch.equal(model(x2), first), "the same input gave different outputs: states leaked between calls"
    model.train()
    layer = first_layer(model)
    model.zero_grad()
    model(x3).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, "no gradient reached the first layer"
    copy.deepcopy(model)  # no state left on the autograd graph
    rebuilt = build_model(name, model.input_shape, model.n_classes, model.time_steps, **model.options)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


def test_registered_with_defaults():
    assert {"mlp", "vgg16", "snn-vgg16", "spikformer"} <= set(MODELS)
    assert model_defaults("mlp") == dict(width=1.0, depth=3, dropout=0.0)
    assert model_defaults("vgg16") == dict(width=1.0)
    assert model_defaults("spikformer") == dict(embed_dims=256, num_heads=8, depths=2, mlp_ratio=4.0, patch_size=None)


def test_mlp_is_the_cht_paper_mlp():
    model = build("mlp", (1, 28, 28), n_classes=10)
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 1568), (1568, 1568), (1568, 1568), (1568, 10)]
    assert [type(m) for m in model.hidden][:2] == [nn.Linear, nn.ReLU]
    assert model.default_engine_options == {} and model.head_groups == {}
    with pytest.raises(ValueError, match=r"input \(N, 1, 28, 28\)"):
        model(torch.zeros(2, 2, 1, 28, 28))


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", ["vgg16", "snn-vgg16"])
def test_vgg16_configuration(name):
    model = build(name, (3, 32, 32), n_classes=10)
    assert [c.out_channels for c in convs(model)] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None and c.groups == 1 for c in convs(model))
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert model.feature_shape == (512, 1, 1) and isinstance(model.pool, nn.Identity)
    assert (model.head.in_features, model.head.out_features) == (512, 10)
    small = build(name, (3, 32, 32), width=0.125)
    assert [c.out_channels for c in convs(small)][-1] == 64
    big = build(name, (2, 128, 128), width=0.125)
    assert big.feature_shape == (64, 4, 4) and not isinstance(big.pool, nn.Identity)
    if name == "snn-vgg16":
        from spikingjelly.activation_based import neuron

        assert sum(isinstance(m, neuron.LIFNode) for m in model.modules()) == 13
    # the sparse engine reads the convs as CHT-Conv kernels and leaves the classifier dense
    targets, output = find_targets(model)
    assert output == "head" and [t.kind for t in targets] == ["kernel"] * 13


# Spikformer ----------------------------------------------------------------------------


def qkv_names(depths):
    return [f"blocks.{i}.attn.qkv_conv_bn.0" for i in range(depths)]


@pytest.mark.parametrize(
    "shape,patch,grid", [((3, 32, 32), 4, (8, 8)), ((2, 128, 128), 16, (8, 8)), ((2, 64, 64), 16, (4, 4)), ((1, 28, 28), 4, (7, 7))]
)
def test_spikformer_patch_size_follows_the_input(shape, patch, grid):
    model = build("spikformer", shape, **SMALL_SF)
    assert model.options["patch_size"] == model.patch_size == patch and model.grid_size == grid
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(model_input(model, 2))
    assert tuple(seen[0][-2:]) == grid


def test_spikformer_wraps_spikingjelly_and_averages_its_output_over_time():
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model.spikformer import Spikformer

    model = build("spikformer", (3, 32, 32), **SMALL_SF)
    x = model_input(model, 2, t=3)
    reference = Spikformer(
        T=3, in_channels=3, img_size_h=32, img_size_w=32, patch_size=4, num_classes=5, embed_dims=32, num_heads=2, mlp_ratio=4.0, depths=1
    )
    reference.load_state_dict(model.state_dict())
    functional.reset_net(reference)
    expected = reference(x)
    assert expected.shape == (3, 2, 5)
    torch.testing.assert_close(model(x), expected.mean(0))


def test_spikformer_engine_targets_are_the_attention_and_mlp_layers():
    model = build("spikformer", (3, 32, 32), embed_dims=32, num_heads=2, depths=2)
    opts = model.default_engine_options
    assert opts["exclude"] == ["patch_embed.*"]
    assert opts["chain"] == [["blocks.0.mlp.fc1.0", "blocks.0.mlp.fc2.0"], ["blocks.1.mlp.fc1.0", "blocks.1.mlp.fc2.0"]]
    targets, output = find_targets(model, exclude=opts["exclude"])
    expected = [
        f"blocks.{i}.{layer}" for i in range(2) for layer in ("attn.qkv_conv_bn.0", "attn.proj_conv_bn.0", "mlp.fc1.0", "mlp.fc2.0")
    ]
    assert [t.name for t in targets] == expected
    assert all(t.kind == "linear" for t in targets)
    assert output == "head"
    shapes = {t.name: (t.n_out, t.n_in) for t in targets}
    assert shapes["blocks.0.attn.qkv_conv_bn.0"] == (96, 32) and shapes["blocks.0.mlp.fc1.0"] == (128, 32)
    names = dict(model.named_modules())
    for chain in opts["chain"]:
        assert all(n in names for n in chain)
    assert set(model.head_groups) == set(qkv_names(2)) and all(n in names for n in model.head_groups)


@pytest.mark.parametrize("embed_dims,num_heads", [(32, 2), (48, 4)])
def test_spikformer_head_groups_partition_the_qkv_rows(embed_dims, num_heads):
    model = build("spikformer", (3, 32, 32), embed_dims=embed_dims, num_heads=num_heads, depths=1)
    groups = model.head_groups["blocks.0.attn.qkv_conv_bn.0"]
    head_dim = embed_dims // num_heads
    assert len(groups) == 3 * num_heads and all(len(g) == head_dim for g in groups)
    rows = sorted(r for g in groups for r in g)
    assert rows == list(range(3 * embed_dims))  # every row in exactly one group
    # documented layout: group s * H + h is rows s * D + h * head_dim + j (s = q, k, v)
    for s in range(3):
        for h in range(num_heads):
            assert groups[s * num_heads + h] == list(range(s * embed_dims + h * head_dim, s * embed_dims + (h + 1) * head_dim))


def test_spikformer_head_groups_match_the_attention_layout():
    """Zeroing one group's rows of the q/k/v weight silences exactly that
    (q|k|v, head) slice of the tensor SpikingJelly's attention kernel gets."""
    model = build("spikformer", (3, 32, 32), embed_dims=32, num_heads=2, depths=1)
    attn = model.blocks[0].attn
    weight = attn.qkv_conv_bn[0].weight
    groups = model.head_groups["blocks.0.attn.qkv_conv_bn.0"]
    seen = []
    kernel = attn._ssa_kernel_torch

    def spy(qkv, scale):  # qkv: (T, N, 3, num_heads, head_dim, L), as the kernel splits it
        seen.append(qkv.detach().clone())
        return kernel(qkv, scale)

    attn._ssa_kernel_torch = spy
    x = model_input(model, 4, t=4)
    with torch.no_grad():
        weight.mul_(4.0)  # more q/k/v spikes, so no slice is silent by chance
        model(x)
    baseline = seen.pop()
    assert baseline.shape[2:5] == (3, 2, 16)
    assert all(baseline[:, :, s, h].any() for s in range(3) for h in range(2))
    original = weight.detach().clone()
    for g, rows in enumerate(groups):
        s, h = divmod(g, 2)
        with torch.no_grad():
            weight.copy_(original)
            weight[rows] = 0
            model(x)
        qkv = seen.pop()
        silent = {(a, b) for a in range(3) for b in range(2) if not qkv[:, :, a, b].any()}
        assert silent == {(s, h)}, f"group {g} silenced {silent}, expected {(s, h)}"


BAD_OPTIONS = [
    ("mlp", (20,), dict(width=0), "width"),
    ("mlp", (20,), dict(width=1e-5), "width"),
    ("mlp", (20,), dict(depth=0), "depth"),
    ("mlp", (20,), dict(dropout=1.0), "dropout"),
    ("mlp", (20,), dict(hidden=10), "hidden"),
    ("vgg16", (3, 32, 32), dict(width=-1.0), "width"),
    ("vgg16", (20,), dict(), "input_shape"),
    ("snn-vgg16", (3, 32, 32), dict(width="big"), "width"),
    ("snn-vgg16", (3, 32, 32), dict(surrogate="relu"), "surrogate"),
    ("spikformer", (3, 32, 32), dict(embed_dims=30, num_heads=4), "num_heads"),
    ("spikformer", (3, 32, 32), dict(embed_dims=4, num_heads=1), "embed_dims"),
    ("spikformer", (3, 32, 32), dict(embed_dims=0), "embed_dims"),
    ("spikformer", (3, 32, 32), dict(depths=0), "depths"),
    ("spikformer", (3, 32, 32), dict(mlp_ratio=0.0), "mlp_ratio"),
    ("spikformer", (3, 32, 32), dict(patch_size=8), "patch_size"),
    ("spikformer", (3, 32, 32), dict(patch=4), "patch"),
    ("spikformer", (32, 32), dict(), "input_shape"),
]


@pytest.mark.parametrize("name,shape,options,word", BAD_OPTIONS)
def test_bad_options_name_the_option(name, shape, options, word):
    with pytest.raises(ValueError, match=word):
        build_model(name, shape, 5, 2, **options)


def test_ann_models_have_no_time_steps_and_spiking_models_check_their_input():
    assert build_model("vgg16", (3, 32, 32), 5, 8, width=0.125).time_steps is None
    model = build("spikformer", (3, 32, 32), **SMALL_SF)
    with pytest.raises(ValueError, match="time-major"):
        model(torch.zeros(2, 3, 32, 32))


def test_parameter_counts_are_the_expected_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build("mlp", (1, 28, 28), n_classes=10)) == 784 * 1568 + 1568 + 2 * (1568 * 1568 + 1568) + 1568 * 10 + 10
    vgg = build("vgg16", (3, 32, 32), n_classes=10)
    assert math.isclose(count(vgg), 14.73e6, rel_tol=0.01)  # VGG16-BN for CIFAR
