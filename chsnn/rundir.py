"""A run directory, as ``chsnn train`` writes it and every other command reads it.

:class:`RunDir` owns the layout (file names, which checkpoint a command reads
by default) and the writes (all atomic, through :func:`atomic_write`, the one
atomic writer of the package). :func:`load_model` rebuilds a run's trained
model for inference without rebuilding the run (no data, optimizer or sparse
engine).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from chsnn.checkpoint import load_checkpoint
from chsnn.contracts import split_masked_state
from chsnn.files import atomic_write  # noqa: F401  (part of the run directory API)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"  # the final evaluation's label and predicted class per test sample, in test-set order
TENSORBOARD = "tb"
CHECKPOINTS = ("latest", "best")  # latest.pt and best.pt
DEFAULT_CHECKPOINT = "latest"
CHECKPOINT_HELP = (
    "which checkpoint: latest or best (default: latest, the final model that summary.json describes; "
    "best.pt stands in only when there is no latest.pt. best: the epoch with the best test accuracy)"
)


# Writing ----------------------------------------------------------------------------


def read_json(path) -> dict:
    """A JSON file, or a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc


# The run directory ------------------------------------------------------------------


class Checkpoint(NamedTuple):
    name: str  # the file name: latest.pt or best.pt
    path: Path
    state: dict  # what chsnn.checkpoint.load_checkpoint read


class RunDir:
    """A run directory::

        config.yaml    the resolved config
        metrics.jsonl  one line per epoch: loss, accuracies, per-layer density
                       and active neurons, firing rates, topology update times
        tb/            TensorBoard logs
        latest.pt      weights, masks, engine, optimizer and RNG state after
                       the last epoch (or where Ctrl-C stopped the run)
        best.pt        the same at the best test accuracy
        summary.json   the final figures

    Every file is written atomically (:func:`atomic_write`) except
    metrics.jsonl's appended lines (a reader skips a line cut short).

    **The default checkpoint** is ``latest`` (:data:`DEFAULT_CHECKPOINT`), for
    ``chsnn eval``, ``report`` and ``export`` alike: the final model, the one
    summary.json and the last line of metrics.jsonl describe and the one
    ``--resume`` continues, chosen by nothing but the end of training (best.pt
    is picked by its test accuracy, so its figure on that test set is
    optimistic). When latest.pt is absent, best.pt stands in; a latest.pt that
    cannot be read is an error, never a silent switch to another model. Ask
    for ``best`` explicitly (``--checkpoint best``) to get best.pt.

    Checkpoints are read only through :func:`chsnn.checkpoint.load_checkpoint`
    (``torch.load(weights_only=True)``: no code in a checkpoint runs)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self) -> RunDir:
        """This directory, or an error saying why it is none."""
        if not self.path.exists():
            raise FileNotFoundError(f"run directory {self.path} does not exist")
        if not self.path.is_dir():
            raise ValueError(f"{self.path} is not a directory; give a chsnn run directory (written by `chsnn train --out DIR`)")
        return self

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # Reading

    def config(self) -> dict:
        """The run's resolved config (config.yaml)."""
        from chsnn.config import load_config_file

        path = self.file(CONFIG)
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} has no {CONFIG}")
        return load_config_file(path)

    def metrics(self) -> list[dict]:
        """metrics.jsonl's rows ([] without one); a line cut short by an interrupted run is skipped."""
        path = self.file(METRICS)
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
        return rows

    def summary(self) -> dict:
        return read_json(self.file(SUMMARY))

    def predictions(self):
        """``(labels, predicted)`` of the final evaluation, two int64 arrays
        in test-set order, or None when the run wrote none (unfinished runs;
        runs by a chsnn older than 2026-12-07's, multi-process runs by one
        older than 2026-12-08's). Read without pickle: the file holds
        numbers only."""
        import numpy as np

        path = self.file(PREDICTIONS)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                labels, predicted = f["label"], f["predicted"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a predictions file chsnn wrote ({exc}); delete it or train the run again") from None
        if labels.ndim != 1 or labels.shape != predicted.shape or labels.dtype.kind not in "iu" or predicted.dtype.kind not in "iu":
            raise ValueError(f"{path} does not hold two integer arrays of one length; delete it or train the run again")
        return labels.astype(np.int64), predicted.astype(np.int64)

    def checkpoints(self) -> list[str]:
        """The checkpoint files present, in :data:`CHECKPOINTS` order."""
        return [f"{which}.pt" for which in CHECKPOINTS if self.file(f"{which}.pt").is_file()]

    def checkpoint_path(self, which: str | None = None) -> Path:
        """``latest.pt`` or ``best.pt``; ``which=None``: the default (see the
        class docstring). Raises when it is not there, saying what is."""
        if which is not None and which not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {which!r}; choose one of: {', '.join(CHECKPOINTS)}")
        self.require()
        present = self.checkpoints()
        if not present:
            raise FileNotFoundError(
                f"{self.path} holds no checkpoint ({' or '.join(f'{c}.pt' for c in CHECKPOINTS)}); is it a chsnn run directory?"
            )
        name = f"{which or DEFAULT_CHECKPOINT}.pt"
        if name in present:
            return self.file(name)
        if which is None:  # latest.pt absent: best.pt stands in
            return self.file(present[0])
        raise FileNotFoundError(f"{self.path} has no {name}; it has {', '.join(present)} (use --checkpoint {present[0][:-3]})")

    def checkpoint(self, which: str | None = None, training: bool = False) -> Checkpoint:
        """The checkpoint read with ``weights_only=True``; ``training``: it
        must hold what rebuilding the run needs (``eval``, ``--resume``)."""
        path = self.checkpoint_path(which)
        return Checkpoint(path.name, path, load_checkpoint(path, training=training))

    # Writing

    def save(self, name: str, obj) -> None:
        """``torch.save(obj)`` into ``name``, atomically."""
        atomic_write(self.file(name), lambda f: torch.save(obj, f))

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), text)

    def write_predictions(self, labels, predicted) -> None:
        """predictions.npz: each test sample's label and predicted class (read back by :meth:`predictions`)."""
        import numpy as np

        atomic_write(self.file(PREDICTIONS), lambda f: np.savez(f, label=np.asarray(labels), predicted=np.asarray(predicted)))

    def write_metrics(self, rows: list[dict]) -> None:
        """metrics.jsonl holding exactly ``rows``."""
        self.write_text(METRICS, "".join(json.dumps(row) + "\n" for row in rows))

    def append_metrics(self, row: dict) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")


