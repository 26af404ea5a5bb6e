"""The ``chsnn train``, ``eval``, ``compare`` and ``zoo`` commands, and
:func:`train`, :func:`evaluate_run` and :func:`compare_runs`, what they run.

``train`` starts a run (or ``--resume`` continues one) in a run directory
(:class:`chsnn.rundir.RunDir`); started by ``torchrun`` (``python -m
torch.distributed.run --nproc_per_node N -m chsnn train ...``) the run is
data-parallel over N processes (:mod:`chsnn.distributed`). ``eval``
re-evaluates a run's checkpoint on its test set; ``compare`` tests whether
two methods' runs differ, paired over the same test samples.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from chsnn import distributed
from chsnn.checkpoint import CheckpointError
from chsnn.config import (
    ZOO_DIR,
    check_device_name,
    default_run_dir,
    dump_config,
    parse_assignment,
    pick_device,
    resolve_config,
    resolve_data_path,
    short_repr,
    validate_config,
    with_defaults,
    zoo_table,
)
from chsnn.rundir import CHECKPOINT_HELP, CONFIG, METRICS, SUMMARY, RunDir
from chsnn.sparse import ConfigError
from chsnn.trainer import Runner, TrainingDiverged

# Options a resumed run may be given: they change where or how long it runs, not what it is.
RESUMABLE = ("--max-steps", "--device", "--quiet")


# Training -------------------------------------------------------------------------


def train(
    cfg: dict | None,
    out_dir: Path,
    resume: bool = False,
    quiet: bool = False,
    max_steps: int | None = None,
    device: str | None = None,
    requested: dict | None = None,
) -> dict:
    """Run (or resume) training; returns the summary. A resumed run keeps its
    saved config, except ``max_steps`` (None: run to the last epoch) and
    ``device`` (where it runs); ``requested``: other options given with the
    resume, {option text: (config path, value)}, refused when they differ
    from the saved config. A resumed run continues from latest.pt, read with
    ``weights_only=True``.

    A non-finite loss or weight raises :class:`~chsnn.trainer.TrainingDiverged`
    (the last good checkpoint is kept, no summary written); Ctrl-C saves the
    state and raises :class:`~chsnn.trainer.RunInterrupted`.

    Started by torchrun with several ranks (``WORLD_SIZE`` > 1), it joins the
    process group first and trains data-parallel (:mod:`chsnn.distributed`);
    only rank 0 writes and prints. A lost rank raises
    :class:`chsnn.distributed.DistributedError`."""
    run = RunDir(out_dir)
    ckpt = None
    # Every rank checks and reads the run directory (nobody writes before all
    # ranks have joined), so they all fail, or all go on, alike.
    check_out_dir(run.path)
    if resume:
        cfg, ckpt = resumed_config(run, max_steps, device, requested or {}, quiet)
    elif run.file(SUMMARY).exists() or run.file("latest.pt").exists():
        raise ConfigError(f"run directory {run.path} already holds a run; use --resume to continue it or --out for a new one")
    own_group = False
    if distributed.launched() and not distributed.active():
        device = pick_device(cfg["device"], distributed.env_local_rank())
        distributed.init(device, distributed.timeout_seconds(cfg.get("dist_timeout")))
        own_group = True
    try:
        quiet = quiet or not distributed.is_main()
        if distributed.is_main():
            start_run_dir(run, cfg, ckpt, quiet)
        started = time.time()
        return Runner(cfg).fit(run, ckpt, quiet=quiet, started=started)
    finally:
        if own_group:  # also after a lost rank: gloo's threads must not outlive the interpreter
            distributed.teardown()


def resumed_config(run: RunDir, max_steps: int | None, device: str | None, requested: dict, quiet: bool) -> tuple[dict, dict]:
    """(the config to continue ``run`` with, its latest.pt), or an error
    naming what stands in the way."""
    latest = run.file("latest.pt")
    if not latest.is_file():
        raise ConfigError(f"--resume: no checkpoint {latest}; start the run without --resume (or give its --out)")
    try:
        ckpt = run.checkpoint("latest", training=True).state
    except CheckpointError as exc:
        hint = (
            f"; {run.file('best.pt')} is there: copy it to latest.pt to resume from the best epoch" if run.file("best.pt").is_file() else ""
        )
        raise CheckpointError(f"--resume: {exc}{hint}") from None
    cfg = with_defaults(dict(ckpt["config"], max_steps=max_steps))  # keys added since the run started get their defaults
    conflicts = resume_conflicts(cfg, requested)
    if conflicts:
        raise ConfigError(
            f"--resume continues {run.path} with the config it was started with; these options would change it: {'; '.join(conflicts)}. "
            f"Drop them, or start a new run with another --out (with --resume only {', '.join(RESUMABLE)} may be given)"
        )
    if device is not None and device != cfg["device"]:
        if not quiet:
            print(f"resuming on device {device} (the run was started with device {cfg['device']})", file=sys.stderr)
        cfg["device"] = device
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"--resume: the config saved in {latest} is not valid: {exc}") from None
    return cfg, ckpt


def resume_conflicts(cfg: dict, requested: dict) -> list[str]:
    """``requested``: {option text: (config path, value)} given with --resume;
    those whose value differs from the saved config, described."""
    out = []
    for text, (path, value) in requested.items():
        node = cfg
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node != value:
            out.append(f"{text} (the run has {short_repr(node, 40)})")
    return out


def check_out_dir(out_dir: Path) -> None:
    """The run directory can be created and written, or a one-line error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file, not a directory; give a directory for the run")
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out_dir}: {parent} is a file, so the run directory cannot be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "the run directory" if parent == out_dir else f"{parent}, where the run directory would be made,"
        raise ConfigError(f"--out {out_dir}: {what} is not writable; give a directory you can write to")


