"""`chsnn train / eval / zoo`: errors, a tiny end-to-end run, exact resume."""

import json

import pytest
import torch

from chsnn import train as training
from chsnn.cli import main

TINY = [
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
    "--set",
    "lr=0.01",
    "--quiet",
]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rate=0.1"], "unknown config key.*learning_rate.*allowed keys"),
        (["--set", "engine.sparsity=1.2"], "sparsity"),
        (["--set", "engine.regrow=CH3"], "unknown engine option.*regrow"),
        (["--set", "optimizer=lbfgs"], "valid optimizers are adam, adamw, sgd"),
        (["--set", "epochs=0"], "epochs"),
        (["--set", "oops"], "KEY=VALUE"),
        (["--config", "no-such-model"], "no zoo config named 'no-such-model'.*available"),
        (["--data", "imagenet"], "imagenet"),
        (["--model", "resnet-1000"], "resnet-1000"),
        (["--method", "magic"], "valid methods"),
    ],
)
def test_cli_errors_name_the_problem(args, message, capsys, tmp_path):
    code, out = run_cli(["train", "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet", *args], capsys)
    assert code == 2
    assert "error" in out
    import re

    assert re.search(message, out, re.S), out


def test_tiny_end_to_end_run_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    code, text = run_cli(["train", *TINY, "--epochs", "2", "--method", "chsnn", "--sparsity", "0.9", "--out", str(out)], capsys)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "dataset", "model", "seed", "epochs", "test_accuracy", "sparsity", "layers", "sops_per_sample", "wall_seconds"):
        assert key in summary
    assert summary["method"] == "chsnn" and summary["epochs"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_accuracy"] > 0.3  # 10 classes; chance is 0.1
    assert summary["sparsity"] == pytest.approx(0.9, abs=0.002)
    for layer in summary["layers"]:
        assert {"name", "shape", "density", "active_in", "active_out"} <= set(layer)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"loss", "train_accuracy", "test_accuracy", "layers", "firing_rates", "topology_update_ms"} <= set(rows[0])
    assert rows[0]["firing_rates"] and all(0 <= r <= 1 for r in rows[0]["firing_rates"].values())
    assert (out / "best.pt").is_file() and (out / "latest.pt").is_file() and (out / "config.yaml").is_file()
    assert any((out / "tb").iterdir())
    # eval re-builds the run: by default its final model (latest.pt, what summary.json
    # describes); --checkpoint best gives the best checkpoint's accuracy
    code, text = run_cli(["eval", str(out)], capsys)
    assert code == 0, text
    result = json.loads(text[text.index("{") :])
    assert result["checkpoint"] == "latest.pt" and result["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    code, text = run_cli(["eval", str(out), "--checkpoint", "best"], capsys)
    assert code == 0, text
    result = json.loads(text[text.index("{") :])
    assert result["checkpoint"] == "best.pt" and result["test_accuracy"] == pytest.approx(summary["best_test_accuracy"])
    # the same directory again without --resume is refused
    code, text = run_cli(["train", *TINY, "--out", str(out)], capsys)
    assert code == 2 and "--resume" in text


def test_resume_gives_the_same_model(tmp_path, capsys):
    common = ["train", *TINY, "--epochs", "2", "--method", "set", "--sparsity", "0.8", "--set", "engine.update_interval=4"]
    assert run_cli([*common, "--out", str(tmp_path / "straight")], capsys)[0] == 0
    steps_per_epoch = 12  # 1437 training digits / 128
    # stop in the middle of epoch 2, then resume to the end
    assert run_cli([*common, "--out", str(tmp_path / "cut"), "--max-steps", str(steps_per_epoch + 5)], capsys)[0] == 0
    assert run_cli(["train", "--resume", "--out", str(tmp_path / "cut"), "--quiet"], capsys)[0] == 0
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "latest.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    sa = json.loads((tmp_path / "straight" / "summary.json").read_text())
    sb = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert sa["test_accuracy"] == sb["test_accuracy"] and sa["steps"] == sb["steps"] == 2 * steps_per_epoch


def test_every_zoo_config_resolves(capsys):
    rows = training.zoo_table()
    assert any(r["default"] for r in rows)
    for row in rows:
        cfg = training.resolve_config(row["name"])
        assert cfg["model"] and cfg["data"]
    code, out = run_cli(["zoo"], capsys)
    assert code == 0 and training.DEFAULT_CONFIG in out


def test_another_model_drops_the_configs_model_options():
    cfg = training.resolve_config(None, {"model": "snn-cnn", "data": "digits"}, ["model_options.channels=[8]"])
    assert cfg["model_options"] == {"channels": [8]}
    cfg = training.resolve_config(None, {"model": "snn-mlp"})
    assert cfg["model_options"] == {"hidden": [512, 512]}  # same model: the config's options stay


def test_spikformer_layers_all_sparse_and_heads_reported(tmp_path, capsys):
    """Issue 5's acceptance in small: every Spikformer linear layer at the
    target density, listed in summary.json, with the heads still active."""
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "cifar_like.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
        y_train=rng.integers(0, 10, 16),
        x_test=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
        y_test=rng.integers(0, 10, 8),
    )
    out = tmp_path / "spk"
    args = [
        "train",
        "--model",
        "spikformer",
        "--data",
        f"npz:{npz}",
        "--method",
        "chsnn",
        "--sparsity",
        "0.9",
        "--max-steps",
        "3",
        "--set",
        "engine.update_interval=1",
        "--set",
        "model_options={embed_dims: 32, num_heads: 2, depths: 1}",
        "--set",
        "time_steps=2",
        "--set",
        "batch_size=8",
        "--out",
        str(out),
        "--quiet",
    ]
    code, text = run_cli(args, capsys)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    names = [layer["name"] for layer in summary["layers"]]
    assert names == ["blocks.0.attn.qkv_conv_bn.0", "blocks.0.attn.proj_conv_bn.0", "blocks.0.mlp.fc1.0", "blocks.0.mlp.fc2.0"]
    for layer in summary["layers"]:
        assert abs(layer["density"] - 0.10) <= 0.01
    assert summary["topology_updates"] >= 1
    assert summary["heads"]["blocks.0.attn.qkv_conv_bn.0"] == {"active": 2, "total": 2, "qkv_blocks_active": 6, "qkv_blocks": 6}


