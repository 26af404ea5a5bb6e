"""Benchmarks that write their tables into BENCHMARKS.md.

Each benchmark owns one section per device kind, delimited by HTML comments,
so a CPU run and a GPU run (on another machine) update their own tables.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chsnn.linkpred import ch_scores, count_l3_paths


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | str | None = None, brief: bool = False) -> str:
    """One line naming the hardware and software a figure was measured on:
    the GPU of a CUDA device, else the CPU and its core count. ``brief``
    (what summary.json records for a run): the hardware and torch's version."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if brief:
            return f"{name}, torch {torch.__version__}"
        props = torch.cuda.get_device_properties(device)
        hw = f"{name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        if brief:
            return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
        hw = f"{cpu_name()}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads"
    return f"{hw}; Python {platform.python_version()}, torch {torch.__version__}"


def random_mask(n_out: int, n_in: int, density: float, device, seed: int = 0) -> torch.Tensor:
    """Exactly ``round(density * n_out * n_in)`` links placed uniformly at random."""
    gen = torch.Generator(device=device).manual_seed(seed)
    k = round(density * n_out * n_in)
    idx = torch.randperm(n_out * n_in, generator=gen, device=device)[:k]
    mask = torch.zeros(n_out * n_in, dtype=torch.bool, device=device)
    mask[idx] = True
    return mask.view(n_out, n_in)


def time_call(fn, device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup``."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


@dataclass
class LinkpredCase:
    n_in: int
    n_out: int
    density: float
    gpu_only: bool = False
    target_ms: dict | None = None  # device type -> target for CH3 exact

    @property
    def label(self) -> str:
        return f"{self.n_in}x{self.n_out} at {self.density:.0%}"


LINKPRED_CASES = [
    LinkpredCase(784, 1568, 0.01, target_ms={"cpu": 40}),
    LinkpredCase(1568, 1568, 0.01),
    LinkpredCase(1024, 1024, 0.05, target_ms={"cpu": 500}),
    LinkpredCase(4096, 4096, 0.01, gpu_only=True, target_ms={"cuda": 20}),
]


def bench_linkpred(device: torch.device, repeats: int = 7, progress: bool = True) -> list[dict]:
    """Time CH3 ``exact`` and ``node`` on the issue's random masks."""
    from tqdm import tqdm

    cases = [c for c in LINKPRED_CASES if device.type != "cpu" or not c.gpu_only]
    rows = []
    bar = tqdm(total=2 * len(cases), desc=f"linkpred on {device.type}", disable=not progress, leave=False)
    for case in cases:
        mask = random_mask(case.n_out, case.n_in, case.density, device)
        paths = count_l3_paths(mask)
        for method in ("exact", "node"):
            bar.set_postfix_str(f"{case.label} {method}")
            times = time_call(lambda: ch_scores(mask, "CH3", method), device, repeats)
            target = (case.target_ms or {}).get(device.type) if method == "exact" else None
            median_ms = statistics.median(times) * 1e3
            rows.append(
                {
                    "layer (in x out)": case.label,
                    "links": int(mask.sum()),
                    "L3 paths": paths,
                    "method": method,
                    "median ms": median_ms,
                    "min ms": min(times) * 1e3,
                    "ns / path": median_ms * 1e6 / max(paths, 1),
                    "target ms": target,
                    "meets": None if target is None else median_ms <= target,
                }
            )
            bar.update()
    bar.close()
    return rows


def markdown_table(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, float):
            return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section delimited by ``<!-- key -->`` markers."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures measured by the commands shown above each table.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def linkpred_report(device: torch.device, rows: list[dict], command: str) -> str:
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## CH3-L3 link prediction on {device.type.upper()}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine_description(device)}  \n"
        f"Measured: {when}; float64; median of the timed runs after 2 warm-up calls.\n\n" + markdown_table(rows) + "\n"
    )


def _run(key: str, devices: list[str], out: Path | None, measure) -> int:
    """Measure on each device; print each report and write it to ``out``
    under ``<!-- bench:<key>:<device type> -->``."""
    for name in devices:
        device = torch.device(name)
        report = measure(device)
        print(report)
        if out is not None:
            write_section(out, f"bench:{key}:{device.type}", report)
            print(f"written to {out}")
    return 0


def run_linkpred(devices: list[str], repeats: int, out: Path | None, progress: bool = True, command: str | None = None) -> int:
    if command is None:
        command = "chsnn bench linkpred " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    return _run(
        "linkpred",
        devices,
        out,
        lambda device: linkpred_report(device, bench_linkpred(device, repeats=repeats, progress=progress), command.strip()),
    )