def start_run_dir(run: RunDir, cfg: dict, ckpt: dict | None, quiet: bool) -> None:
    """Create the run directory with the config and the metrics the run starts from."""
    try:
        run.create()
    except OSError as exc:
        raise ConfigError(f"--out {run.path}: cannot create the run directory ({exc.strerror or exc})") from None
    run.write_text(CONFIG, dump_config(cfg))
    if ckpt is not None:  # resumed: the epochs the checkpoint holds, not lines written after it
        run.write_metrics(ckpt["history"])
        return
    # A new run: metrics.jsonl starts empty, even where an earlier run left one
    # (without a checkpoint, there is nothing to continue).
    metrics = run.file(METRICS)
    if metrics.is_file() and metrics.stat().st_size and not quiet:
        print(f"note: {metrics} from an earlier run without a checkpoint is replaced by this run's", file=sys.stderr)
    run.write_metrics([])


# Evaluation -----------------------------------------------------------------------


def evaluate_run(run_dir: Path, quiet: bool = False, checkpoint: str | None = None) -> dict:
    """Rebuild a saved run from its directory and re-evaluate it on its test
    set. ``checkpoint``: ``latest`` or ``best`` (default: the run directory's
    default, latest; see :class:`~chsnn.rundir.RunDir`)."""
    run = RunDir(run_dir).require()
    ckpt = run.checkpoint(checkpoint, training=True)  # weights_only=True: no code runs
    cfg = with_defaults(ckpt.state["config"])
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"the config saved in {ckpt.path} is not valid: {exc}") from None
    runner = Runner(cfg)
    runner.restore(ckpt.state)
    result = runner.evaluate()
    result["checkpoint"] = ckpt.name
    result["sparsity"] = runner.engine.sparsity()
    return result


