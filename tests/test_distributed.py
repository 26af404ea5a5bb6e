"""Multi-process (data-parallel) training on CPU with gloo, and mixed precision.

The two-process runs start real processes: ``torchrun`` for the happy path and
a hung rank, and the environment ``torchrun`` sets (RANK, WORLD_SIZE, ...) by
hand for a killed rank, so the survivor's own error is what the test sees.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import faults
import numpy as np
import pytest
import torch
from torch import nn

from chsnn import distributed
from chsnn.cli import main
from chsnn.rundir import RunDir
from chsnn.sparse import SparseEngine

# Two sparse hidden layers (chain removal), static digits through the direct encoder.
TINY = [
    "--data", "digits", "--model", "snn-mlp", "--set", "model_options.hidden=[48,48]", "--set", "batch_size=100",
    "--set", "time_steps=4", "--set", "lr=0.01", "--method", "chsnn", "--sparsity", "0.9", "--set", "engine.update_interval=2",
]  # fmt: skip


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(faults.FAULT_ENV, None)
    env.update(extra)
    return env


def torchrun(args: list[str], cwd, timeout: float = 120, **env) -> tuple[subprocess.CompletedProcess, float]:
    # With a fault to inject, the ranks run chsnn through the test's fault script.
    chsnn = [str(faults.SCRIPT)] if faults.FAULT_ENV in env else ["-m", "chsnn"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *chsnn, *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _masks(ckpt: dict) -> dict:
    return ckpt["engine"]["masks"]


def test_two_ranks_agree_match_one_process_and_resume(tmp_path, capsys):
    """torchrun with 2 gloo ranks: world_size 2, ranks_agree, masks at the
    configured sparsity, only rank 0 writes; resumed on 2 ranks it ends where
    one process running straight through ends (the batch is global)."""
    out = tmp_path / "two"
    proc, seconds = torchrun(["train", *TINY, "--max-steps", "3", "--out", str(out), "--set", "dist_timeout=60"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True
    assert summary["steps"] == 3 and summary["topology_updates"] == 1
    ckpt = torch.load(out / "latest.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2
    masks = _masks(ckpt)
    assert len(masks) == 2
    for name, m in masks.items():
        assert int(m.sum()) == round(0.1 * m.numel()), name  # exactly the configured density
    # Only rank 0 wrote: one TensorBoard file, one metrics line, one summary screen, no leftovers.
    assert len(list((out / "tb").iterdir())) == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (proc.stdout + proc.stderr).count("run directory:") == 1
    assert "ranks          2 processes, data-parallel; masks and weights agree" in proc.stdout
    assert not list(out.glob("*.tmp"))

    # Resume on 2 ranks to step 6; one process straight to step 6 ends in the same place.
    proc, _ = torchrun(["train", "--resume", "--out", str(out), "--max-steps", "6", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main(["train", *TINY, "--max-steps", "6", "--quiet", "--out", str(tmp_path / "one")]) == 0, capsys.readouterr()
    two, one = (torch.load(p / "latest.pt", weights_only=False) for p in (out, tmp_path / "one"))
    assert two["engine"]["step"] == one["engine"]["step"] == 6 and two["engine"]["n_updates"] == one["engine"]["n_updates"] == 3
    for name in _masks(one):
        assert torch.equal(_masks(one)[name], _masks(two)[name]), name
    for key, value in one["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, two["model"][key], rtol=0, atol=1e-4, msg=key)
    s1, s2 = (json.loads((p / "summary.json").read_text()) for p in (tmp_path / "one", out))
    assert (s1["world_size"], s1["ranks_agree"], s2["world_size"], s2["ranks_agree"]) == (1, True, 2, True)
    assert s1["test_accuracy"] == pytest.approx(s2["test_accuracy"], abs=0.01)
    assert s1["firing_rates"].keys() == s2["firing_rates"].keys()
    for k in s1["firing_rates"]:
        assert s1["firing_rates"][k] == pytest.approx(s2["firing_rates"][k], abs=1e-3)
    # Both write predictions.npz: the two ranks' parts gathered back into test-set order (the labels of the
    # one-process run, which scores in order), and each file's own accuracy is its summary's.
    (l1, p1), (l2, p2) = (RunDir(p).predictions() for p in (tmp_path / "one", out))
    assert len(l1) == 359 and np.array_equal(l1, l2)
    assert (l1 == p1).mean() == pytest.approx(s1["test_accuracy"]) and (l2 == p2).mean() == pytest.approx(s2["test_accuracy"])
    assert (p1 == p2).mean() > 0.95


def test_hung_rank_fails_with_a_clear_message_under_torchrun(tmp_path):
    """Rank 1 hangs after step 2: rank 0 gives up after dist_timeout, says
    why, and torchrun ends the run non-zero (no hang)."""
    out = tmp_path / "hung"
    proc, seconds = torchrun(
        ["train", *TINY, "--max-steps", "6", "--quiet", "--out", str(out), "--set", "dist_timeout=4"],
        tmp_path,
        timeout=90,
        **{faults.FAULT_ENV: "1:2:hang"},
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "rank 0 of 2 lost contact with the other ranks (a rank died or hung; see its log); timeout 4 s (dist_timeout)" in text, text
    assert seconds < 60
    assert not (out / "summary.json").exists()


def test_killed_rank_fails_the_survivor_fast(tmp_path):
    """Rank 1 SIGKILLs itself after step 2 (launched as torchrun would, but
    without its agent): rank 0 exits 1 with the message at once, long before
    the 30 s timeout."""
    env = _env(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", **{faults.FAULT_ENV: "1:2:kill"}
    )
    args = [
        sys.executable,
        str(faults.SCRIPT),
        "train",
        *TINY,
        "--max-steps",
        "6",
        "--quiet",
        "--out",
        str(tmp_path / "killed"),
        "--set",
        "dist_timeout=30",
    ]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    seconds = time.monotonic() - t0
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1, outs[0]
    assert (
        "chsnn train: error: rank 0 of 2 lost contact with the other ranks (a rank died or hung; see its log); timeout 30 s (dist_timeout)"
        in outs[0][1]
    )
    assert "Traceback" not in outs[0][1]
    assert seconds < 60


# Helpers in a one-process gloo group --------------------------------------------------------


@pytest.fixture
def group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def test_helpers_in_a_one_process_group(group):
    assert distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    nested = {"b": torch.arange(3.0), "a": [2, 0.5, torch.ones(2, 2, dtype=torch.float32)], "n": 7}
    total = distributed.all_reduce(nested)
    assert list(total) == ["b", "a", "n"] and total["n"] == 7 and isinstance(total["n"], int)
    assert torch.equal(total["b"], torch.arange(3.0)) and total["a"][2].dtype == torch.float32
    assert distributed.all_reduce_mean(torch.tensor([4.0]))[0] == 4.0
    t = torch.tensor([True, False, True])
    assert torch.equal(distributed.broadcast_(t.clone()), t)
    rows = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(distributed.all_gather_rows(rows), rows)
    assert distributed.all_gather_object({"x": 1}) == [{"x": 1}]
    assert distributed.broadcast_object([1, "a"]) == [1, "a"]
    # gradients: summed in place; a parameter nobody has a gradient for stays None
    model = _mlp()
    model(torch.randn(8, 20)).sum().backward()
    model[4].bias.grad = None
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    distributed.all_reduce_grads(model.parameters())
    assert model[4].bias.grad is None
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p.grad, before[n])
    engine = SparseEngine(model, None, {"method": "set", "sparsity": 0.8, "update_interval": 1})
    assert distributed.ranks_agree(engine, model)
    h = distributed.mask_hash(engine)
    assert h == distributed.mask_hash(engine)
    engine.mask("0").view(-1)[0] ^= True
    assert distributed.mask_hash(engine) != h


def test_shard_sizes():
    for n in range(0, 9):
        sizes = [distributed.shard_size(n, 3, r) for r in range(3)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert sizes == [len(c) for c in torch.arange(n).tensor_split(3)]


def test_sync_hooks_change_nothing_for_one_rank(group):
    """The engine with DistributedSync in a 1-process group makes the same
    decisions as without it (every reduction and broadcast is exercised)."""
    x = torch.rand(64, 20)

    def build(sync):
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        cfg = {
            "method": "chsnn",
            "sparsity": 0.8,
            "update_interval": 2,
            "hebb": {"lr": 1e-3},
            "regrowth": "gradient",
            "rigl_accumulation": 2,
        }
        engine = SparseEngine(model, opt, cfg, calibration=[x], sync=sync)
        for _ in range(4):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return model, engine

    (m1, e1), (m2, e2) = build(None), build(distributed.DistributedSync())
    assert e1.n_updates == e2.n_updates == 2
    for t in e1.targets:
        assert torch.equal(e1.mask(t.name), e2.mask(t.name)), t.name
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(a, b), n


def test_timeout_and_fault_settings(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds(None) == distributed.DEFAULT_TIMEOUT
    assert distributed.timeout_seconds(12) == 12.0
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert distributed.timeout_seconds(12) == 7.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="CHSNN_DIST_TIMEOUT"):
        distributed.timeout_seconds(12)
    with pytest.raises(distributed.DistributedError, match="rank 0 of .* lost contact with the other ranks.*the test.*peer gone"):
        with distributed.guard("the test"):
            raise RuntimeError("peer gone")
    monkeypatch.setenv(faults.FAULT_ENV, "0:5:explode")
    faults.fault_point(4)  # another step: nothing
    with pytest.raises(ValueError, match="kill, exit, hang, sigint or nan"):
        faults.fault_point(5)


# Mixed precision ----------------------------------------------------------------------------------


def test_bf16_smoke_on_cpu(tmp_path, capsys):
    out = tmp_path / "bf16"
    args = ["train", "--smoke", "--data", "ndigits", "--set", "model_options.hidden=[32,32]", "--set", "batch_size=8", "--max-steps", "2",
            "--set", "engine.update_interval=1", "--set", "precision=bf16", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["topology_updates"] == 2
    assert (summary["world_size"], summary["ranks_agree"]) == (1, True)
    assert summary["sparsity"] == pytest.approx(0.95, abs=1e-3)
    ckpt = torch.load(out / "latest.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())  # weights stay fp32


def test_autocast_runs_the_forward_in_bf16():
    from chsnn.train import Runner, resolve_config

    cfg = resolve_config(None, {"data": "random", "model": "mlp", "device": "cpu"}, ["precision=bf16", "model_options.width=0.02",
                         "data_options={input_shape: [1, 8, 8], n_classes: 4, n_train: 8, n_test: 4, "
                         "kind: static, time_steps: null}", "engine.method=set"])  # fmt: skip
    runner = Runner(cfg)
    seen = []
    handle = runner.model.register_forward_hook(lambda m, a, y: seen.append(y.dtype))
    with runner.autocast():
        runner.model(torch.rand(2, 1, 8, 8))
    handle.remove()
    assert seen == [torch.bfloat16]
    x, y = runner.data.test.tensors()  # the 4 test samples: one evaluation batch
    with runner.autocast():
        logits = runner.model(x)
    scored = runner.evaluate()
    assert scored["test_accuracy"] == (logits.argmax(1) == y).float().mean().item()  # scored on the bf16 forward
    assert scored["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), y).item(), rel=1e-6)


def test_precision_errors(tmp_path, capsys):
    code = main(
        ["train", "--smoke", "--data", "ndigits", "--device", "cpu", "--set", "precision=fp16", "--out", str(tmp_path / "a"), "--quiet"]
    )
    assert code == 2 and "precision fp16 needs a CUDA device" in capsys.readouterr().err
    code = main(["train", "--smoke", "--data", "ndigits", "--set", "precision=fp8", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2 and "valid precisions are fp32, bf16, fp16" in capsys.readouterr().err
    code = main(["train", "--smoke", "--data", "ndigits", "--set", "dist_timeout=0", "--out", str(tmp_path / "c"), "--quiet"])
    assert code == 2 and "dist_timeout" in capsys.readouterr().err


def test_joining_on_a_cuda_device_makes_it_the_current_one(monkeypatch):
    """The CUDA branch of ``init`` runs without a GPU: set_device and the
    process group are stand-ins that record their calls."""
    from chsnn import distributed

    calls = []
    monkeypatch.setattr(distributed, "_timeout", distributed._timeout)  # restored after the test
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout: calls.append(("init", backend)))
    distributed.init(torch.device("cuda", 1), timeout=5)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
