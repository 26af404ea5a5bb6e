"""One run's report: ``run_dir/report/{index.html, report.json, report.md}``."""

from __future__ import annotations

import html
import json

from chsnn.report.analysis import OVERLAP_STOP, POWER_LAW_R2, topology_summary
from chsnn.report.figures import (
    FIGURES,
    fig_degrees,
    fig_density,
    fig_energy,
    fig_firing,
    fig_masks,
    fig_overlap,
    fig_training,
    inline_svg,
)
from chsnn.report.loading import account_energy_of, check_run_dir
from chsnn.report.page import card, fewer, fmt, json_default, page, ratio, table
from chsnn.rundir import SUMMARY, RunDir, atomic_write

LAYER_COLUMNS = [
    ("name", "layer"),
    ("kind", "kind"),
    ("shape", "shape"),
    ("links", "links"),
    ("density", "density"),
    ("active_in", "active in"),
    ("active_out", "active out"),
    ("input", "input"),
    ("firing_rate", "input firing rate"),
    ("sops", "SOPs/sample"),
    ("macs", "MACs/sample"),
    ("energy_pj", "energy pJ/sample"),
    ("dense_energy_pj", "dense pJ/sample"),
]


def cell(row, key):
    v = row.get(key)
    if key == "shape" and isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return fmt(v)


def render_report(run_dir, pj_per_ac: float | None = None, pj_per_mac: float | None = None) -> dict:
    """Write ``run_dir/report/{index.html, report.json, report.md}``; returns report.json's content."""
    from chsnn.energy import PJ_PER_AC, PJ_PER_MAC

    pj_per_ac = PJ_PER_AC if pj_per_ac is None else float(pj_per_ac)
    pj_per_mac = PJ_PER_MAC if pj_per_mac is None else float(pj_per_mac)
    run = RunDir(check_run_dir(run_dir))
    run_dir = run.path
    summary = run.summary()
    metrics = run.metrics()
    checkpoint = run.checkpoint()  # the default: latest.pt, the model summary.json describes
    ckpt, ckpt_name = checkpoint.state, checkpoint.name
    engine_state = ckpt.get("engine") or {}
    records = engine_state.get("records") or []
    masks = engine_state.get("masks") or {}

    energy, params = account_energy_of(run_dir, ckpt, pj_per_ac, pj_per_mac)
    totals = energy["totals"]
    dense = {k[len("dense_") :]: totals.get(k) for k in ("dense_sops", "dense_macs", "dense_energy_pj")}
    ratios = {k: ratio(totals.get(k), dense.get(k)) for k in ("sops", "macs", "energy_pj")}
    shapes = {lay["name"]: lay.get("shape") for lay in summary.get("layers", [])}
    shapes.update({lay["name"]: lay.get("shape") for lay in energy["layers"] if lay.get("shape")})
    firing_rates = summary.get("firing_rates") or (metrics[-1].get("firing_rates") if metrics else None) or {}

    figs, notes = {}, {}
    fits = {}
    for fid, make in (
        ("fig-training", lambda: fig_training(metrics)),
        ("fig-density", lambda: fig_density(metrics, records, shapes)),
        ("fig-overlap", lambda: fig_overlap(records)),
        ("fig-firing", lambda: fig_firing(firing_rates, metrics)),
        ("fig-energy", lambda: fig_energy(energy)),
        ("fig-degrees", lambda: fig_degrees(masks)),
        ("fig-masks", lambda: fig_masks(masks)),
    ):
        out = make()
        if fid == "fig-degrees":
            fig, note, fits = out
        else:
            fig, note = out
        if fig is None:
            notes[fid] = note
        else:
            figs[fid] = inline_svg(fig)

    identity = {
        k: summary.get(k)
        for k in ("method", "dataset", "model", "seed", "epochs", "sparsity", "percolation", "test_accuracy", "best_test_accuracy", "heads")
    }
    report = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": ckpt_name,
        **identity,
        "constants": {"pj_per_ac": pj_per_ac, "pj_per_mac": pj_per_mac, "overlap_stop": OVERLAP_STOP, "power_law_r2": POWER_LAW_R2},
        "energy": energy,
        "per_sample": {"sops": totals.get("sops"), "macs": totals.get("macs"), "energy_pj": totals.get("energy_pj")},
        "dense_baseline": dense,
        "ratios": ratios,
        "parameters": params,
        "firing_rates": firing_rates,
        "topology": topology_summary(records, engine_state.get("frozen") or (), summary.get("layers")),
        "degree_fits": fits,
        "figures": [{"id": fid, "caption": cap, "shown": fid in figs, "note": notes.get(fid)} for fid, cap in FIGURES],
    }

    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2, default=json_default) + "\n")
    atomic_write(out_dir / "report.md", report_md(report))
    atomic_write(out_dir / "index.html", report_html(report, figs, notes))
    summary["sops_per_sample"] = totals.get("sops")
    summary["energy_pj_per_sample"] = totals.get("energy_pj")
    run.write_text(SUMMARY, json.dumps(summary, indent=2) + "\n")
    return report


