"""Run reports: ``chsnn report RUN_DIR [RUN_DIR ...]``.

``render_report(run_dir)`` re-runs a saved model on its test set through the
energy accounting of :mod:`chsnn.energy` and writes ``run_dir/report/``:

    index.html    one self-contained page (inline SVG figures, no network)
    report.json   run identity, energy per layer and per sample, the dense
                  baseline and the ratios, topology-update history, constants
    report.md     the headline figures and the per-layer table

It also writes ``sops_per_sample`` and ``energy_pj_per_sample`` into the run's
``summary.json``. ``render_comparison(run_dirs, out_dir)`` puts several runs
side by side (``comparison.{html,md,json}``), and explains each sparse run's
SOPs against a dense run of the same model and data.

The package: :mod:`.loading` (the run directory, the energy accounting),
:mod:`.analysis` (topology updates, power-law fits), :mod:`.figures` (the
SVG figures; :func:`~chsnn.report.figures.pyplot` and
:func:`~chsnn.report.figures.inline_svg` serve the sweep's figures too),
:mod:`.page` (formatting), :mod:`.render` (one run) and :mod:`.compare`
(several runs). Every public name stays importable from ``chsnn.report``.
"""

from __future__ import annotations

from pathlib import Path

from chsnn.report.analysis import OVERLAP_STOP, POWER_LAW_R2, power_law_fit, topology_summary
from chsnn.report.compare import render_comparison
from chsnn.report.figures import FIGURE_IDS, FIGURES, MASK_IMAGE_MAX, inline_svg, mask_2d, max_pool, pyplot
from chsnn.report.loading import account_energy_of, check_run_dir
from chsnn.report.page import fmt
from chsnn.report.render import LAYER_COLUMNS, render_report

__all__ = [
    "FIGURES", "FIGURE_IDS", "LAYER_COLUMNS", "MASK_IMAGE_MAX", "OVERLAP_STOP", "POWER_LAW_R2", "account_energy_of",
    "add_report_command", "check_run_dir", "inline_svg", "mask_2d", "max_pool", "power_law_fit", "pyplot",
    "render_comparison", "render_report", "topology_summary",
]  # fmt: skip


# Command line ---------------------------------------------------------------------------------


def add_report_command(sub) -> None:
    """Register ``chsnn report`` on the ``chsnn`` subparsers."""
    p = sub.add_parser("report", help="render a run's HTML/markdown report with its energy accounting (several runs: also a comparison)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `chsnn train`")
    p.add_argument("--out", default=".", help="where the comparison of several runs goes (default: the current directory)")
    p.add_argument("--pj-ac", type=float, default=None, help="energy of one accumulate in pJ (default: chsnn.energy.PJ_PER_AC, 0.9)")
    p.add_argument(
        "--pj-mac", type=float, default=None, help="energy of one multiply-accumulate in pJ (default: chsnn.energy.PJ_PER_MAC, 4.6)"
    )
    p.set_defaults(func=_report_command)


def _report_command(args) -> int:
    dirs = [check_run_dir(d) for d in args.run_dirs]  # fail before any work
    for d in dirs:
        report = render_report(d, pj_per_ac=args.pj_ac, pj_per_mac=args.pj_mac)
        ps, ra = report["per_sample"], report["ratios"]
        print(
            f"{d / 'report' / 'index.html'}: accuracy {fmt(report.get('test_accuracy'), '.4f')}, "
            f"sparsity {fmt(report.get('sparsity'), '.4f')}, "
            f"{fmt(ps.get('sops'))} SOPs and {fmt(ps.get('energy_pj'))} pJ per sample (x{fmt(ra.get('energy_pj'), '.3f')} of dense)"
        )
    if len(dirs) > 1:
        render_comparison(dirs, args.out, pj_per_ac=args.pj_ac, pj_per_mac=args.pj_mac)
        print(f"{Path(args.out) / 'comparison.html'}")
    return 0
