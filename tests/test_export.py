"""chsnn export (torch, sparse, nir): files, round trips, errors; sparse inference."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from chsnn import export as ex
from chsnn.inference import METHODS, SparseLinear, to_sparse_inference

RANDOM = "data_options={input_shape: [1, 16, 16], n_classes: 10, n_train: 16, n_test: 8, kind: static}"
FAST = ["epochs=1", "max_steps=2", "batch_size=8", "time_steps=4", "engine.update_interval=1", "lr=0.01"]


def _train(out, *assignments, model="snn-mlp", method="set", sparsity=0.95, data=RANDOM):
    from chsnn.train import resolve_config, train

    cfg = resolve_config(
        None, {"data": "random", "model": model}, [data, f"engine.method={method}", f"engine.sparsity={sparsity}", *FAST, *assignments]
    )
    train(cfg, out, quiet=True)
    return out


def _original(run_dir, name="latest.pt"):
    """The run's model as `chsnn eval` rebuilds it (Runner + checkpoint, engine attached)."""
    from chsnn.train import Runner

    ckpt = torch.load(run_dir / name, map_location="cpu", weights_only=False)
    runner = Runner(ckpt["config"])
    runner.restore(ckpt)
    return runner.model.eval(), ckpt


def _spikes_in(model, x) -> float:
    """Spikes fired by the model's hidden neurons on x (so comparisons are not vacuous)."""
    from chsnn.train import FiringRateProbes

    probes = FiringRateProbes(model)
    try:
        with torch.no_grad():
            model(x)
    finally:
        probes.remove()
    return sum(c[0] for c in probes.counts.values())


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("export") / "mlp", "model_options.hidden=[128, 128]")


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(6, 5, 1, 16, 16, generator=gen) < 0.5).float() * 3.0  # strong enough input that the LIFs fire


# torch ------------------------------------------------------------------------------


def test_torch_export_is_a_masked_plain_state_dict(mlp_run, inputs):
    result = ex.export_run(mlp_run, "torch")
    path = mlp_run / "export" / "model-latest.pt"
    assert result["path"] == str(path) and path.is_file() and result["bytes"] == path.stat().st_size
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors, no pickle of objects
    assert not any(k.endswith(("weight_mask", "weight_mask_f")) for k in state)
    original, ckpt = _original(mlp_run)
    masks = {k[: -len(".weight_mask")]: v for k, v in ckpt["model"].items() if k.endswith(".weight_mask")}
    assert set(masks) == {"hidden.0", "hidden.2"}
    for name, mask in masks.items():
        w = state[f"{name}.weight"]
        assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))  # exact zeros where pruned
        assert not torch.signbit(w[~mask]).any()  # +0.0, not -0.0
        assert torch.equal(w[mask], ckpt["model"][f"{name}.weight"][mask])
    # loads strictly into a freshly built model of the same config
    from chsnn.models import build_model

    cfg = ckpt["config"]
    fresh = build_model(cfg["model"], (1, 16, 16), 10, time_steps=cfg["time_steps"], **cfg["model_options"]).eval()
    fresh.load_state_dict(state, strict=True)
    assert _spikes_in(original, inputs) > 0
    with torch.no_grad():
        ref = original(inputs)
        assert torch.equal(fresh(inputs), ref)
        assert torch.equal(ex.load_export(path)(inputs), ref)  # through the .json spec
    spec = json.loads((mlp_run / "export" / "model-latest.json").read_text())
    assert spec["model"] == "snn-mlp" and spec["input_shape"] == [1, 16, 16] and spec["n_classes"] == 10


# sparse -----------------------------------------------------------------------------