def headline(report: dict) -> list[tuple[str, str]]:
    ps, dn, ra = report["per_sample"], report["dense_baseline"], report["ratios"]

    def vs(key, unit):
        r = ra.get(key)
        return f"{fmt(ps.get(key))} {unit} vs {fmt(dn.get(key))} dense" + (f" (ratio {r:.3f}{fewer(r)})" if r else "")

    return [
        ("test accuracy", f"{fmt(report.get('test_accuracy'))} (best {fmt(report.get('best_test_accuracy'))})"),
        ("sparsity", f"{fmt(report.get('sparsity'))} over the sparse layers; percolation {fmt(report.get('percolation'))}"),
        ("SOPs per sample", vs("sops", "")),
        ("MACs per sample", vs("macs", "")),
        ("energy per sample", vs("energy_pj", "pJ")),
        ("parameters", f"{report['parameters']['existing']:,} existing of {report['parameters']['dense']:,} dense"),
        *[(f"attention heads ({name})", f"{g['active']} of {g['total']} active") for name, g in (report.get("heads") or {}).items()],
        (
            "constants",
            f"{report['constants']['pj_per_ac']} pJ per accumulate, {report['constants']['pj_per_mac']} pJ per multiply-accumulate",
        ),
    ]


def title(report: dict) -> str:
    return f"{report.get('model')} on {report.get('dataset')}, method {report.get('method')}, seed {report.get('seed')}"


def report_md(report: dict) -> str:
    lines = [f"# chsnn report: {title(report)}", "", f"Run directory `{report['run_dir']}` (checkpoint {report['checkpoint']}).", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in headline(report)] + [""]
    lines += ["## Layers", "", "| " + " | ".join(h for _, h in LAYER_COLUMNS) + " |", "|" + "---|" * len(LAYER_COLUMNS)]
    for lay in report["energy"]["layers"]:
        lines.append("| " + " | ".join(cell(lay, k) for k, _ in LAYER_COLUMNS) + " |")
    topo = report["topology"]
    lines += ["", f"## Topology updates: {topo['n_updates']}", ""]
    for name, d in topo["layers"].items():
        frozen = "never froze" if d["frozen_at_step"] is None else f"froze at step {d['frozen_at_step']}"
        lines.append(
            f"- {name}: removed {d['removed']}, regrown {d['regrown']}, mean overlap {fmt(d['mean_overlap'])}, "
            f"last {fmt(d['last_overlap'])}, "
            f"turnover {fmt(d.get('turnover'))}, {frozen}"
        )
    lines += ["", "## Figures (in index.html)", ""]
    for i, f in enumerate(report["figures"], 1):
        lines.append(f"{i}. `{f['id']}`: {f['caption']}" + (f" *Not shown: {f['note']}.*" if not f["shown"] else ""))
    return "\n".join(lines) + "\n"


