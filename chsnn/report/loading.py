"""A run directory as the report reads it, and the energy accounting of its model."""

from __future__ import annotations

import sys
from pathlib import Path

from chsnn.rundir import CONFIG, METRICS, SUMMARY, RunDir


def check_run_dir(run_dir) -> Path:
    """The run directory, or a clear error saying why it is not one."""
    run = RunDir(run_dir).require()
    marks = [n for n in (SUMMARY, CONFIG, METRICS, "latest.pt", "best.pt") if run.file(n).is_file()]
    if not marks:
        raise ValueError(
            f"{run.path} is not a chsnn run directory: it holds none of summary.json, config.yaml, metrics.jsonl, latest.pt, best.pt"
        )
    if not run.file(SUMMARY).is_file():
        raise FileNotFoundError(f"{run.path} has no {SUMMARY}; did its training finish? (`chsnn train --resume --out {run.path}`)")
    if not run.checkpoints():
        raise FileNotFoundError(f"{run.path} holds no checkpoint (latest.pt or best.pt)")
    return run.path


class ProgressList(list):
    """A list of batches that shows a tqdm bar while it is iterated."""

    def __init__(self, items, desc: str):
        super().__init__(items)
        self.desc = desc

    def __iter__(self):
        from tqdm import tqdm

        with tqdm(total=len(self), desc=self.desc, unit="batch", leave=False, disable=not sys.stderr.isatty()) as bar:
            for item in super().__iter__():
                yield item
                bar.update(1)


def account_energy_of(run_dir: Path, ckpt: dict, pj_per_ac: float, pj_per_mac: float) -> tuple[dict, dict]:
    """Energy accounting of the checkpoint's model on its test set, and its parameter counts."""
    import torch

    from chsnn.energy import account_energy
    from chsnn.trainer import Runner

    runner = Runner(ckpt["config"])
    runner.restore(ckpt)
    batches = ProgressList(
        [runner.prepare(x) for x, _ in runner.batches(runner.data.test, runner.cfg["eval_batch_size"], epoch=-1)],
        desc=f"energy {run_dir.name}",
    )
    model = runner.model
    model.eval()
    with torch.no_grad():
        result = account_energy(model, batches, pj_per_ac=pj_per_ac, pj_per_mac=pj_per_mac)
    dense_params = sum(p.numel() for p in model.parameters())
    pruned = sum(int((~m.bool()).sum()) for m in ckpt["engine"].get("masks", {}).values())
    links = sum(int(m.bool().sum()) for m in ckpt["engine"].get("masks", {}).values())
    params = {"existing": dense_params - pruned, "dense": dense_params, "sparse_layer_links": links}
    return result, params