def _predictions_by_seed(run_dirs: list[Path]) -> dict[int, tuple]:
    """seed (from each run's config.yaml) -> (labels, predicted), naming what is missing."""
    by_seed: dict[int, tuple] = {}
    where: dict[int, Path] = {}
    for path in run_dirs:
        run = RunDir(path).require()
        seed = run.config().get("seed")
        predictions = run.predictions()
        if predictions is None:
            raise FileNotFoundError(
                f"{path} has no predictions.npz: it is unfinished, was trained by a chsnn that did not save "
                "predictions (before 2026-12-07; several processes: before 2026-12-08); train it again with `chsnn train` to compare it"
            )
        if seed in by_seed:
            raise ValueError(f"two runs of seed {seed} on one side ({where[seed]} and {path}); give one run per seed and side")
        by_seed[seed], where[seed] = predictions, path
    return by_seed


def compare_runs(ours: list[Path], rivals: list[Path]) -> dict:
    """Runs of one method against runs of another, paired by seed (the same
    seed: the same split), pooled over the seeds: each side's accuracy, the
    test samples only each got right, and the exact McNemar p-value."""
    from chsnn.stats import discordant, mcnemar_p

    a, b = _predictions_by_seed(ours), _predictions_by_seed(rivals)
    if set(a) != set(b):
        raise ValueError(
            f"the two sides ran different seeds ({sorted(a)} against {sorted(b)}); give the runs of the same seeds on both sides"
        )
    split = discordant(a, b)
    if split is None:
        raise ValueError(
            "the two sides' runs of a seed were tested on different samples (another data set or split); "
            "compare runs of one data set and split"
        )
    samples = sum(len(labels) for labels, _ in a.values())
    right = {side: sum(int((p == y).sum()) for y, p in preds.values()) for side, preds in (("ours", a), ("rival", b))}
    return {
        "seeds": sorted(a),
        "samples": samples,
        "accuracy": right["ours"] / samples,
        "rival_accuracy": right["rival"] / samples,
        "only_ours": split[0],
        "only_rival": split[1],
        "p_value": mcnemar_p(*split),
    }