def test_sparse_export_is_compact_csr_and_rebuilds(mlp_run, inputs, tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    result = ex.export_run(mlp_run, "sparse", out=out)  # a directory: the default name inside
    path = out / "model-latest.npz"
    assert result["path"] == str(path) and path.is_file()
    assert result["bytes"] < 0.3 * result["dense_bytes"], result  # 95% sparse hidden layers, dense readout
    with np.load(path, allow_pickle=False) as data:  # no pickle needed
        files = set(data.files)
        meta = json.loads(str(data["__meta__"]))
        indptr, indices, values = (data[f"hidden.0.weight.{k}"] for k in ("indptr", "indices", "values"))
    assert meta["model"] == "snn-mlp" and meta["input_shape"] == [1, 16, 16] and meta["time_steps"] == 4
    names = [layer["name"] for layer in meta["layers"]]
    assert names == ["flatten", "hidden.0", "hidden.1", "hidden.2", "hidden.3", "head"]  # forward order
    by_name = {layer["name"]: layer for layer in meta["layers"]}
    assert by_name["hidden.0"]["tensors"]["weight"]["layout"] == "csr" and by_name["hidden.2"]["tensors"]["weight"]["layout"] == "csr"
    assert by_name["head"]["tensors"]["weight"]["layout"] == "dense" and by_name["hidden.0"]["tensors"]["bias"]["layout"] == "dense"
    assert {"hidden.0.weight", "hidden.2.weight"}.isdisjoint(files) and "head.weight" in files
    lif = by_name["hidden.1"]["neuron"]
    assert lif["tau"] == 2.0 and lif["v_threshold"] == 1.0 and lif["v_reset"] == 0.0 and lif["decay_input"] is True
    original, ckpt = _original(mlp_run)
    mask = ckpt["model"]["hidden.0.weight_mask"]
    assert len(indptr) == 129 and indptr[-1] == len(indices) == len(values) == int(mask.sum())
    assert indices.dtype == np.int32 and values.dtype == np.float32
    import scipy.sparse as sp

    dense = sp.csr_matrix((values, indices, indptr), shape=(128, 256)).toarray()
    assert np.array_equal(dense, original.hidden[0].weight.detach().numpy())
    model = ex.load_export(path)
    assert torch.equal(model.export_masks["hidden.0"], mask)
    with torch.no_grad():
        assert torch.equal(model(inputs), original(inputs))


# nir --------------------------------------------------------------------------------


def test_nir_export_graph_and_reimport(mlp_run, inputs):
    import nir

    result = ex.export_run(mlp_run, "nir", checkpoint="latest")
    path = mlp_run / "export" / "model-latest.nir"
    assert result["path"] == str(path) and result["checkpoint"] == "latest.pt"
    graph = nir.read(str(path))
    assert set(graph.nodes) == {"input", "flatten", "hidden_0", "hidden_1", "hidden_2", "hidden_3", "head", "output"}  # HDF5 sorts them
    kinds = {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        "flatten": "Flatten",
        "hidden_0": "Affine",
        "hidden_1": "LIF",
        "hidden_2": "Affine",
        "hidden_3": "LIF",
        "head": "Affine",
        "output": "Output",
    }
    assert sorted(map(tuple, graph.edges)) == sorted(
        [
            ("input", "flatten"),
            ("flatten", "hidden_0"),
            ("hidden_0", "hidden_1"),
            ("hidden_1", "hidden_2"),
            ("hidden_2", "hidden_3"),
            ("hidden_3", "head"),
            ("head", "output"),
        ]
    )
    lif = graph.nodes["hidden_1"]
    assert lif.tau.shape == (128,) and np.allclose(lif.tau, 2.0 * ex.NIR_DT) and np.all(lif.r == 1.0) and np.all(lif.v_threshold == 1.0)
    assert np.all(lif.v_reset == 0.0) and np.all(lif.v_leak == 0.0)
    original, _ = _original(mlp_run, "latest.pt")
    assert np.array_equal(graph.nodes["hidden_0"].weight, original.hidden[0].weight.detach().numpy())
    net = ex.load_export(path)
    assert isinstance(net, ex.NIRNetwork)
    with torch.no_grad():
        assert torch.equal(net(inputs), original(inputs))
        assert net.forward_steps(inputs).shape == (6, 5, 10)


def test_snntorch_backend_exports_to_every_format(tmp_path, inputs):
    run = _train(tmp_path / "snt", "model_options={hidden: [32], backend: snntorch}", sparsity=0.8)
    original, _ = _original(run)
    assert _spikes_in(original, inputs) > 0
    with torch.no_grad():
        ref = original(inputs)
        for fmt in ex.FORMATS:
            model = ex.load_export(ex.export_run(run, fmt)["path"])
            torch.testing.assert_close(model(inputs), ref, rtol=0, atol=1e-6)
    meta, _ = ex.read_sparse(run / "export" / "model-latest.npz")
    lif = next(layer for layer in meta["layers"] if layer["name"] == "lif0")["neuron"]
    assert lif["framework"] == "snntorch" and lif["beta"] == 0.5 and lif["tau"] == 2.0 and lif["reset_mechanism"] == "zero"


def test_cnn_exports_and_nir_folds_batchnorm(tmp_path):
    data = "data_options={input_shape: [2, 8, 8], n_classes: 10, n_train: 16, n_test: 8, kind: static}"
    run = _train(tmp_path / "cnn", "model_options={channels: [4], hidden: 16, pool: avg}", model="snn-cnn", sparsity=0.5, data=data)
    original, ckpt = _original(run)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 3, 2, 8, 8, generator=gen) < 0.5).float() * 3
    with torch.no_grad():
        for fmt in ("torch", "sparse"):
            assert torch.equal(ex.load_export(ex.export_run(run, fmt)["path"])(x), original(x)), fmt
    meta, arrays = ex.read_sparse(run / "export" / "model-latest.npz")
    conv = next(layer for layer in meta["layers"] if layer["name"] == "features.0")["tensors"]["weight"]
    assert conv["layout"] == "csr" and conv["shape"] == [4, 2, 3, 3] and conv["csr_shape"] == [4, 18]
    assert conv["nnz"] == int(ckpt["model"]["features.0.weight_mask"].sum())
    ex.export_run(run, "nir")
    graph = __import__("nir").read(str(run / "export" / "model-latest.nir"))
    kinds = {k: type(n).__name__ for k, n in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        "features_0": "Conv2d",
        "features_2": "LIF",
        "features_3": "AvgPool2d",
        "flatten": "Flatten",
        "fc": "Affine",
        "fc_lif": "LIF",
        "head": "Affine",
        "output": "Output",
    }  # BatchNorm features_1 folded into features_0
    # BatchNorm folded into the convolution: the same outputs (float64: no rounding-edge spikes)
    model = ex.load_run(run).model
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # make the fold non-trivial
            bn.running_mean.uniform_(-0.3, 0.3, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
        model = model.double()
        net = ex.from_nir(ex.to_nir(model)).double()
        ref = model(x.double())
        assert _spikes_in(model, x.double()) > 0
        torch.testing.assert_close(net(x.double()), ref, rtol=0, atol=1e-9)


# errors -----------------------------------------------------------------------------


def test_errors_name_the_problem(mlp_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ex.export_run(tmp_path / "no-such-run", "torch")
    with pytest.raises(ValueError, match="unknown export format 'onnx'; choose one of: torch, sparse, nir"):
        ex.export_run(mlp_run, "onnx")
    with pytest.raises(ValueError, match="unknown checkpoint 'final'"):
        ex.export_run(mlp_run, "torch", checkpoint="final")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ex.export_run(tmp_path / "empty", "sparse")
    from chsnn.models import build_model

    spikformer = build_model("spikformer", (3, 16, 16), 10, 2, embed_dims=16, num_heads=2, depths=1)
    with pytest.raises(ValueError, match=r"model 'spikformer' cannot be exported to NIR.*--format torch or --format sparse"):
        ex.to_nir(spikformer)
    maxpool = build_model("snn-cnn", (2, 8, 8), 10, 2, channels=[4], hidden=8)
    with pytest.raises(ValueError, match=r"model 'snn-cnn' cannot be exported to NIR: NIR has no max pooling.*pool=avg"):
        ex.to_nir(maxpool)
    with pytest.raises(ValueError, match="model 'mlp' cannot be exported to NIR"):
        ex.to_nir(build_model("mlp", (1, 4, 4), 3, width=0.01, depth=1))
    with pytest.raises(FileNotFoundError, match="spec"):
        torch.save({}, tmp_path / "bare.pt")
        ex.load_export(tmp_path / "bare.pt")


def test_export_command(mlp_run, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="chsnn")
    ex.add_export_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(mlp_run), "--format", "sparse", "--out", str(tmp_path / "m.npz"), "--checkpoint", "latest"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "m.npz") in out and "bytes" in out and "dense state dict" in out
    bad = parser.parse_args(["export", str(mlp_run), "--format", "onnx"])
    with pytest.raises(ValueError, match="choose one of: torch, sparse, nir"):
        bad.func(bad)
    from chsnn import cli

    if "export" not in cli.build_parser()._subparsers._group_actions[0].choices:
        return  # not wired into chsnn.cli yet
    assert cli.main(["export", str(tmp_path / "missing"), "--format", "torch"]) == 2
    assert "chsnn export: error:" in capsys.readouterr().err
    assert cli.main(["export", str(mlp_run), "--format", "nir", "--out", str(tmp_path / "g.nir")]) == 0


# sparse inference -------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_sparse_inference_equals_dense(mlp_run, inputs, method):
    run = ex.load_run(mlp_run)
    model = run.model
    assert _spikes_in(model, inputs) > 0
    fast = to_sparse_inference(model, run.masks, method=method)
    assert [type(m).__name__ for m in fast.linears] == ["SparseLinear", "SparseLinear"]
    assert fast.linears[0].nnz == int(run.masks["hidden.0"].sum())
    with torch.no_grad():
        torch.testing.assert_close(fast(inputs), model(inputs), rtol=0, atol=1e-5)
        # float64: no spike at a rounding edge, so equal to 1e-9
        model64 = ex.load_run(mlp_run).model.double()
        fast64 = to_sparse_inference(model64, run.masks, method=method)
        torch.testing.assert_close(fast64(inputs.double()), model64(inputs.double()), rtol=0, atol=1e-9)
        # the dense inference pipeline (same LIF code) is bit-identical to the model
        assert torch.equal(to_sparse_inference(model, run.masks, max_density=0.0)(inputs), model(inputs))
        analog = torch.rand(6, 5, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 3  # non-binary first-layer input
        torch.testing.assert_close(fast64(analog.double()), model64(analog.double()), rtol=0, atol=1e-9)


def test_sparse_inference_from_a_sparse_export(mlp_run, inputs, tmp_path):
    path = ex.export_run(mlp_run, "sparse", out=tmp_path / "s.npz")["path"]
    model = ex.load_export(path)
    fast = to_sparse_inference(model)  # masks from the CSR structure
    assert all(isinstance(m, SparseLinear) for m in fast.linears)
    with torch.no_grad():
        torch.testing.assert_close(fast(inputs), model(inputs), rtol=0, atol=1e-5)
    from chsnn.models import build_model

    with pytest.raises(ValueError, match="SpikingJelly snn-mlp"):
        to_sparse_inference(build_model("snn-mlp", (4,), 2, 2, hidden=[3], backend="snntorch"))
    with pytest.raises(ValueError, match="unknown sparse inference method"):
        to_sparse_inference(model, method="magic")
