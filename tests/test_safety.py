"""Issue 13: no code runs from a checkpoint, no traceback from a bad option,
no diverged run reported as success. Every probe goes through the command
line (``chsnn.cli.main`` in-process, or ``python -m chsnn`` where a real
process matters: the malicious checkpoint, Ctrl-C) and asserts the exit code,
a one-line message naming the key or file, and no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import faults
import numpy as np
import pytest
import torch
from torch import nn

from chsnn.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--data",
    "digits",
    "--model",
    "snn-mlp",
    "--set",
    "model_options.hidden=[32]",
    "--set",
    "batch_size=128",
    "--set",
    "time_steps=2",
    "--quiet",
]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    # With a fault to inject, chsnn runs through the test's fault script.
    chsnn = [str(faults.SCRIPT)] if faults.FAULT_ENV in (env_extra or {}) else ["-m", "chsnn"]
    proc = subprocess.run([sys.executable, *chsnn, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


def error_line(err: str, command: str = "train") -> str:
    """The one error line: exactly one line, 'chsnn CMD: error: ...', no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"chsnn {command}: error: "), err
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A tiny finished run (2 epochs of 12 steps at most, stopped at 14)."""
    out = tmp_path_factory.mktemp("good") / "run"
    code = main(["train", *TINY, "--epochs", "2", "--max-steps", "14", "--method", "set", "--sparsity", "0.8", "--out", str(out)])
    assert code == 0
    return out


# 1. No code from a checkpoint ------------------------------------------------------


class _Payload:
    """Unpickling this writes the marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def reading_command(command: str, run, tmp_path) -> list:
    """The command line of each command that reads a run's checkpoint."""
    return {
        "eval": ["eval", run],
        "export": ["export", run, "--format", "torch", "--out", tmp_path / "x.pt"],
        "report": ["report", run],
        "resume": ["train", "--resume", "--out", run, "--quiet"],
    }[command]


