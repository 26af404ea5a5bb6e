"""The zoo configs in models/*.yaml and the random data that smoke-runs them."""

from __future__ import annotations

import json

import pytest
import torch

from chsnn.cli import main
from chsnn.data import DATASET_SHAPES, DATASETS, load_dataset, smoke_data
from chsnn.data.registry import parse_spec
from chsnn.models import MODELS
from chsnn.sparse import EngineConfig
from chsnn.train import DEFAULTS, ZOO_DIR, load_config_file, resolve_config

ZOO = sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))
# Models being added alongside these configs; until registered, their configs skip.
# Smaller models and shorter runs for the smoke runs (2 cores, < 90 s in all).
SMOKE_SETS = {
    "vgg16": ["model_options.width=0.0625"],
    "snn-vgg16": ["model_options.width=0.0625"],
    "spikformer": ["model_options.embed_dims=32", "model_options.num_heads=2", "model_options.depths=1"],
    "snn-cnn": ["model_options.channels=[8,16]", "model_options.hidden=32"],
    "snn-mlp": ["model_options.hidden=[64]"],
}
COMMON_SMOKE_SETS = ["time_steps=2", "batch_size=8", "eval_batch_size=8"]


# Random data ------------------------------------------------------------------------


def test_random_static_shapes_and_range():
    b = load_dataset("random", input_shape=(3, 32, 32), n_classes=10, time_steps=None, n_train=64, n_test=32, seed=0)
    assert b.kind == "static" and b.time_steps is None and b.name == "random"
    assert b.input_shape == (3, 32, 32) and b.n_classes == 10
    assert len(b.train) == 64 and len(b.test) == 32
    x, y = b.train.tensors()
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) < 1.0
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < 10
    assert b.sample_shape == tuple(b.train[0][0].shape)
    assert isinstance(b.train[0][1], int)


def test_random_events_are_small_counts():
    b = load_dataset("random", input_shape=(2, 34, 34), n_classes=10, time_steps=5, n_train=20, n_test=10, seed=3)
    assert b.kind == "events" and b.time_steps == 5 and b.input_shape == (2, 34, 34)
    x, _ = b.train.tensors()
    assert x.shape == (20, 5, 2, 34, 34)
    assert float(x.min()) >= 0 and torch.equal(x, x.round())
    assert 0.1 < float(x.mean()) < 0.3 and float(x.max()) <= 10
    one_d = load_dataset("random", input_shape=[700], n_classes=20, time_steps=3, n_train=4, n_test=2)
    assert one_d.train[0][0].shape == (3, 700)


def test_random_is_deterministic_per_seed():
    def tensors(seed, **kw):
        b = load_dataset("random", input_shape=(1, 8, 8), n_classes=4, n_train=10, n_test=6, seed=seed, **kw)
        return [t for part in (b.train, b.test) for t in part.tensors()]

    for kw in ({}, {"time_steps": 4}):
        a, b, c = tensors(1, **kw), tensors(1, **kw), tensors(2, **kw)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_random_kind_option():
    static = load_dataset("random", input_shape=(1, 8, 8), kind="static", time_steps=8)
    assert static.kind == "static" and static.time_steps is None  # time_steps ignored, as for real static sets
    events = load_dataset("random", input_shape=(1, 8, 8), kind="events")
    assert events.kind == "events" and events.time_steps == 8


@pytest.mark.parametrize(
    "options, word",
    [
        ({"input_shape": (3, 0, 4)}, "input_shape"),
        ({"input_shape": "3x32x32"}, "input_shape"),
        ({"n_classes": 1}, "n_classes"),
        ({"n_train": 0}, "n_train"),
        ({"n_test": 2.5}, "n_test"),
        ({"kind": "video"}, "kind"),
        ({"time_steps": 0}, "time_steps"),
        ({"seed": -1}, "seed"),
        ({"colour": True}, "colour"),
    ],
)
def test_random_bad_options_name_the_option(options, word):
    with pytest.raises(ValueError, match=word):
        load_dataset("random", **options)


def test_random_takes_no_path():
    with pytest.raises(ValueError, match="no path"):
        load_dataset("random:/tmp/x")


# Dataset shapes and smoke data -------------------------------------------------------


