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


def machine_description(device: torch.device) -> str:
    """One line naming the hardware and software a figure was measured on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        hw = f"{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads"
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
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## CH3-L3 link prediction on {device.type.upper()}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine_description(device)}  \n"
        f"Measured: {when}; float64; median of the timed runs after 2 warm-up calls.\n\n"
        + markdown_table(rows)
        + "\n"
    )


def run_linkpred(devices: list[str], repeats: int, out: Path | None, progress: bool = True) -> int:
    command = "chsnn bench linkpred " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    for name in devices:
        device = torch.device(name)
        rows = bench_linkpred(device, repeats=repeats, progress=progress)
        report = linkpred_report(device, rows, command.strip())
        print(report)
        if out is not None:
            write_section(out, f"bench:linkpred:{device.type}", report)
            print(f"written to {out}")
    return 0
