"""A user's regrowth rule: the example in docs/extending_regrowth.md runs as
written, the engine regrows what the rule picks, and names are registered once."""

import json
import pathlib
import re

import pytest
import torch
from test_engine import assert_top, batches, make, mlp, train
from test_safety import TINY

from chsnn.sparse import register_regrowth, register_removal, strategies

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending_regrowth.md"


def _example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "the page holds one python code block: the example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 15
    return code


@pytest.fixture
def rigl_hubs():
    """The example's rule, registered by running the page's code block."""
    namespace = {}
    exec(compile(_example_code(), str(DOC), "exec"), namespace)
    try:
        yield namespace["rigl_hubs"]
    finally:
        strategies.REGROWTHS.pop("rigl_hubs", None)
        strategies.DENSE_GRADIENT_REGROWTHS.discard("rigl_hubs")


def test_the_documented_rule_decides_the_regrowth(rigl_hubs):
    assert strategies.REGROWTHS["rigl_hubs"] is rigl_hubs
    model, opt, engine = make("set", 0.7, update_interval=3, rigl_accumulation=2, regrowth="rigl_hubs")
    dense = {t.name: [] for t in engine.targets}  # each backward's gradient, before the engine masks it
    for t in engine.targets:
        t.weight.register_hook(lambda g, name=t.name: dense[name].append(g.detach().clone()))
    train(model, opt, batches(3))
    assert engine.n_updates == 1
    for t in engine.targets:
        ch = engine.last_changes[t.name]
        after = ch["before"] & ~ch["removed"]
        acc = t.as_2d(torch.zeros_like(t.weight) + dense[t.name][1] + dense[t.name][2])  # the 2 steps before the update
        scores = acc.abs() * (1.0 + after.sum(0, dtype=torch.float64))  # the rule, computed here independently
        assert int(ch["regrown"].sum()) == int(ch["removed"].sum()) > 0
        assert_top(scores, ~ch["before"], ch["regrown"])  # set: links just removed are no candidates


def test_the_documented_rule_runs_from_the_command_line(rigl_hubs, tmp_path, monkeypatch, capsys):
    from chsnn.cli import main

    calls = []
    monkeypatch.setitem(strategies.REGROWTHS, "rigl_hubs", lambda ctx: calls.append(ctx.name) or rigl_hubs(ctx))
    out = tmp_path / "run"
    args = [
        "train",
        *TINY,
        "--epochs",
        "1",
        "--max-steps",
        "4",
        "--method",
        "set",
        "--sparsity",
        "0.8",
        "--set",
        "engine.regrowth=rigl_hubs",
        "--set",
        "engine.update_interval=2",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topology_updates"] >= 1 and calls


def test_a_name_is_registered_once(rigl_hubs):
    with pytest.raises(ValueError, match="regrowth strategy named 'rigl_hubs' is already registered"):
        register_regrowth("rigl_hubs")(lambda ctx: None)
    with pytest.raises(ValueError, match="regrowth strategy named 'CH3' is already registered"):
        register_regrowth("CH3")(lambda ctx: None)
    with pytest.raises(ValueError, match="removal strategy named 'magnitude' is already registered"):
        register_removal("magnitude")(lambda ctx: ctx.links.magnitude)
    assert strategies.REGROWTHS["rigl_hubs"] is rigl_hubs  # the first registration stands
    assert strategies.REMOVALS["magnitude"] is strategies.magnitude


def test_an_unregistered_rule_name_is_refused_by_the_config():
    from chsnn.sparse import ConfigError, SparseEngine

    with pytest.raises(ConfigError, match="regrowth.*valid values"):
        SparseEngine(mlp(), None, {"method": "set", "regrowth": "rigl_hubs"})


def test_the_readme_shows_both_examples_as_the_tests_run_them():
    """README's "Extending chsnn" holds the tested code blocks of
    docs/extending_regrowth.md and docs/extending_dataset.md, verbatim."""
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## Extending chsnn", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"```python\n(.*?)```", section, re.S)
    for doc in ("extending_regrowth.md", "extending_dataset.md"):
        block = re.search(r"```python\n(.*?)```", (root / "docs" / doc).read_text(), re.S).group(1)
        assert block in shown, f"README's Extending section no longer shows docs/{doc}'s example"
        assert len(block.strip().splitlines()) <= 15


def test_a_registered_init_that_reads_calibration_gets_the_statistics():
    # A user's initialisers flagged as reading calibration see ctx.stats, as SSCTI and SSWI do;
    # unflagged ones are not handed the calibration pass.
    from chsnn.sparse import register_topology_init, register_weight_init
    from chsnn.sparse.config import EngineConfig
    from chsnn.sparse.layout import calibration_uses

    seen = {}

    def record(key, result):
        def rule(ctx):
            seen.setdefault(key, []).append(ctx.stats)
            return result(ctx)

        return rule

    register_topology_init("top_by_rate", correlated=True)(record("topology", strategies.TOPOLOGY_INITS["sscti"]))
    register_weight_init("sswi_copy", reads_activity=True)(record("weights", strategies.WEIGHT_INITS["sswi"]))
    register_weight_init("kaiming_copy")(record("blind", strategies.WEIGHT_INITS["kaiming"]))
    try:
        make("set", 0.7, init="top_by_rate", weight_init="sswi_copy")
        assert seen["topology"] and all(s is not None and s.any_active for s in seen["topology"])
        assert seen["weights"] and all(s is not None for s in seen["weights"])
        make("set", 0.7, weight_init="kaiming_copy")
        assert seen["blind"] and all(s is None for s in seen["blind"])
        cfg = EngineConfig.from_dict({"method": "set", "sparsity": 0.7, "init": "top_by_rate", "weight_init": "sswi_copy"})
        assert calibration_uses(cfg) == ["init=top_by_rate", "weight_init=sswi_copy"]
    finally:
        for name, registry, flags in [
            ("top_by_rate", strategies.TOPOLOGY_INITS, strategies.CORRELATED_INITS),
            ("sswi_copy", strategies.WEIGHT_INITS, strategies.ACTIVITY_WEIGHT_INITS),
            ("kaiming_copy", strategies.WEIGHT_INITS, strategies.ACTIVITY_WEIGHT_INITS),
        ]:
            registry.pop(name, None)
            flags.discard(name)