# Command line ---------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``train``, ``eval`` and ``zoo`` on the ``chsnn`` parser."""
    p = sub.add_parser("train", help="train a model (default: the zoo's CH-SNN spiking MLP on ndigits)")
    p.add_argument("--config", help="zoo config name (see `chsnn zoo`) or a YAML file")
    p.add_argument("--data", help="dataset NAME or NAME:PATH (e.g. ndigits, mnist:DIR, npz:FILE)")
    p.add_argument("--model", help="model name (e.g. snn-mlp, snn-cnn)")
    p.add_argument("--method", help="sparse training method (dense, static, set, rigl, mest, cht, chts, chsnn)")
    p.add_argument("--sparsity", type=float, help="target sparsity of the sparse layers, in [0, 1)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--out", help="run directory (default: runs/MODEL_DATA_METHOD_sSPARSITY_seedSEED)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. engine.zeta=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="random data of the config's data shape, 1 epoch, 2 steps unless --max-steps: checks a config in seconds",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=_train_command)

    p = sub.add_parser("eval", help="re-evaluate a saved run directory on its test set")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", metavar="{latest,best}", help=CHECKPOINT_HELP)
    p.set_defaults(func=_eval_command)

    p = sub.add_parser(
        "compare",
        help="is one method's accuracy different from another's? an exact McNemar test over the same test samples",
        description="Compare runs of one method (RUN ...) with runs of another (--against RUN ...), paired by seed "
        "(the same seed: the same test split) and pooled over the seeds: each side's accuracy, the test samples only "
        "each side got right, and the two-sided exact McNemar p-value. Reads each run's predictions.npz. Example, "
        "5-fold runs: chsnn compare runs/a_seed{0..4} --against runs/b_seed{0..4}",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of the first method")
    p.add_argument("--against", nargs="+", required=True, metavar="RUN", help="run directories of the other method")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_compare_command)

    p = sub.add_parser("zoo", help="list the zoo configs and the figures they reached")
    p.set_defaults(func=_zoo_command)


def _train_command(args) -> int:
    try:
        return _train_command_inner(args)
    except distributed.DistributedError as exc:  # a lost rank: say so and exit, never hang
        print(f"chsnn train: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except TrainingDiverged as exc:  # not the input's fault: exit 1, like a lost rank
        print(f"chsnn train: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _train_command_inner(args) -> int:
    if args.resume:
        out = Path(args.out) if args.out else None
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        if args.config or args.smoke:
            given = ", ".join(o for o, v in (("--config", args.config), ("--smoke", args.smoke)) if v)
            raise ConfigError(
                f"--resume continues the run in {out} with its saved config; {given} would start another: "
                "drop it, or give a new --out without --resume"
            )
        requested = {}
        for option, path, value in (
            ("--data", ("data",), None if args.data is None else resolve_data_path(args.data)),
            ("--model", ("model",), args.model),
            ("--method", ("engine", "method"), args.method),
            ("--sparsity", ("engine", "sparsity"), args.sparsity),
            ("--epochs", ("epochs",), args.epochs),
            ("--seed", ("seed",), args.seed),
        ):
            if value is not None:
                requested[f"{option} {value}"] = (path, value)
        for text in args.set:
            parts, value = parse_assignment(text)
            requested[f"--set {text}"] = (tuple(parts), value)
        if args.device is not None:
            check_device_name(args.device)
        train(None, out, resume=True, quiet=args.quiet, max_steps=args.max_steps, device=args.device, requested=requested)
        return 0
    overrides = {
        "data": args.data,
        "model": args.model,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "device": args.device,
    }
    engine = {k: v for k, v in {"method": args.method, "sparsity": args.sparsity}.items() if v is not None}
    if engine:
        overrides["engine"] = engine
    cfg = resolve_config(args.config, overrides, args.set)
    if args.smoke:
        from chsnn.data import smoke_data

        cfg["data"], cfg["data_options"] = smoke_data(cfg["data"], cfg["time_steps"])
        cfg["data_options"].setdefault("time_steps", None)  # static stays static (the runner fills in time_steps otherwise)
        cfg["epochs"], cfg["max_steps"] = 1, args.max_steps or 2
        validate_config(cfg)
    out = Path(args.out) if args.out else default_run_dir(cfg).with_name(default_run_dir(cfg).name + ("_smoke" if args.smoke else ""))
    train(cfg, out, quiet=args.quiet)
    return 0


def _eval_command(args) -> int:
    result = evaluate_run(Path(args.run_dir), checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2))
    return 0


def _compare_command(args) -> int:
    result = compare_runs([Path(r) for r in args.runs], [Path(r) for r in args.against])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    n, seeds = result["samples"], ", ".join(str(s) for s in result["seeds"])
    diff = (result["accuracy"] - result["rival_accuracy"]) * 100
    verdict = "a difference this uneven is unlikely by chance" if result["p_value"] < 0.05 else "no evidence of a difference"
    print(f"runs:    {result['accuracy']:.4f}  ({len(args.runs)} run(s), seeds {seeds}, {n} test samples)")
    print(f"against: {result['rival_accuracy']:.4f}  ({diff:+.2f} points)")
    print(f"samples only the runs got right: {result['only_ours']}; only the others: {result['only_rival']}")
    print(f"exact McNemar test, two-sided: p = {result['p_value']:.3g} ({verdict} at the 5% level)")
    return 0


def _zoo_command(args) -> int:
    rows = zoo_table()
    if not rows:
        print(f"no zoo configs in {ZOO_DIR}")
        return 0

    def fmt(v, spec=""):
        return "-" if v is None else format(v, spec)

    table = [("config", "model", "data", "method", "sparsity", "test acc", "seconds", "")]
    for r in rows:
        table.append(
            (
                r["name"],
                r["model"],
                str(r["data"]),
                r["method"],
                fmt(r["sparsity"], ".2f"),
                fmt(r["test_accuracy"], ".4f"),
                fmt(r["wall_seconds"], ".0f"),
                "(default)" if r["default"] else "",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return 0
