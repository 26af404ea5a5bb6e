"""What a finished run reports: summary.json's figures, the one-screen
summary, and the TensorBoard scalars of each epoch."""

from __future__ import annotations

from pathlib import Path

from chsnn import distributed
from chsnn.bench import machine_description
from chsnn.sparse import SparseEngine


def make_summary(runner, history: list, wall: float) -> dict:
    """The final figures. In a multi-process run every rank calls it (it
    runs collectives); ``ranks_agree``: all ranks hold the same masks and
    parameters (always true for one process)."""
    cfg, engine = runner.cfg, runner.engine
    last = history[-1] if history else runner.evaluate()
    layers = []
    topology = engine.topology_summary()
    for s in engine.stats():
        row = {k: s[k] for k in ("name", "shape", "density", "active_in", "active_out")}
        for k in ("kernel_active_min", "kernel_active_max"):
            if k in s:
                row[k] = s[k]
        # how far the topology evolved: turnover, the step it froze, the overlaps
        row.update(topology.get(s["name"], {}))
        layers.append(row)
    summary = {
        "method": engine.config.method,
        "dataset": cfg["data"],
        "model": cfg["model"],
        "seed": cfg["seed"],
        "epochs": len(history),
        "steps": engine.step_count,
        "test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max((h["test_accuracy"] for h in history), default=last["test_accuracy"]),
        "sparsity": engine.sparsity(),
        "percolation": engine.percolation(),
        "layers": layers,
        "dense_output": engine.dense_output,
        "topology_updates": engine.n_updates,
        "update_interval": engine.config.update_interval,  # steps between updates, as resolved for this run
        "reinitialised_at_step": engine.reinitialised_at,  # reinit_fraction's second draw (None: none)
        "heads": attention_heads(engine),
        "wall_seconds": wall,
        "device": str(runner.device),
        # tables rebuilt elsewhere later must still name the machine that trained
        "machine": machine_description(runner.device, brief=True),
        "precision": runner.precision,
        "world_size": runner.world,
        "ranks_agree": distributed.ranks_agree(engine, runner.model),
        "data_note": getattr(runner.data, "note", ""),
    }
    if runner.spiking:
        summary["sops_per_sample"] = last.get("sops_per_sample")
        summary["firing_rates"] = last.get("firing_rates", {})
    for key in ("macs_per_sample", "energy_pj_per_sample", "dense_energy_pj_per_sample"):
        summary[key] = last.get(key)
    return summary


def attention_heads(engine: SparseEngine) -> dict:
    """Per attention layer: heads whose q, k and v blocks all keep links.
    Row groups come from the model's ``head_groups``, ordered q heads, then
    k heads, then v heads (chsnn.models.spikformer)."""
    out = {}
    for name, g in engine.active_groups().items():
        n_heads = g["total"] // 3
        alive = g["alive"]
        heads = sum(all(alive[s * n_heads + h] for s in range(3)) for h in range(n_heads))
        out[name] = {"active": heads, "total": n_heads, "qkv_blocks_active": g["active"], "qkv_blocks": g["total"]}
    return out


def summary_screen(summary: dict, out_dir: Path) -> str:
    lines = [
        "",
        f"{summary['model']} on {summary['dataset']}, method {summary['method']}, seed {summary['seed']}",
        f"  test accuracy  {summary['test_accuracy']:.4f}  (best {summary['best_test_accuracy']:.4f})",
        f"  sparsity       {summary['sparsity']:.4f} over the sparse layers; percolation {summary['percolation']:.3f}",
        f"  epochs {summary['epochs']}, steps {summary['steps']}, topology updates {summary['topology_updates']}, "
        f"{summary['wall_seconds']:.1f} s on {summary['device']}",
    ]
    if summary.get("world_size", 1) > 1:
        agree = "masks and weights agree" if summary.get("ranks_agree") else "MASKS OR WEIGHTS DIFFER between ranks"
        lines.append(f"  ranks          {summary['world_size']} processes, data-parallel; {agree}")
    if summary.get("precision", "fp32") != "fp32":
        lines.append(f"  precision      {summary['precision']} forward passes (autocast)")
    for name, g in (summary.get("heads") or {}).items():
        lines.append(f"  heads          {g['active']}/{g['total']} attention heads active in {name}")
    if summary.get("sops_per_sample") is not None:
        lines.append(f"  synaptic ops   {summary['sops_per_sample']:.4g} per sample")
    if summary.get("energy_pj_per_sample") is not None:
        dense = summary.get("dense_energy_pj_per_sample")
        ratio = f" ({summary['energy_pj_per_sample'] / dense:.3f} of the same model dense)" if dense else ""
        lines.append(f"  energy         {summary['energy_pj_per_sample'] / 1e6:.4g} uJ per sample at 45 nm{ratio}")
    lines.append("  layer                          shape            density   active in/out   turnover  froze at")
    for layer in summary["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        frozen = layer.get("frozen_at_step")
        evolved = f"   {layer.get('turnover', 0.0):>8.3f}  {'-' if frozen is None else f'step {frozen}'}"
        lines.append(
            f"  {layer['name']:<30} {shape:<16} {layer['density']:.4f}    "
            f"{str(layer['active_in']) + '/' + str(layer['active_out']):<15}{evolved}"
        )
    if summary.get("dense_output"):
        lines.append(f"  {summary['dense_output']:<30} (output layer, dense)")
    redrawn = summary.get("reinitialised_at_step")
    if redrawn:
        lines.append(f"  initialisation drawn again at step {redrawn} (reinit_fraction); turnover counts from there")
    lines.append(f"  run directory: {out_dir}")
    return "\n".join(lines)


def tensorboard_writer(path: Path):
    """A TensorBoard SummaryWriter logging into ``path``, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(path))


def log_tensorboard(writer, row: dict) -> None:
    """One epoch's metrics row as TensorBoard scalars (nothing without a writer)."""
    if writer is None:
        return
    e = row["epoch"]
    for key in ("loss", "train_accuracy", "test_accuracy", "test_loss", "sparsity", "percolation", "lr"):
        writer.add_scalar(key, row[key], e)
    for layer in row["layers"]:
        writer.add_scalar(f"density/{layer['name']}", layer["density"], e)
        writer.add_scalar(f"active_out/{layer['name']}", layer["active_out"], e)
    for name, rate in row["firing_rates"].items():
        writer.add_scalar(f"firing_rate/{name}", rate, e)
    writer.flush()
