"""Reading a run's checkpoints (latest.pt, best.pt) safely.

A run directory is something people download and share, so a checkpoint is
never unpickled freely: every command that reads one (``chsnn eval``,
``export``, ``report``, ``train --resume``) goes through
:meth:`chsnn.rundir.RunDir.checkpoint` (which picks the file) and
:func:`load_checkpoint`, which calls ``torch.load(..., weights_only=True)``.
That unpickler only builds tensors and plain data (dicts, lists, tuples,
strings, numbers, None), which is all a chsnn checkpoint holds: the model,
masks, engine, optimizer and scheduler state, the RNG states (byte tensors)
and the config. A pickle asking for anything else (a class, a function, a
``__reduce__`` payload) is refused before any of it runs.

A file that cannot be read (truncated, corrupt, not a checkpoint) raises
:class:`CheckpointError`, a ``ValueError`` with a one-line message naming the
file, which the command line prints as ``chsnn CMD: error: ...`` (exit 2).
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

# What a checkpoint written by chsnn train holds (the model's state at least).
REQUIRED_KEYS = ("model",)
TRAINING_KEYS = ("config", "epoch", "step_in_epoch", "best_accuracy", "history", "optimizer", "scheduler", "engine", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: names the file and why."""


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first sentence on one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 120 and ". " in text:
        text = text.split(". ")[0]
    return text or type(exc).__name__


def load_checkpoint(path, training: bool = False) -> dict:
    """The checkpoint at ``path``, read with ``weights_only=True`` onto the
    CPU. ``training``: it must also hold what rebuilding the run needs
    (config, optimizer, engine, RNG...: ``chsnn eval`` and ``--resume``). Raises :class:`CheckpointError` (or FileNotFoundError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused a type: a checkpoint not written by chsnn, possibly a crafted one.
        reason = _first_line(exc)
        if "weights only load failed" in reason.lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path} asks to build Python objects other than tensors and plain data; refused: checkpoints are "
                "loaded with torch.load(weights_only=True), so no code in a checkpoint runs (was it written by chsnn train?)"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a chsnn checkpoint (expected a mapping with {', '.join(REQUIRED_KEYS)})")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt.get("config", {}), dict):
        raise CheckpointError(f"{path} is not a chsnn checkpoint (its model state and config must be mappings)")
    if training:
        missing = [k for k in TRAINING_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path} cannot be resumed from: it lacks {', '.join(missing)}")
    return ckpt