@pytest.mark.parametrize("command", ["eval", "export", "report", "resume"])
def test_a_crafted_checkpoint_runs_no_code(command, good_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    marker = tmp_path / "PAYLOAD_RAN"
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["history"] = _Payload(marker)
        torch.save(ckpt, run / name)
    args = reading_command(command, run, tmp_path)
    code, out, err = run_process(args)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert code == 2, err
    line = error_line(err, "train" if command == "resume" else command)
    assert "weights_only=True" in line and ".pt" in line


def test_checkpoints_load_with_weights_only(good_run):
    """A checkpoint chsnn writes holds tensors and plain data only."""
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(good_run / name, weights_only=True)
        assert {"model", "optimizer", "engine", "rng", "config"} <= set(ckpt)


@pytest.mark.parametrize("command", ["eval", "export", "report", "resume"])
def test_truncated_checkpoints_give_one_line(command, good_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    # Only latest.pt, every command's default: a damaged default is an error,
    # never a silent switch to the intact best.pt (another model).
    data = (run / "latest.pt").read_bytes()
    (run / "latest.pt").write_bytes(data[: len(data) // 2])
    args = reading_command(command, run, tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    line = error_line(err, "train" if command == "resume" else command)
    assert "latest.pt" in line and "truncated or corrupt" in line
    if command == "resume":
        assert "copy it to latest.pt" in line  # best.pt is intact: say how to use it


def test_eval_reads_latest_by_default_whatever_best_holds(good_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / "best.pt").write_bytes(b"PK\x03\x04 not really")
    code, out, err = run_cli(["eval", run], capsys)
    assert code == 0, err
    assert json.loads(out)["checkpoint"] == "latest.pt"
    # asked for explicitly, the damaged best.pt is an error naming it
    code, out, err = run_cli(["eval", run, "--checkpoint", "best"], capsys)
    assert code == 2
    line = error_line(err, "eval")
    assert "best.pt" in line and "truncated or corrupt" in line


# 2. Divergence ----------------------------------------------------------------------


def _npz(path: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_tr = rng.random((64, 20)).astype(np.float32)
    x_te = rng.random((32, 20)).astype(np.float32)
    np.savez(path, x_train=x_tr, y_train=rng.integers(0, 4, 64), x_test=x_te, y_test=rng.integers(0, 4, 32))


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """Every weight turns NaN after step 14 (epoch 2 of 12-step epochs; the
    test's fault injection, as a diverging step would leave them): the run stops at
    the next loss with exit 1 and a clear message; latest.pt and best.pt stay
    the epoch-1 state, masked weights exactly zero; no summary.json."""
    args = ["train", *TINY, "--epochs", "3", "--method", "set", "--sparsity", "0.8"]
    code, _, err = run_cli([*args, "--max-steps", "12", "--out", tmp_path / "epoch1"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    faults.inject(monkeypatch, "0:14:nan")
    code, _, err = run_cli([*args, "--out", out], capsys)
    assert code == 1
    line = error_line(err)
    assert "training diverged: the training loss is nan at step 15 (epoch 2)" in line
    assert f"the last good checkpoint {out / 'latest.pt'} (step 12) is kept" in line and "no summary.json" in line and "lower it" in line
    assert not (out / "summary.json").exists()
    good = torch.load(tmp_path / "epoch1" / "latest.pt", weights_only=True)
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["epoch"] == 1 and ckpt["engine"]["step"] == 12
        for key, value in good["model"].items():
            assert torch.equal(value, ckpt["model"][key]), key
        masks = {k[: -len(".weight_mask")]: v for k, v in ckpt["model"].items() if k.endswith(".weight_mask")}
        assert masks
        for layer, mask in masks.items():
            w = ckpt["model"][f"{layer}.weight"]
            assert torch.isfinite(w).all() and torch.count_nonzero(w[~mask]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # nothing logged for the diverged epoch


@pytest.mark.parametrize("sets", [["lr=1.0e+38", "batch_size=8"]])
def test_a_huge_learning_rate_is_no_success(sets, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", out]
    for s in sets:
        args += ["--set", s]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert "diverged" in error_line(err)
    assert not (out / "summary.json").exists() and not (out / "latest.pt").exists()


def test_infinite_learning_rate_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["train", *TINY, "--set", "lr=.inf", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "lr=inf" in error_line(err) and "finite" in err


def test_masking_leaves_exact_zeros_whatever_the_weights_hold():
    from chsnn.sparse import SparseEngine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = SparseEngine(model, opt, {"method": "set", "sparsity": 0.8, "sparsify_output": True})
    for t in engine.targets:
        with torch.no_grad():
            t.weight.fill_(float("nan"))
            t.weight[0, 0] = float("inf")
    engine.apply_masks()
    for t in engine.targets:
        mask = engine.mask(t.name)
        assert torch.count_nonzero(t.weight[~mask]) == 0 and not torch.isnan(t.weight[~mask]).any()
        assert torch.isnan(t.weight[mask]).sum() + torch.isinf(t.weight[mask]).sum() == int(mask.sum())  # the rest untouched


# 7. A hand-set gradient --------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
@pytest.mark.parametrize("special", [None, float("nan")])
def test_hand_set_gradients_keep_masked_weights_zero(optimizer, special):
    from chsnn.sparse import SparseEngine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 41), nn.ReLU(), nn.Linear(41, 3))
    cls = {
        "adam": torch.optim.Adam,
        "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-4),
        "adamw": torch.optim.AdamW,
    }[optimizer]
    opt = cls(model.parameters(), lr=0.1)
    engine = SparseEngine(model, opt, {"method": "set", "sparsity": 0.9, "update_interval": 0})
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)  # no backward: the post-accumulate hook never fires
            if special is not None:
                p.grad.view(-1)[::7] = special
        opt.step()
    for t in engine.targets:
        off = ~engine.mask(t.name)
        assert int(off.sum()) > 1000
        assert torch.count_nonzero(t.weight[off]) == 0


# 4./5. Options: one line, exit 2 ------------------------------------------------------


@pytest.mark.parametrize(
    "args, names",
    [
        (["--set", "engine.zeta=abc"], ["zeta", "number"]),
        (["--set", "engine.lrs_alpha=abc"], ["lrs_alpha", "number"]),
        (["--set", "engine.early_stop_overlap=abc"], ["early_stop_overlap", "number"]),
        (["--set", "engine.rigl_accumulation=abc"], ["rigl_accumulation", "whole number"]),
        (["--set", "engine.soft_temperature=5"], ["soft_temperature", "list"]),
        (["--set", "engine.seed=abc"], ["seed", "whole number"]),
        (["--set", "engine.end_step=abc"], ["end_step", "whole number"]),
        (["--set", "engine.init_gain=abc"], ["init_gain", "number"]),
        (["--set", "engine.calibration_samples=abc"], ["calibration_samples", "whole number"]),
        (["--set", "weight_decay=abc"], ["weight_decay", "number"]),
        (["--set", "optimizer=sgd", "--set", "momentum=abc"], ["momentum", "number"]),
        (["--method", "chts", "--set", "engine.total_steps=abc"], ["total_steps", "whole number"]),
        (["--set", "engine.early_stop=abc"], ["early_stop", "true or false"]),
        (["--set", "engine.sparsify_output=abc"], ["sparsify_output", "true or false"]),
        (["--set", "engine.early_stop=1"], ["early_stop", "true or false"]),
        (["--set", "engine.chain=[[1, 2]]"], ["chain", "pairs"]),
        (["--set", "engine.hebb={lr: abc}"], ["hebb", "lr"]),
        (["--set", "engine.method=[1]"], ["method", "string"]),
        (["--set", "seed=-1"], ["seed", "whole number"]),
        (["--set", "lr=abc"], ["lr", "number"]),
        (["--set", "model=[1]"], ["model", "string"]),
        (["--device", "banana"], ["banana", "valid devices"]),
        (["--device", "meta"], ["meta", "valid devices"]),
        (["--device", "mps"] if not (torch.backends.mps.is_available()) else ["--device", "banana"], ["m", "device"]),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:999"], ["cuda", "GPU"]),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args, names, tmp_path, capsys):
    code, _, err = run_cli(["train", *TINY, "--max-steps", "1", "--out", tmp_path / "run", *args], capsys)
    assert code == 2, err
    line = error_line(err)
    for name in names:
        assert name in line, line
    assert not (tmp_path / "run" / "latest.pt").exists()


@pytest.mark.parametrize("value, expected", [("1e-3", 0.001), ("3e-1", 0.3), ("2E-2", 0.02)])
def test_exponent_numbers_are_numbers(value, expected):
    from chsnn.train import resolve_config

    cfg = resolve_config(None, None, [f"lr={value}", f"engine.zeta={value}"])
    assert cfg["lr"] == expected and cfg["engine"]["zeta"] == expected


def test_exponent_number_runs(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", *TINY, "--max-steps", "1", "--set", "lr=1e-3", "--set", "engine.zeta=3e-1", "--out", tmp_path / "r"], capsys
    )
    assert code == 0, err
    import yaml

    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["lr"] == 0.001 and cfg["engine"]["zeta"] == 0.3


def test_a_key_given_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("model: snn-mlp\ndata: digits\nlr: 0.01\nepochs: 1\nlr: 0.1\n")
    code, _, err = run_cli(["train", "--config", config, "--max-steps", "1", "--out", tmp_path / "r", "--quiet"], capsys)
    assert code == 2
    line = error_line(err)
    assert "twice.yaml" in line and "'lr' is given twice" in line and "lines 3 and 5" in line
    code, _, err = run_cli(["train", *TINY, "--set", "engine={zeta: 0.1, zeta: 0.2}", "--out", tmp_path / "r2"], capsys)
    assert code == 2 and "'zeta' is given twice" in error_line(err)


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    for out in (f, f / "run"):
        code, _, err = run_cli(["train", *TINY, "--max-steps", "1", "--out", out], capsys)
        assert code == 2
        assert "a_file" in error_line(err) and "file" in err


def test_out_that_cannot_be_made(tmp_path, capsys):
    code, _, err = run_cli(["train", *TINY, "--max-steps", "1", "--out", "/proc/chsnn-no-such/run"], capsys)
    assert code == 2
    assert "/proc/chsnn-no-such/run" in error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot be tested")
@pytest.mark.parametrize("inside", [False, True])
def test_out_not_writable(inside, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "run" if inside else locked
        code, _, err = run_cli(["train", *TINY, "--max-steps", "1", "--out", out], capsys)
        assert code == 2
        assert "not writable" in error_line(err)
    finally:
        locked.chmod(0o700)


def test_ctrl_c_saves_says_so_and_resumes_with_whole_epoch_metrics(tmp_path, capsys):
    """Ctrl-C (a real SIGINT at step 5) exits 130 with no traceback; the
    resumed epoch's train loss and accuracy equal an uninterrupted run's."""
    args = ["train", *TINY, "--epochs", "1", "--method", "set", "--sparsity", "0.8"]
    code, _, err = run_process([*args, "--out", tmp_path / "cut"], env_extra={faults.FAULT_ENV: "0:5:sigint"})
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted: state saved to" in err and "--resume" in err
    ckpt = torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)
    assert ckpt["step_in_epoch"] == 5 and ckpt["epoch_partial"]["seen"] == 5 * 128
    assert run_cli(["train", "--resume", "--out", tmp_path / "cut", "--quiet"], capsys)[0] == 0
    assert run_cli([*args, "--out", tmp_path / "straight"], capsys)[0] == 0
    cut, straight = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("cut", "straight"))
    assert len(cut) == len(straight) == 1
    for key in ("loss", "train_accuracy", "test_accuracy", "step"):
        assert cut[0][key] == pytest.approx(straight[0][key], rel=1e-12), key


def test_a_closed_pipe_ends_quietly():
    """`chsnn zoo | head -1`: the reader goes away before chsnn writes; no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "chsnn", "zoo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    proc.stdout.close()  # chsnn is still importing torch: every line it prints meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# 3. --resume with other options -------------------------------------------------------


def test_resume_refuses_options_that_change_the_run(good_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    before = sha(run / "latest.pt")
    code, _, err = run_cli(
        [
            "train",
            "--resume",
            "--out",
            run,
            "--epochs",
            "4",
            "--method",
            "rigl",
            "--sparsity",
            "0.5",
            "--set",
            "lr=0.1",
            "--seed",
            "7",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2
    line = error_line(err)
    for text in (
        "--epochs 4 (the run has 2)",
        "--method rigl (the run has 'set')",
        "--sparsity 0.5",
        "--set lr=0.1",
        "--seed 7 (the run has 0)",
    ):
        assert text in line, line
    assert sha(run / "latest.pt") == before
    # options equal to the saved ones, and --device / --max-steps, are fine
    code, _, err = run_cli(
        [
            "train",
            "--resume",
            "--out",
            run,
            "--epochs",
            "2",
            "--method",
            "set",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--max-steps",
            "16",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    code, _, err = run_cli(["train", "--resume", "--out", run, "--smoke"], capsys)
    assert code == 2 and "--smoke" in error_line(err)


# 6. Metrics of a new run -------------------------------------------------------------


def test_a_new_run_does_not_append_to_old_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 123.0}) + "\n" + json.dumps({"epoch": 2, "loss": 99.0}) + "\n")
    code, _, err = run_cli(["train", *TINY, "--max-steps", "2", "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["loss"] != 123.0


# 8. Data messages ---------------------------------------------------------------------


def _labels_npz(path: Path, y_train: np.ndarray):
    x = np.zeros((len(y_train), 4), np.float32)
    np.savez(path, x_train=x, y_train=y_train, x_test=x[:2], y_test=np.zeros(2, np.int64))


@pytest.mark.parametrize(
    "labels, expected",
    [
        (np.array([0, 1, 10**9], np.int64), "label 1000000000"),
        (np.array([0, 1, 2**64 - 1], np.uint64), "label 18446744073709551615"),
        (np.array([0, -3], np.int32), "negative label (-3)"),
    ],
)
def test_label_faults_named(labels, expected, tmp_path, capsys):
    path = tmp_path / "d.npz"
    _labels_npz(path, labels)
    code, _, err = run_cli(
        ["train", "--data", f"npz:{path}", "--model", "mlp", "--max-steps", "1", "--out", tmp_path / "r", "--quiet"], capsys
    )
    assert code == 2
    line = error_line(err)
    assert expected in line and "d.npz" in line and "y_train" in line


def test_idx_header_with_huge_dims_gives_real_numbers(tmp_path):
    from chsnn.data._base import DataError
    from chsnn.data.idx import read_idx

    path = tmp_path / "huge-idx3-ubyte"
    dims = [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF]
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in dims) + b"\0" * 10)
    with pytest.raises(DataError) as err:
        read_idx(path, ndim=3)
    assert str((2**32 - 1) ** 3) in str(err.value) and "-" not in str(err.value).split("need")[1]


def test_a_relative_npz_path_is_stored_resolved(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path / "data.npz")
    code, _, err = run_cli(["train", "--data", "npz:data.npz", "--model", "mlp", "--max-steps", "1", "--out", "run", "--quiet"], capsys)
    assert code == 0, err
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"] == f"npz:{tmp_path / 'data.npz'}"
    monkeypatch.chdir(tmp_path.parent)
    code, out, err = run_cli(["eval", tmp_path / "run"], capsys)
    assert code == 0, err


# Any value for any key: a run or a clear error ----------------------------------------


def _config_keys() -> list[str]:
    import dataclasses

    from chsnn.sparse import EngineConfig
    from chsnn.train import DEFAULTS

    return sorted(DEFAULTS) + [f"engine.{f.name}" for f in dataclasses.fields(EngineConfig)]


def _values():
    from hypothesis import strategies as st

    # Bounded: whole numbers up to 10^6 (an option like time_steps or a model
    # width of 10^12 would ask for that much memory, which is the user's call,
    # not a traceback); floats include nan and inf.
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["abc", "auto", "cpu", "chsnn", "set", "rigl", "random", "CH3", "sgd", "cosine", "1e-3", "3e-1", "[1, 2]"]),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.dictionaries(st.sampled_from(["lr", "hidden", "width", "a", "n_train"]), scalars, max_size=2),
    )


def _tiny_run_args(tmp: Path) -> list[str]:
    return [
        "train",
        "--data",
        "random",
        "--set",
        "data_options={input_shape: [6], n_classes: 3, n_train: 8, n_test: 4, kind: static}",
        "--model",
        "mlp",
        "--set",
        "model_options.width=0.003",
        "--set",
        "batch_size=4",
        "--set",
        "eval_batch_size=4",
        "--method",
        "set",
        "--sparsity",
        "0.5",
        "--max-steps",
        "1",
        "--quiet",
        "--out",
        str(tmp),
    ]


def test_any_value_for_any_key_gives_a_run_or_a_clear_error(tmp_path_factory, capsys):
    """Hypothesis draws a key (every top-level key and every engine.* key)
    and a value of a random type (None, bool, int, float with nan/inf, text,
    lists, small mappings), passed as ``--set KEY=VALUE`` to a tiny real run
    (an 8-sample random data set, a 2-unit MLP, one step). What it covers:
    one key at a time, 80 examples per test run (hypothesis varies them across
    runs), whole numbers bounded by 10^6. Each must exit 0 (a run, with its
    summary.json) or 2 with one error line (validation errors name the key;
    an error found later, e.g. a data set the model cannot take, names what
    does not fit); an exception escaping the CLI (a traceback) fails it."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    counter = iter(range(10**9))
    outcomes = {0: 0, 2: 0}

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(key=st.sampled_from(_config_keys()), value=_values())
    def check(key, value):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        if text.endswith("\n..."):
            text = text[: -len("\n...")]
        text = text.removesuffix("...").strip()
        out = tmp_path_factory.getbasetemp() / f"any{next(counter)}"
        code = main([*_tiny_run_args(out), "--set", f"{key}={text}"])
        captured = capsys.readouterr()
        assert code in (0, 2), (key, text, captured.err)
        if code == 0:
            assert (out / "summary.json").is_file()
        else:
            line = error_line(captured.err)  # one line, no traceback
            assert len(line) > len("chsnn train: error: ") + 20, line
        outcomes[code] += 1

    check()
    assert outcomes[0] and outcomes[2]  # both kinds happened: the probe is not all refusals