def report_html(report: dict, figs: dict, notes: dict) -> str:
    ps, dn, ra = report["per_sample"], report["dense_baseline"], report["ratios"]

    def vs_detail(key, unit=""):
        r = ra.get(key)
        return f"dense {fmt(dn.get(key))}{unit}" + (f"; ratio {r:.3f}{fewer(r)}" if r else "")

    cards = [
        card("test accuracy", fmt(report.get("test_accuracy"), ".4f"), f"best {fmt(report.get('best_test_accuracy'), '.4f')}"),
        card("sparsity", fmt(report.get("sparsity"), ".4f"), f"percolation {fmt(report.get('percolation'), '.3f')}"),
        card("SOPs / sample", fmt(ps.get("sops"), ".4g"), vs_detail("sops")),
        card("energy / sample", f"{fmt(ps.get('energy_pj'), '.4g')} pJ", vs_detail("energy_pj", " pJ")),
        card("parameters", f"{report['parameters']['existing']:,}", f"of {report['parameters']['dense']:,} dense"),
    ]
    heads = report.get("heads") or {}
    if heads:
        active, total = sum(g["active"] for g in heads.values()), sum(g["total"] for g in heads.values())
        cards.append(card("attention heads", f"{active} / {total}", f"active over {len(heads)} attention layers"))
    c = report["constants"]
    parts = [
        f"<header><h1>chsnn report: {html.escape(title(report))}</h1>",
        f'<p class="sub">{html.escape(report["run_dir"])} · checkpoint {html.escape(report["checkpoint"])} · '
        f"{report.get('epochs')} epochs · "
        f"{report['topology']['n_updates']} topology updates · {c['pj_per_ac']} pJ/AC, {c['pj_per_mac']} pJ/MAC · "
        f"MACs/sample {fmt(ps.get('macs'))} (dense {fmt(dn.get('macs'))})</p>",
        '<div class="cards">' + "".join(cards) + "</div></header>",
        "<main>",
        "<h2>Figures</h2>",
    ]
    for i, (fid, cap) in enumerate(FIGURES, 1):
        content = figs.get(fid) or f'<p class="missing">Not shown: {html.escape(notes.get(fid, "no data"))}.</p>'
        parts.append(f'<figure id="{fid}">\n{content}\n<figcaption>Figure {i}. {html.escape(cap)}</figcaption>\n</figure>')
    rows = [[cell(lay, k) for k, _ in LAYER_COLUMNS] for lay in report["energy"]["layers"]]
    tot = report["energy"]["totals"]
    parts += ["<h2>Layers</h2>", table([h for _, h in LAYER_COLUMNS], rows, cls="layers").replace("<table", '<table id="layers"', 1)]
    parts.append(
        f"<p>Totals per sample: {fmt(tot.get('sops'))} SOPs, {fmt(tot.get('macs'))} MACs, {fmt(tot.get('energy_pj'))} pJ; "
        f"the same model dense: {fmt(tot.get('dense_sops'))} SOPs, {fmt(tot.get('dense_macs'))} MACs, "
        f"{fmt(tot.get('dense_energy_pj'))} pJ.</p>"
    )
    topo = report["topology"]
    if topo["layers"]:
        trows = [
            [
                name,
                str(d["removed"]),
                str(d["regrown"]),
                str(d["chain_removed"]),
                fmt(d["mean_overlap"], ".3f"),
                fmt(d["last_overlap"], ".3f"),
                fmt(d.get("turnover"), ".3f"),
                "no" if d["frozen_at_step"] is None else str(d["frozen_at_step"]),
                fmt(d["ms"], ".1f"),
            ]
            for name, d in topo["layers"].items()
        ]
        parts += [
            f"<h2>Topology updates ({topo['n_updates']})</h2>",
            table(
                ["layer", "removed", "regrown", "chain removed", "mean overlap", "last overlap", "turnover", "froze at step", "ms"], trows
            ),
        ]
    parts.append("</main>")
    return page(f"chsnn report: {title(report)}", "\n".join(parts))
