"""Energy and synaptic-operation accounting: a hand-checked network, convs
against a brute-force loop, the dense baseline, clean-up, and a real sparse
snn-mlp against the density-weighted expectation."""

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from chsnn.energy import PJ_PER_AC, PJ_PER_MAC, account_energy, sops_ratio_explained


def all_hooks_empty(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


class Tiny(nn.Module):
    """l1 on analog input -> Heaviside (> 0.5) -> l2 on the spikes; time-major (T, N, 3)."""

    spiking = True

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 2, bias=False)
        self.l2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, 0.0]]))
            self.l2.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
        self.l1.register_buffer("weight_mask", torch.tensor([[True, True, False], [False, True, False]]))  # 3 links, input 2 unused
        self.l2.register_buffer("weight_mask", torch.tensor([[True, True], [False, True]]))  # 3 links; fanout: in0 -> 1, in1 -> 2

    def forward(self, x):
        self.spikes = (self.l1(x) > 0.5).float()
        return self.l2(self.spikes).mean(0)


def tiny_input():
    # (T=2, N=2, 3). l1 outputs o0 = x0 - x1, o1 = x1; spike where > 0.5.
    return torch.tensor(
        [
            [[0.9, 0.2, 0.4], [1.5, 0.6, 0.0]],  # t0: sample 0 -> o=(0.7, 0.2) -> [1, 0]; sample 1 -> o=(0.9, 0.6) -> [1, 1]
            [[0.3, 0.8, 0.5], [1.0, 0.7, 0.2]],  # t1: sample 0 -> o=(-0.5, 0.8) -> [0, 1]; sample 1 -> o=(0.3, 0.7) -> [0, 1]
        ]
    )


# 1. Hand-checked ------------------------------------------------------------------


def test_hand_checked_tiny_network():
    model = Tiny()
    x = tiny_input()
    model(x)
    assert model.spikes.tolist() == [[[1, 0], [1, 1]], [[0, 1], [0, 1]]]  # the spikes the arithmetic below assumes

    r = account_energy(model, [x], pj_per_ac=2.0, pj_per_mac=10.0)
    json.dumps(r)
    assert r["n_samples"] == 2 and r["time_steps"] == 2
    assert r["pj_per_ac"] == 2.0 and r["pj_per_mac"] == 10.0
    l1, l2 = r["layers"]
    assert [l1["name"], l2["name"]] == ["l1", "l2"]

    # l1: analog input (0.9, 0.2, ...): 2 steps x 3 links = 6 MACs per sample; dense 2 steps x 6 = 12.
    assert l1 == {
        "name": "l1", "kind": "linear", "shape": [2, 3], "links": 3, "density": 0.5,
        "active_in": 2, "active_out": 2,  # input 2 has no link
        "input": "analog", "firing_rate": None,
        "sops": 0.0, "macs": 6.0, "energy_pj": 60.0,  # 6 MACs x 10 pJ
        "dense_sops": 0.0, "dense_macs": 12.0, "dense_energy_pj": 120.0,  # 12 MACs x 10 pJ
    }  # fmt: skip
    # l2: events per input over both samples and steps: in0 = 2 (s0t0, s1t0), in1 = 3 (s1t0, s0t1, s1t1).
    # SOPs = (2 x fanout 1 + 3 x fanout 2) / 2 samples = 8 / 2 = 4; dense = 5 events x 2 outputs / 2 = 5.
    # Firing rate = 5 events / (2 steps x 2 samples x 2 inputs) = 0.625.
    assert l2 == {
        "name": "l2", "kind": "linear", "shape": [2, 2], "links": 3, "density": 0.75,
        "active_in": 2, "active_out": 2,
        "input": "spikes", "firing_rate": 0.625,
        "sops": 4.0, "macs": 0.0, "energy_pj": 8.0,  # 4 ACs x 2 pJ
        "dense_sops": 5.0, "dense_macs": 0.0, "dense_energy_pj": 10.0,  # 5 ACs x 2 pJ
    }  # fmt: skip
    assert r["totals"] == {"sops": 4.0, "macs": 6.0, "energy_pj": 68.0, "dense_sops": 5.0, "dense_macs": 12.0, "dense_energy_pj": 130.0}

    # The default constants: 0.9 pJ per AC, 4.6 pJ per MAC.
    assert (PJ_PER_AC, PJ_PER_MAC) == (0.9, 4.6)
    d = account_energy(model, [x])
    assert d["pj_per_ac"] == 0.9 and d["pj_per_mac"] == 4.6
    assert d["layers"][0]["energy_pj"] == 6 * 4.6 and d["layers"][1]["energy_pj"] == 4 * 0.9
    assert d["totals"]["energy_pj"] == pytest.approx(6 * 4.6 + 4 * 0.9, rel=1e-12)
    assert d["totals"]["dense_energy_pj"] == pytest.approx(12 * 4.6 + 5 * 0.9, rel=1e-12)

    # Per sample: the same data split into two batches of one sample gives the same numbers.
    split = account_energy(model, [x[:, :1], x[:, 1:]], pj_per_ac=2.0, pj_per_mac=10.0)
    assert split["n_samples"] == 2 and split["layers"] == r["layers"] and split["totals"] == r["totals"]