# Sparse engine ---------------------------------------------------------------

ENGINE_SIZES = (784, 1568, 1568, 1568, 10)
ENGINE_SPARSITY = 0.99
ENGINE_UPDATE_METHODS = ("chsnn", "cht", "set")
ENGINE_UPDATE_TARGET_MS = {"cpu": 300}  # chsnn, median wall time of one update
ENGINE_OVERHEAD_TARGET = 0.10  # engine without updates against the bare dense model
ENGINE_UPDATE_INTERVAL = 100  # the "realistic" interval of the amortised row
ENGINE_WARMUP_UPDATES = 2
ENGINE_BLOCK = 10  # training steps per model in a row in the overhead test
ENGINE_WARMUP_STEPS = 5


def engine_mlp(sizes=ENGINE_SIZES) -> torch.nn.Sequential:
    """Flatten, then Linear + ReLU between ``sizes``, a plain Linear last."""
    from torch import nn

    layers: list = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _engine_batches(device: torch.device, n: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random (x in [0, 1), class) batches, drawn on the CPU so every
    device trains on the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(batch, ENGINE_SIZES[0], generator=gen)
        y = torch.randint(0, ENGINE_SIZES[-1], (batch,), generator=gen)
        out.append((x.to(device), y.to(device)))
    return out


def _engine_model(device: torch.device, optimizer: str, engine_options: dict | None, calibration):
    """A freshly seeded MLP (identical initial weights every call), its
    optimizer, and a SparseEngine on it when ``engine_options`` is given."""
    from chsnn.sparse import SparseEngine

    torch.manual_seed(0)
    model = engine_mlp().to(device)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif optimizer == "adam-fused":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    engine = None
    if engine_options is not None:
        options = {"sparsity": ENGINE_SPARSITY, "early_stop": False, **engine_options}
        engine = SparseEngine(model, opt, options, calibration=calibration)
    return model, opt, engine


def _train_step(model, opt, batches: list, counter: list[int]) -> None:
    """One ordinary step (the engine, if any, runs inside ``opt.step()``)."""
    x, y = batches[counter[0] % len(batches)]
    counter[0] += 1
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def bench_engine_updates(device: torch.device, repeats: int = 15, progress: bool = True) -> tuple[list[dict], list[str]]:
    """Time ``engine.update_topology()`` on the MLP for each method, with one
    Adam step (batch 64) before every update; returns the rows and the
    descriptions of the L1, L2... columns."""
    from tqdm import tqdm

    calibration = [(_engine_batches(device, 1, 128, seed=1)[0][0], None)]
    batches = _engine_batches(device, 8, 64, seed=2)
    total = len(ENGINE_UPDATE_METHODS) * (ENGINE_WARMUP_UPDATES + repeats)
    bar = tqdm(total=total, desc=f"engine updates on {device.type}", disable=not progress, leave=False)
    rows, layer_names = [], []
    for method in ENGINE_UPDATE_METHODS:
        bar.set_postfix_str(method)
        model, opt, engine = _engine_model(device, "adam", {"method": method, "update_interval": 0}, calibration)
        layer_names = [f"{t.name} ({t.n_in}->{t.n_out})" for t in engine.targets]
        counter = [0]
        records, walls = [], []
        for i in range(ENGINE_WARMUP_UPDATES + repeats):
            _train_step(model, opt, batches, counter)
            got = []
            wall = time_call(lambda: got.append(engine.update_topology()), device, repeats=1, warmup=0)[0]
            if i >= ENGINE_WARMUP_UPDATES:
                records.append(got[0])
                walls.append(wall * 1e3)
            bar.update()
        engine.remove()
        total_ms = [r["ms"] for r in records]
        median_wall = statistics.median(walls)
        target = ENGINE_UPDATE_TARGET_MS.get(device.type) if method == "chsnn" else None
        row = {
            "method": method,
            "regrowth": engine.config.regrowth + (f" {engine.config.linkpred}" if engine.config.regrowth.startswith("CH") else ""),
            "updates": len(records),
            "median ms": statistics.median(total_ms),
            "min ms": min(total_ms),
            "wall median ms": median_wall,
            "wall min ms": min(walls),
        }
        layer_ms = [[layer["ms"] for layer in r["layers"]] for r in records]
        for j in range(len(layer_names)):
            row[f"L{j + 1} ms"] = statistics.median(ms[j] for ms in layer_ms)
        row["rest ms"] = statistics.median(r["ms"] - sum(ms) for r, ms in zip(records, layer_ms))
        row["target ms"] = target
        row["meets"] = None if target is None else median_wall <= target
        rows.append(row)
    bar.close()
    return rows, layer_names


def _percent(x: float) -> str:
    return f"{x:+.1%}"


def bench_engine_overhead(device: torch.device, steps: int = 200, block: int = ENGINE_BLOCK, progress: bool = True) -> list[dict]:
    """Per-step training time of the dense MLP with no engine against the
    same MLP under the chsnn engine (no topology updates; and updates every
    ENGINE_UPDATE_INTERVAL steps), interleaved in blocks of ``block`` steps
    whose order rotates each round, for SGD with momentum and for Adam."""
    from tqdm import tqdm

    rounds = max(1, -(-steps // block))
    steps = rounds * block
    calibration = [(_engine_batches(device, 1, 128, seed=1)[0][0], None)]
    batches = _engine_batches(device, 8, 128, seed=3)
    variants = [
        ("dense, no engine", None),
        ("chsnn engine, no topology updates", {"method": "chsnn", "update_interval": 0}),
        (f"chsnn engine, update every {ENGINE_UPDATE_INTERVAL} steps", {"method": "chsnn", "update_interval": ENGINE_UPDATE_INTERVAL}),
    ]
    optimizers = [("sgd", "SGD, momentum 0.9"), ("adam", "Adam (default, for-loop)"), ("adam-fused", "Adam (fused=True)")]
    warmup = ENGINE_WARMUP_STEPS
    bar = tqdm(
        total=len(optimizers) * len(variants) * (steps + warmup),
        desc=f"engine overhead on {device.type}",
        disable=not progress,
        leave=False,
    )
    rows = []
    for opt_key, opt_label in optimizers:
        runs = []
        for label, options in variants:
            model, opt, engine = _engine_model(device, opt_key, options, calibration)
            run = {"label": label, "model": model, "opt": opt, "engine": engine, "counter": [0], "times": []}
            time_call(lambda run=run: _train_step(run["model"], run["opt"], batches, run["counter"]), device, repeats=0, warmup=warmup)
            bar.update(warmup)
            run["updates_before"] = engine.n_updates if engine is not None else 0
            runs.append(run)
        for r in range(rounds):
            bar.set_postfix_str(f"{opt_label}, round {r + 1}/{rounds}")
            for run in runs[r % len(runs) :] + runs[: r % len(runs)]:
                run["times"] += time_call(
                    lambda: _train_step(run["model"], run["opt"], batches, run["counter"]), device, repeats=block, warmup=0
                )
                bar.update(block)
        dense_median = statistics.median(runs[0]["times"]) * 1e3
        for i, run in enumerate(runs):
            engine = run["engine"]
            median = statistics.median(run["times"]) * 1e3
            # Topology updates inside the timed steps, by the engine's own clock,
            # spread over the steps: robust where a mean would take in noise.
            timed_updates = engine.records[len(engine.records) - (engine.n_updates - run["updates_before"]) :] if engine is not None else []
            update_share = sum(r["ms"] for r in timed_updates) / len(run["times"])
            checked = i == 1  # the target is for the engine without topology updates
            rows.append(
                {
                    "optimizer": opt_label,
                    "model": run["label"],
                    "steps": len(run["times"]),
                    "median ms / step": median,
                    "mean ms / step": statistics.fmean(run["times"]) * 1e3,
                    "updates timed": len(timed_updates),
                    "update ms / step": update_share,
                    "overhead (median)": None if engine is None else _percent(median / dense_median - 1),
                    "overhead with updates": None if engine is None else _percent((median + update_share) / dense_median - 1),
                    "target": f"<= {ENGINE_OVERHEAD_TARGET:.0%}" if checked else None,
                    "meets": (median / dense_median - 1 <= ENGINE_OVERHEAD_TARGET) if checked else None,
                }
            )
            if engine is not None:
                engine.remove()
    bar.close()
    return rows


class _OtherLoad:
    """CPU time that other processes took while a benchmark ran, as a
    fraction of all cores (from /proc/stat; None where it is missing)."""

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.busy, self.own, self.wall = self._busy(), os.times(), time.perf_counter()
        self.fraction = None
        return self

    def __exit__(self, *exc):
        busy = self._busy()
        if busy is None or self.busy is None:
            return
        own = os.times()
        own_s = (own.user + own.system) - (self.own.user + self.own.system)
        wall = time.perf_counter() - self.wall
        self.fraction = max(0.0, (busy - self.busy - own_s) / (wall * (os.cpu_count() or 1)))


def engine_report(
    device: torch.device,
    update_rows: list[dict],
    layer_names: list[str],
    overhead_rows: list[dict],
    command: str,
    other_load: float | None = None,
) -> str:
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sizes = "-".join(map(str, ENGINE_SIZES))
    layers = ", ".join(f"L{i + 1} = layer {name}" for i, name in enumerate(layer_names))
    load_note = f"; other processes used {other_load:.0%} of the CPU time meanwhile" if other_load is not None else ""
    if other_load is not None and other_load > 0.1:
        load_note += " (**busy machine: these figures are disturbed; rerun on an idle one**)"
    update_target = ENGINE_UPDATE_TARGET_MS.get(device.type)
    target_line = (
        f"Target: chsnn's median wall time per update <= {update_target} ms on this device kind.\n\n"
        if update_target is not None
        else "No update-time target for this device kind.\n\n"
    )
    updates = update_rows[0]["updates"] if update_rows else 0
    steps = overhead_rows[0]["steps"] if overhead_rows else 0
    return (
        f"## Sparse engine on {device.type.upper()}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine_description(device)}  \n"
        f"Measured: {when}{load_note}.\n\n"
        f"Model: a {sizes} MLP (ReLU, float32) at sparsity {ENGINE_SPARSITY:g} on its three hidden layers; "
        "the output layer stays dense. Random inputs in [0, 1), random classes, cross-entropy.\n\n"
        "### Topology update time\n\n"
        f"`engine.update_topology()` with `update_interval: 0`, Adam; before each update one training step "
        f"(batch 64) so the weights change; {updates} timed updates after {ENGINE_WARMUP_UPDATES} warm-up updates. "
        '`median`/`min ms` are the engine\'s own `record["ms"]`; `wall` is the time around the call '
        f"(synchronised on CUDA). Per-layer medians: {layers} (removal, regrowth and commit of that layer); "
        "`rest` is the remainder of the update (the calibration pass of LRS removal, chain removal, percolation). "
        "chsnn and cht calibrate on one batch of 128 random inputs.\n\n"
        + markdown_table(update_rows)
        + "\n\n"
        + target_line
        + "### Masked training overhead\n\n"
        f"Per optimizer step (forward, backward, step; batch 128), the same MLP with no engine at all and under the "
        f"chsnn engine, {steps} timed steps each after {ENGINE_WARMUP_STEPS} warm-up steps, interleaved in blocks of "
        f"{ENGINE_BLOCK} steps whose order rotates every round so machine noise falls on all of them alike. "
        "`updates timed` counts the topology updates that "
        'fell inside the timed steps and `update ms / step` is their total (the engine\'s `record["ms"]`) over the '
        "timed steps; overhead (median) = engine median / dense median - 1; overhead with updates adds "
        "`update ms / step` to the engine's median (the mean per step is shown too, but it also takes in machine noise).\n\n"
        + markdown_table(overhead_rows)
        + "\n\n"
        f"The {ENGINE_OVERHEAD_TARGET:.0%} target applies to the `no topology updates` rows only (overhead (median)): "
        "the cost of keeping weights and gradients masked. "
        f"The `update every {ENGINE_UPDATE_INTERVAL} steps` rows show what training really pays, "
        "the topology updates amortised over the interval (overhead with updates).\n\n"
        "Why default Adam pays more: its second moments are zero at the pruned positions (the engine zeroes them, "
        "as it must), and on CPU `torch.sqrt` of zeros runs several times slower than of ordinary values "
        "(measured here: 4.7 ms against 0.7 ms for a 1568x1568 tensor of 99% zeros), so the unfused Adam step "
        "itself slows down; the engine's own work is the same as with SGD. The fused CPU Adam (`fused=True`, "
        "which `chsnn train` uses) has no such slow path.\n"
    )


def bench_engine(
    device: torch.device, repeats: int = 15, steps: int = 200, progress: bool = True, command: str = "chsnn bench engine"
) -> str:
    """Both engine benchmarks on one device; returns the markdown section."""
    with _OtherLoad() as load:
        update_rows, layer_names = bench_engine_updates(device, repeats=repeats, progress=progress)
        overhead_rows = bench_engine_overhead(device, steps=steps, progress=progress)
    return engine_report(device, update_rows, layer_names, overhead_rows, command, load.fraction)


def run_engine(
    devices: list[str], repeats: int, out: Path | None, progress: bool = True, steps: int = 200, command: str = "chsnn bench engine"
) -> int:
    return _run("engine", devices, out, lambda device: bench_engine(device, repeats, steps, progress, command.strip()))
