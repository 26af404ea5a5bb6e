"""chsnn report: the run page, its JSON and markdown, the comparison, the errors."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from chsnn import report as rep

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=digits", "model_options.hidden=[64]", "batch_size=128", "time_steps=4", "lr=0.01", "epochs=2"]
LAYER_KEYS = {"name", "density", "links", "active_in", "active_out", "firing_rate", "sops", "macs", "energy_pj"}
TOTAL_KEYS = {"sops", "macs", "energy_pj", "dense_sops", "dense_macs", "dense_energy_pj"}


def _train(out: Path, *extra) -> Path:
    from chsnn.train import resolve_config, train

    cfg = resolve_config(assignments=[*TINY, *extra])
    train(cfg, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report_runs")
    sparse = _train(base / "sparse")
    dense = _train(base / "dense", "engine.method=dense")
    return {"sparse": sparse, "dense": dense, "report": rep.render_report(sparse)}


class PageParser(HTMLParser):
    """Figures (id -> has an SVG or PNG data image), table rows by table id, every URL-ish attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, bool] = {}
        self.captions: dict[str, str] = {}
        self.rows: dict[str, int] = {}
        self.stack: list[str] = []
        self.figure = self.table = self.caption = None
        self.in_tbody = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figure = a.get("id")
            self.figures[self.figure] = False
        elif self.figure and tag == "svg":
            self.figures[self.figure] = True
        elif (
            self.figure
            and tag in ("img", "image")
            and str(a.get("src") or a.get("xlink:href") or a.get("href") or "").startswith("data:image/png;base64,")
        ):
            self.figures[self.figure] = True
        elif tag == "figcaption":
            self.caption = ""
        elif tag == "table":
            self.table = a.get("id")
            self.rows[self.table] = 0
        elif tag == "tbody":
            self.in_tbody = True
        elif tag == "tr" and self.in_tbody:
            self.rows[self.table] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag == "figcaption" and self.figure:
            self.captions[self.figure] = self.caption
            self.caption = None
        elif tag == "tbody":
            self.in_tbody = False

    def handle_data(self, data):
        if self.caption is not None:
            self.caption += data


def _parse(path: Path) -> PageParser:
    p = PageParser()
    p.feed(path.read_text())
    p.close()
    return p


def test_run_report_page(runs):
    run = runs["sparse"]
    page = run / "report" / "index.html"
    text = page.read_text()
    p = _parse(page)
    assert list(p.figures) == rep.FIGURE_IDS and len(p.figures) == 7
    missing = [f for f, ok in p.figures.items() if not ok]
    assert not missing, f"figures without an image: {missing}"
    assert all(p.captions.get(f, "").strip() for f in rep.FIGURE_IDS)
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text
    ckpt = torch.load(run / "latest.pt", map_location="cpu", weights_only=False)
    weight_layers = [k for k, v in ckpt["model"].items() if k.endswith(".weight") and v.dim() >= 2]
    assert p.rows["layers"] == len(weight_layers) == 2
    assert "test accuracy" in text and "SOPs / sample" in text and "energy / sample" in text


