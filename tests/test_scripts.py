"""The run-analysis scripts (scripts/initial_topology.py, scripts/weight_scale.py) on a tiny finished run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=digits", "model_options.hidden=[48, 32]", "batch_size=128", "time_steps=4", "epochs=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from chsnn.train import resolve_config, train

    out = tmp_path_factory.mktemp("scripts") / "run"
    train(resolve_config(assignments=TINY), out, quiet=True)
    return out


def script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_initial_topology_reads_a_run_directory_or_its_config(run):
    by_dir = script("initial_topology.py", run)
    assert by_dir.returncode == 0, by_dir.stderr
    lines = by_dir.stdout.splitlines()
    assert lines[0].startswith(f"{run} (sparsity") and "init sscti" in lines[0]
    # one line per sparse layer, with its shape
    assert [line.split()[0] for line in lines[1:]] == ["hidden.0", "hidden.2"]
    assert "(48, 64)" in lines[1] and "(32, 48)" in lines[2]
    by_config = script("initial_topology.py", run / "config.yaml")
    assert by_config.returncode == 0 and by_config.stdout.splitlines()[1:] == lines[1:]


def test_weight_scale_reports_each_sparse_layer(run):
    proc = script("weight_scale.py", run, "--large", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("run: weight_init sswi, test accuracy ")
    layers = [line for line in lines if line.startswith("  hidden.")]
    assert [line.split(":")[0].strip() for line in layers] == ["hidden.0", "hidden.2"]
    assert all("at step 0" in line and "at the end" in line for line in layers)
    assert sum("neurons start with a std above 0" in line for line in lines) == 2


@pytest.mark.parametrize("name", ["initial_topology.py", "weight_scale.py"])
def test_scripts_name_a_path_that_is_not_a_run(name, tmp_path):
    proc = script(name, tmp_path / "missing")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'missing'}" in proc.stderr and "does not exist" in proc.stderr