# 2. Convolutions against a brute-force loop ---------------------------------------


def brute_conv2d(x, mask, stride, padding):
    """(ops counting each input value, ops counting every in-bounds multiply) over (B, C, H, W) inputs."""
    b, c_in, h, w = x.shape
    c_out, _, kh, kw = mask.shape
    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (w + 2 * padding - kw) // stride + 1
    spikes = macs = 0.0
    for n, o, i, j in itertools.product(range(b), range(c_out), range(out_h), range(out_w)):
        for c, a, e in itertools.product(range(c_in), range(kh), range(kw)):
            if not mask[o, c, a, e]:
                continue
            y, z = i * stride - padding + a, j * stride - padding + e
            if 0 <= y < h and 0 <= z < w:
                spikes += float(x[n, c, y, z])
                macs += 1
    return spikes, macs


class ConvNet(nn.Module):
    """conv1 (plain nn.Conv2d, analog input) -> Heaviside -> conv2 (SpikingJelly multi-step) on (T, N, C, H, W)."""

    spiking = True

    def __init__(self, stride, seed):
        super().__init__()
        from spikingjelly.activation_based import layer

        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 3, 3, stride=stride, padding=1, bias=False)
        self.conv2 = layer.Conv2d(3, 4, 3, stride=stride, padding=1, bias=False, step_mode="m")
        for conv in (self.conv1, self.conv2):
            mask = torch.rand(conv.weight.shape, generator=g) < 0.5
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * mask)
            conv.register_buffer("weight_mask", mask)

    def forward(self, x):
        t, n = x.shape[:2]
        h = self.conv1(x.flatten(0, 1))
        self.spikes = (h > 0).float().reshape(t, n, *h.shape[1:])
        return self.conv2(self.spikes).sum((0, 2, 3, 4))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_matches_brute_force(stride):
    torch.manual_seed(stride)
    model = ConvNet(stride, seed=stride)
    x = torch.rand(2, 3, 2, 7, 7)  # (T=2, N=3, C=2, 7x7): odd size so stride 2 reaches the border
    r = account_energy(model, [x], pj_per_ac=1.0, pj_per_mac=1.0)
    c1, c2 = r["layers"]
    assert (c1["kind"], c1["input"], c2["kind"], c2["input"]) == ("conv", "analog", "conv", "spikes")
    assert 0 < c2["firing_rate"] < 1

    _, macs = brute_conv2d(x.flatten(0, 1), model.conv1.weight_mask, stride, 1)
    _, dense_macs = brute_conv2d(x.flatten(0, 1), torch.ones_like(model.conv1.weight_mask), stride, 1)
    assert c1["macs"] == macs / 3 and c1["dense_macs"] == dense_macs / 3 and c1["sops"] == 0.0
    assert c1["links"] == int(model.conv1.weight_mask.sum())

    spikes = model.spikes.flatten(0, 1)
    sops, _ = brute_conv2d(spikes, model.conv2.weight_mask, stride, 1)
    dense_sops, _ = brute_conv2d(spikes, torch.ones_like(model.conv2.weight_mask), stride, 1)
    assert c2["sops"] == sops / 3 and c2["dense_sops"] == dense_sops / 3 and c2["macs"] == 0.0
    assert c2["firing_rate"] == pytest.approx(float(spikes.double().mean()), rel=1e-12)
    m = model.conv2.weight_mask
    assert c2["active_out"] == int(m.flatten(1).any(1).sum()) and c2["active_in"] == int(m.transpose(0, 1).flatten(1).any(1).sum())
    assert r["totals"]["energy_pj"] == c1["macs"] + c2["sops"]