# The trained model, for inference ---------------------------------------------------


@dataclass
class LoadedRun:
    """A checkpoint's model with its masks applied, in eval mode on the CPU."""

    model: nn.Module
    masks: dict[str, torch.Tensor]  # module name -> bool mask of its weight's shape
    spec: dict  # build_model arguments: model, input_shape, n_classes, time_steps, options
    config: dict  # the run's resolved config
    checkpoint: Path


def load_model(run_dir, which: str | None = None) -> nn.Module:
    """The run's trained model (eval mode, CPU, masks applied: pruned weights
    exactly 0), rebuilt from the run's config. ``which``: ``latest`` or
    ``best`` (default: see :class:`RunDir`). No Runner, optimizer or sparse
    engine is built and no data is read, except for data sets whose shape
    only their files know (``npz:FILE``): those are opened once for it."""
    return load_run(run_dir, which).model


def load_run(run_dir, which: str | None = None) -> LoadedRun:
    """:func:`load_model`, with the masks, the model spec, the config and the checkpoint's path."""
    run = RunDir(run_dir)
    ckpt = run.checkpoint(which)
    cfg = ckpt.state.get("config") or run.config()
    clean, masks = split_masked_state(ckpt.state["model"])
    model = _build_for_state(cfg, clean)
    model.eval()
    return LoadedRun(model, masks, model_spec(model), cfg, ckpt.path)


def model_spec(model: nn.Module) -> dict:
    """What :func:`build_from_spec` needs to rebuild ``model`` (JSON-ready)."""
    return {
        "model": model.model_name,
        "input_shape": list(model.input_shape),
        "n_classes": int(model.n_classes),
        "time_steps": model.time_steps,
        "options": jsonable(dict(model.options)),
        "spiking": bool(getattr(model, "spiking", False)),
    }


def build_from_spec(spec: dict) -> nn.Module:
    from chsnn.models import build_model

    model = build_model(
        spec["model"], tuple(spec["input_shape"]), spec["n_classes"], time_steps=spec.get("time_steps"), **spec.get("options", {})
    )
    return model.eval()


def jsonable(value):
    """``value`` with NumPy scalars made Python numbers and tuples lists (for JSON)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _build_for_state(cfg: dict, state: dict) -> nn.Module:
    """The config's model, its input shape and classes known without reading
    the data where possible, with ``state`` loaded strictly."""
    from chsnn.models import build_model

    def attempt(shape, n_classes):
        model = build_model(cfg["model"], tuple(shape), n_classes, time_steps=cfg.get("time_steps"), **(cfg.get("model_options") or {}))
        model.load_state_dict(state, strict=True)
        return model

    guess = _known_data_shape(cfg)
    if guess is not None:
        with contextlib.suppress(RuntimeError, ValueError):  # a shape the weights disagree with: ask the data
            return attempt(*guess)
    return attempt(*_data_shape(cfg))


def _known_data_shape(cfg: dict):
    """(input_shape, n_classes) from the data spec without loading the data, or None."""
    from chsnn.data import DATASET_SHAPES
    from chsnn.data.registry import parse_spec

    try:
        name, _ = parse_spec(str(cfg["data"]))
    except Exception:
        return None
    options = cfg.get("data_options") or {}
    if name == "random":
        from chsnn.data.synthetic import RANDOM_DEFAULTS

        shape = options.get("input_shape", RANDOM_DEFAULTS["input_shape"])
        shape = [shape] if isinstance(shape, int) else list(shape)
        return shape, int(options.get("n_classes", RANDOM_DEFAULTS["n_classes"]))
    if name in DATASET_SHAPES:
        shape, n_classes, _ = DATASET_SHAPES[name]
        return list(shape), n_classes
    return None


def _data_shape(cfg: dict):
    from chsnn.data import load_dataset

    options = dict(cfg.get("data_options") or {})
    options.setdefault("seed", cfg.get("seed", 0))
    options.setdefault("time_steps", cfg.get("time_steps"))
    data = load_dataset(cfg["data"], **options)
    return list(data.input_shape), int(data.n_classes)