@pytest.mark.parametrize("method", ["set", "cht"])
def test_vgg16_kernel_masks_stay_equal_per_kernel(method, tmp_path, capsys):
    """CHT-Conv: after updates every kernel of every conv has the same count."""
    out = tmp_path / method
    data = "data_options={input_shape: [3, 32, 32], n_classes: 10, n_train: 16, n_test: 8, kind: static}"
    args = [
        "train",
        "--model",
        "vgg16",
        "--data",
        "random",
        "--set",
        data,
        "--method",
        method,
        "--sparsity",
        "0.5",
        "--max-steps",
        "3",
        "--set",
        "engine.update_interval=1",
        "--set",
        "engine.early_stop=false",
        "--set",
        "model_options.width=0.0625",
        "--set",
        "batch_size=8",
        "--out",
        str(out),
        "--quiet",
    ]
    code, text = run_cli(args, capsys)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topology_updates"] == 3
    convs = [layer for layer in summary["layers"] if "kernel_active_min" in layer]
    assert len(convs) == 13
    assert all(layer["kernel_active_min"] == layer["kernel_active_max"] == 4 for layer in convs)  # round(0.5 * 9)


@pytest.mark.parametrize("top, engine, expected", [(1, None, 1), (3, None, 3), (1, 2, 2)])
def test_one_number_of_calibration_batches(top, engine, expected):
    overrides = {"data": "digits", "calibration_batches": top, "model_options": {"hidden": [16]}, "batch_size": 32}
    if engine is not None:
        overrides["engine"] = {"calibration_batches": engine}
    runner = training.Runner(training.resolve_config(None, overrides))
    assert runner.engine.config.calibration_batches == expected
    assert len(runner.engine.calibration) == expected