def test_conv1d_matches_brute_force():
    class Net(nn.Module):
        spiking = False

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3, stride=2, padding=1, bias=False)
            self.conv.register_buffer(
                "weight_mask", torch.tensor([[[1, 0, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
            )

        def forward(self, x):
            return self.conv(x)

    x = (torch.rand(4, 2, 9, generator=torch.Generator().manual_seed(0)) < 0.4).float()  # (N, C, L) spikes
    model = Net()
    r = account_energy(model, [x])
    (c,) = r["layers"]
    assert r["n_samples"] == 4 and r["time_steps"] is None and c["input"] == "spikes"
    # as a 2-D conv of height 1 with the same kernel row (no padding along the height)
    x2, m2 = x.unsqueeze(2), model.conv.weight_mask.unsqueeze(2)
    b, c_in, _, length = x2.shape
    sops = dense = 0.0
    for n, o, j, ci, e in itertools.product(range(b), range(3), range((length + 2 - 3) // 2 + 1), range(c_in), range(3)):
        z = j * 2 - 1 + e
        if 0 <= z < length:
            sops += float(x2[n, ci, 0, z]) * bool(m2[o, ci, 0, e])
            dense += float(x2[n, ci, 0, z])
    assert c["sops"] == sops / 4 and c["dense_sops"] == dense / 4
    assert c["links"] == 9 and c["active_out"] == 2 and c["active_in"] == 2


# 3. Dense baseline, clean-up ------------------------------------------------------


def test_all_ones_mask_equals_dense_and_no_mask_counts_as_dense():
    masked = Tiny()
    for layer in (masked.l1, masked.l2):
        layer.weight_mask.fill_(True)
    plain = Tiny()
    del plain.l1.weight_mask, plain.l2.weight_mask
    x = tiny_input()
    a = account_energy(masked, [x])
    b = account_energy(plain, [x])
    assert a == b
    for layer in a["layers"]:
        assert layer["density"] == 1.0 and layer["links"] == layer["shape"][0] * layer["shape"][1]
        for k in ("sops", "macs", "energy_pj"):
            assert layer[k] == layer["dense_" + k]
    assert a["totals"]["energy_pj"] == a["totals"]["dense_energy_pj"]

    convs = ConvNet(2, seed=0)
    for conv in (convs.conv1, convs.conv2):
        conv.weight_mask.fill_(True)
    for layer in account_energy(convs, [torch.rand(2, 2, 2, 6, 6)])["layers"]:
        assert layer["sops"] == layer["dense_sops"] and layer["macs"] == layer["dense_macs"] and layer["density"] == 1.0


def test_hooks_removed_and_modes_restored_even_on_error():
    model = Tiny()
    model.train()
    model.l2.eval()  # a submodule in its own mode keeps it
    x = tiny_input()
    first = account_energy(model, [x])
    second = account_energy(model, [x])
    assert first == second
    assert all_hooks_empty(model)
    assert model.training and model.l1.training and not model.l2.training

    with pytest.raises(ValueError):
        account_energy(model, [x, torch.zeros(2, 2, 5)])  # the second batch has the wrong width
    assert all_hooks_empty(model)
    assert model.training and model.l1.training and not model.l2.training

    with pytest.raises(ValueError, match="no samples"):
        account_energy(model, [])


# 4. A real sparse snn-mlp ---------------------------------------------------------


def snn_mlp(seed):
    from chsnn.models import build_model

    torch.manual_seed(seed)
    return build_model("snn-mlp", (20,), 3, 4, hidden=[32, 24])


def test_sparse_snn_mlp_against_density_weighted_expectation():
    from chsnn.sparse import SparseEngine

    model = snn_mlp(0)
    dense_model = copy.deepcopy(model)
    engine = SparseEngine(model, None, {"method": "set", "sparsity": 0.9, "early_stop": False})
    with torch.no_grad():  # stronger hidden weights so every layer sees spikes (zeros stay zeros)
        for name in ("hidden.0", "hidden.2"):
            model.get_submodule(name).weight.mul_(20)
            dense_model.get_submodule(name).weight.mul_(4)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 5, 20, generator=g) * 3 for _ in range(2)]  # (T=4, N=5, 20) analog input
    hooks_before = {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in model.named_modules()}

    # Record every layer's inputs independently of the module under test.
    seen = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach().clone()))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        model.eval()
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    model.train()

    r = account_energy(model, batches)
    json.dumps(r)
    assert {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in model.named_modules()} == hooks_before
    assert model.training
    assert r["n_samples"] == 10 and r["time_steps"] == 4
    names = [layer["name"] for layer in r["layers"]]
    assert names == ["hidden.0", "hidden.2", "head"]
    first, hidden, head = r["layers"]
    assert first["input"] == "analog" and hidden["input"] == "spikes" and head["input"] == "spikes"
    assert first["density"] == pytest.approx(0.1, abs=0.01) and hidden["density"] == pytest.approx(0.1, abs=0.02)
    assert head["density"] == 1.0 and head["sops"] == head["dense_sops"]  # the dense readout
    assert first["macs"] == 4 * first["links"]  # 4 steps x links per sample
    assert r["totals"]["sops"] < r["totals"]["dense_sops"] and r["totals"]["energy_pj"] < r["totals"]["dense_energy_pj"]

    for layer in r["layers"]:
        if layer["input"] != "spikes":
            continue
        module = model.get_submodule(layer["name"])
        mask = getattr(module, "weight_mask", torch.ones_like(module.weight, dtype=torch.bool))
        count = sum(x.reshape(-1, x.shape[-1]).sum(0, dtype=torch.float64) for x in seen[layer["name"]])
        assert count.sum() > 0, f"{layer['name']}: no spikes; the test input is too weak"
        fanout = mask.sum(0, dtype=torch.float64)
        expected = float((count * fanout).sum() / (mask.shape[0] * count.sum()))
        assert layer["sops"] / layer["dense_sops"] == pytest.approx(expected, rel=1e-12)
        assert layer["sops"] == pytest.approx(float((count * fanout).sum()) / 10, rel=1e-12)
        assert layer["firing_rate"] == pytest.approx(float(count.sum()) / sum(x.numel() for x in seen[layer["name"]]), rel=1e-12)
        assert layer["active_in"] == int(mask.any(0).sum()) and layer["active_out"] == int(mask.any(1).sum())

    d = account_energy(dense_model, batches)
    assert all(layer["density"] == 1.0 and layer["sops"] == layer["dense_sops"] for layer in d["layers"])
    assert all(layer["firing_rate"] > 0 for layer in d["layers"][1:])
    why = sops_ratio_explained(r, d)
    spiking = [layer for layer in r["layers"] if layer["input"] == "spikes"]
    dense_spiking = [layer for layer in d["layers"] if layer["name"] in why["layers"]]
    assert why["layers"] == ["hidden.2", "head"]
    assert why["sops_ratio"] == pytest.approx(sum(s["sops"] for s in spiking) / sum(s["sops"] for s in dense_spiking), rel=1e-12)
    assert why["density_ratio"] == sum(s["links"] for s in spiking) / sum(s["links"] for s in dense_spiking)

    def rate(layers):
        return sum(s["firing_rate"] * s["shape"][0] * s["shape"][1] for s in layers) / sum(s["shape"][0] * s["shape"][1] for s in layers)

    assert why["firing_rate_ratio"] == pytest.approx(rate(spiking) / rate(dense_spiking), rel=1e-12)
    assert why["predicted_ratio"] == why["density_ratio"] * why["firing_rate_ratio"]
    assert 0 < why["sops_ratio"] < 1
    engine.remove()