def test_dataset_shapes_cover_every_fixed_shape_set():
    assert set(DATASET_SHAPES) == set(DATASETS) - {"npz", "random"}
    for name, (shape, n_classes, kind) in DATASET_SHAPES.items():
        assert kind in ("static", "events") and n_classes >= 2 and all(s > 0 for s in shape), name
    assert DATASET_SHAPES["emnist"] == ((1, 28, 28), 47, "static")
    assert DATASET_SHAPES["dvsgesture"] == ((2, 128, 128), 11, "events")
    assert DATASET_SHAPES["shd"] == ((700,), 20, "events")


def test_dataset_shapes_match_the_builtin_loaders():
    # digits ships with scikit-learn; the others need files this test cannot assume.
    b = load_dataset("digits")
    assert DATASET_SHAPES["digits"] == (b.input_shape, b.n_classes, b.kind)


@pytest.mark.parametrize("name", sorted(DATASET_SHAPES))
def test_smoke_data_stands_in_for_each_dataset(name):
    shape, n_classes, kind = DATASET_SHAPES[name]
    spec = name if name in ("digits", "ndigits") else f"{name}:/nowhere/{name}"
    random_name, options = smoke_data(spec, 3)
    assert random_name == "random"
    b = load_dataset(random_name, **options)
    assert (b.input_shape, b.n_classes, b.kind) == (shape, n_classes, kind)
    assert b.time_steps == (3 if kind == "events" else None)
    assert len(b.train) <= 64 and len(b.test) <= 64
    # The trainer adds its own time_steps and seed unless the options say otherwise.
    again = load_dataset(random_name, **{"time_steps": 7, "seed": 1, **options})
    assert again.kind == kind and again.time_steps == (3 if kind == "events" else None)


def test_smoke_data_accepts_aliases():
    assert smoke_data("DVS-Gesture:/x", 4)[1]["n_classes"] == 11


def test_smoke_data_refuses_npz():
    with pytest.raises(ValueError, match="random"):
        smoke_data("npz:/data/mine.npz", 4)


# Zoo configs -------------------------------------------------------------------------


def test_zoo_has_the_expected_configs():
    expected = {
        "snn-mlp_ndigits", "snn-mlp_mnist",
        "mlp_mnist", "mlp_fashion-mnist", "mlp_emnist",
        "vgg16_cifar10", "vgg16_cifar100",
        "snn-cnn_dvsgesture", "snn-cnn_cifar10dvs",
        "spikformer_cifar10", "spikformer_dvsgesture", "spikformer_cifar10dvs",
        "snn-vgg16_cifar10",
    }  # fmt: skip
    assert expected <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_is_valid(name):
    raw = load_config_file(ZOO_DIR / f"{name}.yaml")
    assert set(raw) <= set(DEFAULTS) | {"default"}, sorted(set(raw) - set(DEFAULTS))
    cfg = resolve_config(name)  # validates keys, values and engine options
    EngineConfig.from_dict({"total_steps": 1, **cfg["engine"]})
    data_name, _ = parse_spec(cfg["data"])
    assert data_name in DATASETS
    model_name, stem_data = name.split("_", 1)
    assert cfg["model"] == model_name and data_name == stem_data, "file name is <model>_<dataset>.yaml"
    assert cfg["description"]
    text = (ZOO_DIR / f"{name}.yaml").read_text()
    assert text.startswith("#"), "a zoo config starts with a comment saying what it is"
    if not cfg["results"]:
        assert "not run yet" in text
    assert cfg["model"] in MODELS, f"unknown model {cfg['model']!r}; registered: {', '.join(MODELS)}"


def test_random_data_trains_end_to_end(tmp_path):
    out = tmp_path / "run"
    options = "data_options={input_shape: [1, 8, 8], n_classes: 3, n_train: 16, n_test: 8}"
    argv = [
        "train",
        "--data",
        "random",
        "--set",
        options,
        "--set",
        "model_options.hidden=[32]",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_smoke_run(name, tmp_path):
    model = resolve_config(name)["model"]
    out = tmp_path / name
    argv = ["train", "--config", name, "--smoke", "--out", str(out), "--quiet"]
    for assignment in COMMON_SMOKE_SETS + SMOKE_SETS.get(model, []):
        argv += ["--set", assignment]
    assert main(argv) == 0
    assert (out / "summary.json").is_file()
