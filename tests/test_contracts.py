"""chsnn.contracts: the mask buffers every part reads, and the neuron reset."""

import torch
from test_engine import batches, mlp, train
from torch import nn

from chsnn import contracts
from chsnn.sparse import SparseEngine


def test_masks_of_names_the_engine_masks():
    model = mlp()
    engine = SparseEngine(model, torch.optim.SGD(model.parameters(), 0.1), {"method": "set", "sparsity": 0.7})
    masks = contracts.masks_of(model)
    assert list(masks) == [t.name for t in engine.targets] == ["1", "3"]
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and torch.equal(mask, engine.mask(name))
    assert set(f"{n}.{contracts.MASK}" for n in masks) <= set(model.state_dict())
    assert not any(k.endswith(contracts.MASK_F) for k in model.state_dict())  # the float copy is not persistent
    assert contracts.masks_of(mlp()) == {}


def test_strip_masks_leaves_a_plain_model_with_exact_zeros():
    import copy

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    engine = SparseEngine(model, opt, {"method": "set", "sparsity": 0.7})
    train(model, opt, batches(2))
    masks = {name: m.clone() for name, m in contracts.masks_of(model).items()}
    with torch.no_grad():
        model[1].weight[~masks["1"]] = float("nan")  # whatever a pruned weight holds
    plain = copy.deepcopy(model)
    assert contracts.strip_masks(plain) is plain
    assert contracts.masks_of(plain) == {} and set(contracts.masks_of(model)) == {"1", "3"}
    assert not any(k.endswith(contracts.MASK_BUFFERS) for k in plain.state_dict())
    for name, mask in masks.items():
        w = plain.get_submodule(name).weight
        assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()))) and not torch.signbit(w[~mask]).any()
        assert torch.equal(w[mask], model.get_submodule(name).weight[mask])
    contracts.strip_masks(model)  # in place, then detach the engine
    engine.remove()
    assert contracts.masks_of(model) == {} and torch.isfinite(model[1].weight).all()


def test_split_masked_state_is_strip_masks_for_a_checkpoint():
    import copy

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    SparseEngine(model, opt, {"method": "set", "sparsity": 0.7})
    train(model, opt, batches(2))
    with torch.no_grad():
        model[3].weight[~contracts.masks_of(model)["3"]] = float("inf")
    clean, masks = contracts.split_masked_state(model.state_dict())
    plain = contracts.strip_masks(copy.deepcopy(model))
    assert masks.keys() == contracts.masks_of(model).keys()
    assert all(torch.equal(masks[n], m) for n, m in contracts.masks_of(model).items())
    assert clean.keys() == plain.state_dict().keys()
    assert all(torch.equal(clean[k], v) for k, v in plain.state_dict().items())


def test_reset_network_rests_spikingjelly_and_snntorch_neurons():
    import snntorch as snn
    from spikingjelly.activation_based import neuron

    sj = nn.Sequential(nn.Linear(4, 3), neuron.LIFNode(step_mode="m"))
    sj(torch.rand(5, 2, 4) * 5)
    assert isinstance(sj[1].v, torch.Tensor) and sj[1].v.abs().sum() > 0
    contracts.reset_network(sj)
    assert sj[1].v == 0.0  # back to its initial scalar
    st = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True))
    st(torch.rand(2, 4) * 5)
    assert st[1].mem.abs().sum() > 0
    contracts.reset_network(st)
    assert st[1].mem.abs().sum() == 0
    contracts.reset_network(mlp())  # no neurons: nothing to do


def test_chsnn_models_reset_their_neurons_through_the_contract(monkeypatch):
    from chsnn.models import build_model

    model = build_model("snn-mlp", (6,), 3, time_steps=2, hidden=[8])
    calls = []
    monkeypatch.setattr("chsnn.models.base.reset_network", lambda m: calls.append(m))
    model(torch.rand(2, 4, 6))
    assert calls == [model, model]  # at the start and the end of the forward