def test_report_json_and_summary(runs):
    run, report = runs["sparse"], runs["report"]
    on_disk = json.loads((run / "report" / "report.json").read_text())
    assert on_disk["method"] == "chsnn" and on_disk["dataset"] == "digits" and on_disk["model"] == "snn-mlp"
    for k in ("seed", "sparsity", "test_accuracy"):
        assert on_disk[k] == report[k] is not None
    layers = on_disk["energy"]["layers"]
    assert [lay["name"] for lay in layers] == ["hidden.0", "head"]
    for lay in layers:
        assert LAYER_KEYS <= set(lay), LAYER_KEYS - set(lay)
    assert TOTAL_KEYS <= set(on_disk["energy"]["totals"])
    tot = on_disk["energy"]["totals"]
    assert math.isclose(sum(lay["energy_pj"] for lay in layers), tot["energy_pj"], rel_tol=1e-6)
    assert on_disk["dense_baseline"]["energy_pj"] == tot["dense_energy_pj"]
    # The hidden layer is 95 % sparse, so the sparse model costs less than its dense self.
    assert 0 < on_disk["ratios"]["energy_pj"] < 1
    assert on_disk["constants"]["pj_per_ac"] == 0.9 and on_disk["constants"]["pj_per_mac"] == 4.6
    assert on_disk["topology"]["n_updates"] >= 1 and "hidden.0" in on_disk["topology"]["layers"]
    assert on_disk["parameters"]["existing"] < on_disk["parameters"]["dense"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sops_per_sample"] == tot["sops"]
    assert summary["energy_pj_per_sample"] == tot["energy_pj"]
    assert summary["method"] == "chsnn" and "layers" in summary  # updated in place, nothing lost
    md = (run / "report" / "report.md").read_text()
    assert "| hidden.0 |" in md and "| head |" in md and "fig-masks" in md


def test_comparison_dense_and_sparse(runs, tmp_path):
    out = tmp_path / "cmp"
    result = rep.render_comparison([runs["dense"], runs["sparse"]], out)
    assert [r["method"] for r in result["runs"]] == ["dense", "chsnn"]
    dense_row, sparse_row = result["runs"]
    assert dense_row["parameters"] == dense_row["dense_parameters"] > sparse_row["parameters"]
    assert sparse_row["energy_pj_per_sample"] < dense_row["energy_pj_per_sample"]
    (ex,) = result["sops_explained"]
    assert ex["run"] == "sparse" and ex["dense_run"] == "dense"
    assert ex["predicted_ratio"] == pytest.approx(ex["density_ratio"] * ex["firing_rate_ratio"])
    assert ex["sops_ratio"] == pytest.approx(sparse_row["sops_per_sample"] / dense_row["sops_per_sample"])
    assert json.loads((out / "comparison.json").read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    p = _parse(out / "comparison.html")
    assert p.rows["runs"] == 2 and p.rows["explained"] == 1
    assert p.figures == {"fig-accuracy-sops": True}
    md = (out / "comparison.md").read_text()
    assert md.count("\n| ") >= 2 + 1 + 2 and "density ratio" in md
    assert "http://" not in (out / "comparison.html").read_text()


def test_cli_several_runs(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="chsnn")
    rep.add_report_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(runs["sparse"]), str(runs["dense"]), "--out", str(tmp_path / "c"), "--pj-ac", "1.0"])
    assert args.func(args) == 0
    assert (tmp_path / "c" / "comparison.html").is_file()
    again = json.loads((runs["dense"] / "report" / "report.json").read_text())
    assert again["constants"]["pj_per_ac"] == 1.0
    assert "index.html" in capsys.readouterr().out
    rep.render_report(runs["dense"])  # back to the default constants for the other tests
    p = _parse(runs["dense"] / "report" / "index.html")
    # A dense run has no masks or topology updates: those figures say so instead.
    assert p.figures["fig-training"] and not p.figures["fig-masks"] and not p.figures["fig-overlap"]
    assert "Not shown" in (runs["dense"] / "report" / "index.html").read_text()


def test_not_a_run_dir(tmp_path):
    with pytest.raises(ValueError, match="not a chsnn run directory"):
        rep.render_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rep.render_report(tmp_path / "nope")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        rep.render_report(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a chsnn run directory"):
        rep.render_comparison([tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_power_law_fit_and_pooling():
    # Degrees with P(k) exactly proportional to k^-2 fit with gamma 2 and R^2 1.
    degrees = np.concatenate([np.full(int(round(1000 / k**2)), k) for k in range(1, 11)] + [np.zeros(5, int)])
    fit = rep.power_law_fit(degrees)
    assert fit["power_law"] and fit["r2"] > 0.99 and fit["exponent"] == pytest.approx(2.0, abs=0.05)
    flat = rep.power_law_fit(np.repeat(np.arange(1, 9), 50))  # uniform: slope 0, no power law
    assert not flat["power_law"]
    assert rep.power_law_fit([3, 3, 4]) is None
    m = np.zeros((600, 300), dtype=bool)
    m[599, 0] = True
    pooled = rep.max_pool(m)
    assert max(pooled.shape) <= rep.MASK_IMAGE_MAX and pooled[-1, 0] and pooled.sum() == 1


def test_screenshot_script(runs, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import screenshot_report
    finally:
        sys.path.pop(0)
    page = runs["sparse"] / "report" / "index.html"
    png = tmp_path / "shot.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(page), "--out", str(png)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if screenshot_report.find_browser() is None:
        assert proc.returncode == 0 and screenshot_report.NO_BROWSER in proc.stdout
        pytest.skip(screenshot_report.NO_BROWSER)
    assert proc.returncode == 0, proc.stderr
    assert png.is_file() and not screenshot_report.is_blank(png)
