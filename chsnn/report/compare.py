"""Several runs side by side: ``comparison.{html,md,json}``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chsnn.report.figures import comparison_figure
from chsnn.report.loading import check_run_dir
from chsnn.report.page import fmt, json_default, page, table
from chsnn.report.render import render_report
from chsnn.rundir import RunDir, atomic_write, read_json


def load_or_render(run_dir: Path, pj_per_ac, pj_per_mac, rerender: bool) -> dict:
    """The run's report.json when it is newer than its checkpoints and used
    the same constants; else a freshly rendered report."""
    path = run_dir / "report" / "report.json"
    if not rerender and path.is_file():
        report = read_json(path)
        ckpts = [run_dir / name for name in RunDir(run_dir).checkpoints()]
        c = report.get("constants", {})
        fresh = all(p.stat().st_mtime <= path.stat().st_mtime for p in ckpts)
        same = (pj_per_ac is None or c.get("pj_per_ac") == pj_per_ac) and (pj_per_mac is None or c.get("pj_per_mac") == pj_per_mac)
        if fresh and same and "energy" in report:
            return report
    return render_report(run_dir, pj_per_ac=pj_per_ac, pj_per_mac=pj_per_mac)


def explanations(reports: list[dict]) -> list[dict]:
    from chsnn.energy import sops_ratio_explained

    out = []
    for r in reports:
        if r.get("method") == "dense":
            continue
        dense = next(
            (
                d
                for d in reports
                if d.get("method") == "dense" and d.get("model") == r.get("model") and d.get("dataset") == r.get("dataset")
            ),
            None,
        )
        if dense is None:
            continue
        ex = dict(sops_ratio_explained(r["energy"], dense["energy"]))
        ex.update(run=r["label"], dense_run=dense["label"])
        out.append(ex)
    return out


def render_comparison(run_dirs, out_dir, pj_per_ac: float | None = None, pj_per_mac: float | None = None, rerender: bool = False) -> dict:
    """Write ``out_dir/{comparison.html, comparison.md, comparison.json}`` for several runs.

    Each run's report is reused when report/report.json is newer than its
    checkpoints and used the same constants; otherwise it is rendered."""
    from tqdm import tqdm

    run_dirs = [check_run_dir(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("render_comparison: give at least one run directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for d in tqdm(run_dirs, desc="runs", unit="run", disable=not sys.stderr.isatty()):
        r = load_or_render(d, pj_per_ac, pj_per_mac, rerender)
        r = dict(r, label=d.name)
        reports.append(r)
    labels = [r["label"] for r in reports]
    for r in reports:  # runs from different parents may share a name
        if labels.count(r["label"]) > 1:
            r["label"] = str(Path(r["run_dir"]).relative_to(Path(r["run_dir"]).anchor))
    rows = []
    for r in reports:
        ps, dn = r["per_sample"], r["dense_baseline"]
        rows.append(
            {
                "run": r["label"],
                "run_dir": r["run_dir"],
                "method": r.get("method"),
                "model": r.get("model"),
                "dataset": r.get("dataset"),
                "seed": r.get("seed"),
                "sparsity": r.get("sparsity"),
                "test_accuracy": r.get("test_accuracy"),
                "sops_per_sample": ps.get("sops"),
                "macs_per_sample": ps.get("macs"),
                "energy_pj_per_sample": ps.get("energy_pj"),
                "dense_energy_pj_per_sample": dn.get("energy_pj"),
                "parameters": r["parameters"]["existing"],
                "dense_parameters": r["parameters"]["dense"],
            }
        )
    explained = explanations(reports)
    figure = comparison_figure(rows)
    result = {"runs": rows, "sops_explained": explained, "constants": reports[0].get("constants")}
    atomic_write(out_dir / "comparison.json", json.dumps(result, indent=2, default=json_default) + "\n")
    atomic_write(out_dir / "comparison.md", comparison_md(result))
    atomic_write(out_dir / "comparison.html", comparison_html(result, figure))
    return result


COMPARISON_COLUMNS = [
    ("run", "run", None),
    ("method", "method", None),
    ("sparsity", "sparsity", ".4f"),
    ("test_accuracy", "test accuracy", ".4f"),
    ("sops_per_sample", "SOPs/sample", ".4g"),
    ("energy_pj_per_sample", "energy pJ/sample", ".4g"),
    ("parameters", "parameters", ","),
    ("dense_parameters", "dense parameters", ","),
]
EXPLAIN_TEXT = (
    "SOPs ratio ≈ density ratio × firing-rate ratio × coupling; the coupling (SOPs ratio over the product) is 1 when "
    "firing and fan-out are independent and above 1 when the neurons that fire keep more than their share of the links "
    "(as when topology evolution concentrates links on active neurons)."
)
EXPLAIN_COLUMNS = [
    ("run", "sparse run", None),
    ("dense_run", "dense run", None),
    ("sops_ratio", "SOPs ratio", ".4f"),
    ("density_ratio", "density ratio", ".4f"),
    ("firing_rate_ratio", "firing-rate ratio", ".4f"),
    ("predicted_ratio", "density x firing-rate", ".4f"),
    ("coupling", "coupling", ".2f"),
]


def cells(row, cols):
    out = []
    for key, _, spec in cols:
        v = row.get(key)
        out.append(fmt(v) if spec is None or v is None else format(v, spec))
    return out


def comparison_md(result: dict) -> str:
    lines = [
        "# chsnn comparison",
        "",
        "| " + " | ".join(h for _, h, _ in COMPARISON_COLUMNS) + " |",
        "|" + "---|" * len(COMPARISON_COLUMNS),
    ]
    lines += ["| " + " | ".join(cells(r, COMPARISON_COLUMNS)) + " |" for r in result["runs"]]
    if result["sops_explained"]:
        lines += ["", "## SOPs against the dense run", "", EXPLAIN_TEXT, ""]
        lines += ["| " + " | ".join(h for _, h, _ in EXPLAIN_COLUMNS) + " |", "|" + "---|" * len(EXPLAIN_COLUMNS)]
        lines += ["| " + " | ".join(cells(r, EXPLAIN_COLUMNS)) + " |" for r in result["sops_explained"]]
    lines += ["", "Figure `fig-accuracy-sops` (in comparison.html): test accuracy against SOPs per sample, one point per run."]
    return "\n".join(lines) + "\n"


def comparison_html(result: dict, figure: str | None) -> str:
    parts = ["<header><h1>chsnn comparison</h1>", f'<p class="sub">{len(result["runs"])} runs</p></header>', "<main>"]
    parts.append(
        table([h for _, h, _ in COMPARISON_COLUMNS], [cells(r, COMPARISON_COLUMNS) for r in result["runs"]]).replace(
            "<table", '<table id="runs"', 1
        )
    )
    if result["sops_explained"]:
        parts += ["<h2>SOPs against the dense run</h2>", "<p>" + EXPLAIN_TEXT + "</p>"]
        parts.append(
            table([h for _, h, _ in EXPLAIN_COLUMNS], [cells(r, EXPLAIN_COLUMNS) for r in result["sops_explained"]]).replace(
                "<table", '<table id="explained"', 1
            )
        )
    content = figure or '<p class="missing">Not shown: no run has SOPs per sample.</p>'
    parts.append(
        f'<figure id="fig-accuracy-sops">\n{content}\n'
        "<figcaption>Test accuracy against SOPs per sample, one point per run.</figcaption>\n</figure>"
    )
    parts.append("</main>")
    return page("chsnn comparison", "\n".join(parts))
