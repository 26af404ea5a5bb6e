"""chsnn.rundir: atomic writes, the default checkpoint, load_model; and the
firing-rate monitor (chsnn.contracts)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from chsnn.checkpoint import CheckpointError
from chsnn.rundir import DEFAULT_CHECKPOINT, RunDir, atomic_write, load_model

RANDOM = "data_options={input_shape: [1, 16, 16], n_classes: 10, n_train: 16, n_test: 8, kind: static}"
FAST = ["epochs=1", "max_steps=2", "batch_size=8", "time_steps=4", "engine.update_interval=1", "lr=0.01", "model_options.hidden=[64]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from chsnn.commands import train
    from chsnn.config import resolve_config

    cfg = resolve_config(None, {"data": "random", "model": "snn-mlp"}, [RANDOM, "engine.method=set", "engine.sparsity=0.9", *FAST])
    out = tmp_path_factory.mktemp("rundir") / "run"
    train(cfg, out, quiet=True)
    return out


# Atomic writes -------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name != "file.txt")


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "file.txt"
    atomic_write(path, "old")
    atomic_write(path, "new ≈ text")
    assert path.read_text(encoding="utf-8") == "new ≈ text"
    atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert _leftovers(tmp_path) == []


def test_a_failed_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "file.txt"
    atomic_write(path, "the old content")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise Boom("disk full")

    with pytest.raises(Boom):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "the old content"
    assert _leftovers(tmp_path) == []  # the temporary file is gone too
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C midway: the same
        atomic_write(path, lambda f: (f.write(b"x"), (_ for _ in ()).throw(KeyboardInterrupt())))
    assert path.read_text() == "the old content" and _leftovers(tmp_path) == []


def test_a_failed_checkpoint_save_leaves_nothing(tmp_path):
    run = RunDir(tmp_path)
    # pickling a local lambda: AttributeError on Python 3.11-3.13; newer Pythons may raise PicklingError
    with pytest.raises((AttributeError, pickle.PicklingError)):
        run.save("latest.pt", {"model": {}, "not saveable": lambda: None})
    assert list(tmp_path.iterdir()) == []


# The default checkpoint ------------------------------------------------------------------


def _fake_run(tmp_path, names):
    for name in names:
        torch.save({"model": {"w": torch.tensor([1.0])}, "config": {"which": name}}, tmp_path / name)
    return RunDir(tmp_path)


def test_the_default_checkpoint_is_latest(tmp_path):
    assert DEFAULT_CHECKPOINT == "latest"
    run = _fake_run(tmp_path, ["latest.pt", "best.pt"])
    assert run.checkpoint_path() == tmp_path / "latest.pt"
    ckpt = run.checkpoint()
    assert ckpt.name == "latest.pt" and ckpt.state["config"] == {"which": "latest.pt"}
    assert run.checkpoint("best").name == "best.pt"  # an explicit choice is kept
    assert run.checkpoint("latest").name == "latest.pt"


def test_best_stands_in_only_when_latest_is_absent(tmp_path):
    run = _fake_run(tmp_path, ["best.pt"])
    assert run.checkpoint().name == "best.pt"
    with pytest.raises(FileNotFoundError, match=r"has no latest.pt; it has best.pt \(use --checkpoint best\)"):
        run.checkpoint("latest")
    (tmp_path / "latest.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match="latest.pt is not a readable checkpoint"):
        run.checkpoint()  # damaged: an error, not a silent switch to best.pt


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint 'final'; choose one of: latest, best"):
        _fake_run(tmp_path, ["latest.pt"]).checkpoint("final")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        RunDir(tmp_path / "empty").checkpoint()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir(tmp_path / "nope").checkpoint()
    with pytest.raises(ValueError, match="not a directory"):
        RunDir(tmp_path / "latest.pt").checkpoint()


def test_eval_report_and_export_read_the_same_default(tiny_run, capsys, tmp_path):
    import json

    from chsnn import export
    from chsnn.cli import main

    assert main(["eval", str(tiny_run)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "latest.pt"
    assert export.export_run(tiny_run, "torch", out=tmp_path / "m.pt")["checkpoint"] == "latest.pt"
    from chsnn.report import render_report

    assert render_report(tiny_run)["checkpoint"] == "latest.pt"


def test_run_dir_reads_what_train_wrote(tiny_run):
    run = RunDir(tiny_run)
    assert run.config()["model"] == "snn-mlp"
    assert [row["epoch"] for row in run.metrics()] == [1]
    assert run.summary()["steps"] == 2
    assert run.checkpoints() == ["latest.pt", "best.pt"]


def test_predictions_are_the_final_evaluations(tiny_run):
    # predictions.npz: every test sample in test-set order; its accuracy is summary.json's
    labels, predicted = RunDir(tiny_run).predictions()
    assert len(labels) == 8 and labels.dtype == predicted.dtype == np.int64
    assert float((labels == predicted).mean()) == pytest.approx(RunDir(tiny_run).summary()["test_accuracy"])
    from chsnn.trainer import Runner

    runner = Runner(RunDir(tiny_run).config())
    expected = torch.cat([y for _, y in runner.batches(runner.data.test, 3, epoch=-1)])
    assert labels.tolist() == expected.tolist()  # the test set's own order, whatever the batch size


def test_predictions_files_are_checked(tmp_path):
    run = RunDir(tmp_path)
    assert run.predictions() is None  # an older run: none
    run.write_predictions(np.array([1, 2, 3]), np.array([1, 0, 3]))
    labels, predicted = run.predictions()
    assert labels.tolist() == [1, 2, 3] and predicted.tolist() == [1, 0, 3]
    run.file("predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="predictions.npz is not a predictions file chsnn wrote"):
        run.predictions()
    np.savez(run.file("predictions.npz"), label=np.array([1, 2]), predicted=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="does not hold two integer arrays of one length"):
        run.predictions()
    np.savez(run.file("predictions.npz"), label=np.array([1, 2], dtype=object), predicted=np.array([1, 2], dtype=object))
    with pytest.raises(ValueError, match="not a predictions file"):  # an object array would need pickle: refused
        run.predictions()


# load_model ------------------------------------------------------------------------------


def _runner_model(run_dir):
    """The run's model as a Runner rebuilds it (data, optimizer, engine attached)."""
    from chsnn.trainer import Runner

    ckpt = RunDir(run_dir).checkpoint(training=True).state
    runner = Runner(ckpt["config"])
    runner.restore(ckpt)
    return runner.model.eval()


def test_load_model_gives_the_trained_models_outputs(tiny_run):
    from chsnn.contracts import FiringRateProbes

    x = (torch.rand(4, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float() * 3.0
    model = load_model(tiny_run)
    assert not model.training and not any(k.endswith("weight_mask") for k in model.state_dict())
    reference = _runner_model(tiny_run)
    probes = FiringRateProbes(model)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, reference(x))
    probes.remove()
    assert sum(s for s, _ in probes.counts.values()) > 0  # the neurons fired: not a vacuous comparison
    mask = reference.hidden[0].weight_mask
    assert torch.count_nonzero(model.hidden[0].weight[~mask]) == 0  # the masks are applied


def test_load_model_builds_no_runner_data_optimizer_or_engine(tiny_run, monkeypatch):
    import chsnn.data
    from chsnn.sparse import SparseEngine
    from chsnn.trainer import Runner

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"load_model built {what}")

        return fail

    monkeypatch.setattr(Runner, "__init__", refuse("a Runner"))
    monkeypatch.setattr(SparseEngine, "__init__", refuse("a SparseEngine"))
    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse("an optimizer"))
    monkeypatch.setattr(chsnn.data, "load_dataset", refuse("the data"))
    model = load_model(tiny_run, which="best")
    assert model.model_name == "snn-mlp" and tuple(model.input_shape) == (1, 16, 16)


# The firing-rate monitor ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_firing_rates_count_every_spike(backend):
    """Rates over SpikingJelly's OutputMonitor equal a hand count with plain
    forward hooks, for both neuron frameworks (snnTorch's (spikes, membrane) outputs too)."""
    from chsnn.contracts import FiringRateProbes, neuron_types
    from chsnn.models import build_model

    torch.manual_seed(0)
    model = build_model("snn-mlp", (1, 8, 8), 4, time_steps=3, hidden=[32, 16], backend=backend).eval()
    seen: dict[str, list] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, neuron_types()):
            handles.append(
                m.register_forward_hook(
                    lambda mod, a, out, name=name: seen.setdefault(name, []).append(out[0] if isinstance(out, tuple) else out)
                )
            )
    probes = FiringRateProbes(model)
    x = (torch.rand(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.5).float() * 4.0
    with torch.no_grad():
        model(x)
        model(x[:, :2])
    probes.remove()
    for h in handles:
        h.remove()
    expected = {name: float(sum(float(o.sum()) for o in outs)) / sum(o.numel() for o in outs) for name, outs in seen.items()}
    assert expected and probes.rates() == pytest.approx(expected, rel=1e-12)
    assert any(rate > 0 for rate in expected.values())
    with torch.no_grad():
        model(x)  # removed: nothing more is counted
    assert probes.rates() == pytest.approx(expected, rel=1e-12)
