"""Shared pieces of the data layer: errors, the bundle, in-memory datasets,
seeded stratified splits, the cache directory and atomic cache writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from chsnn.files import atomic_write

#: The structured dtype of every event array chsnn hands out (tonic's x, y, t, p
#: ordering; t in microseconds; p = 1 for ON, 0 for OFF).
EVENT_DTYPE = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])

KINDS = ("static", "events")


class DataError(ValueError):
    """A data file exists but is unreadable, truncated or inconsistent."""


class MissingDataError(FileNotFoundError):
    """Files a dataset needs are not on disk. chsnn never downloads data."""


def missing_files(name: str, directory: Path, missing: list[str], source: str, spec_name: str | None = None) -> MissingDataError:
    """The error for absent files: which files, where we looked, where to get them
    and where to put them."""
    spec_name = spec_name or name
    listing = "\n".join(f"  - {m}" for m in missing)
    return MissingDataError(
        f"{name}: missing file(s) in {directory}:\n{listing}\n"
        f"chsnn never downloads data. Get them from {source}, put them in {directory} "
        f"(or anywhere, and pass '{spec_name}:/that/dir'). "
        f"The expected layout is in datasets/{spec_name}.md."
    )


@dataclass
class DataBundle:
    """What :func:`chsnn.data.load_dataset` returns.

    ``train`` and ``test`` are ``torch.utils.data.Dataset`` objects whose items are
    ``(x, y)``: ``x`` a float32 tensor and ``y`` an int. For ``kind == "static"``
    ``x.shape == input_shape`` and ``time_steps is None``; for ``kind == "events"``
    ``x.shape == (time_steps, *input_shape)``.
    """

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    n_classes: int
    time_steps: int | None
    kind: str
    note: str = ""
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if self.kind == "static" and self.time_steps is not None:
            raise ValueError("a static bundle has time_steps None")
        if self.kind == "events" and (self.time_steps is None or self.time_steps < 1):
            raise ValueError("an events bundle needs time_steps >= 1")
        if len(self.train) == 0 or len(self.test) == 0:  # never hand out a silently empty set
            raise DataError(f"{self.name}: empty {'train' if len(self.train) == 0 else 'test'} set")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one ``x``: ``input_shape``, or ``(time_steps, *input_shape)`` for events."""
        return self.input_shape if self.time_steps is None else (self.time_steps, *self.input_shape)

    def __repr__(self) -> str:
        return (
            f"DataBundle(name={self.name!r}, kind={self.kind!r}, train={len(self.train)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, time_steps={self.time_steps}, n_classes={self.n_classes}, note={self.note!r})"
        )


class ArrayDataset(Dataset):
    """Samples held in memory as one tensor in a compact dtype (uint8 pixels, int16
    event counts); items are ``(float32 tensor, int)`` with ``x = data[i] / divisor``.

    ``tensors()`` returns the whole set at once, for fast in-memory training loops.
    """

    def __init__(self, data: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, divisor: float = 1.0, name: str = ""):
        data = torch.as_tensor(data)
        targets = torch.as_tensor(targets, dtype=torch.long)
        if data.shape[0] != targets.shape[0]:
            raise ValueError(f"{name}: {data.shape[0]} samples but {targets.shape[0]} labels")
        self.data = data
        self.targets = targets
        self.divisor = float(divisor)
        self.name = name

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        return x / self.divisor if self.divisor != 1.0 else x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._convert(self.data[i]), int(self.targets[i])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The samples at ``indices``, as a set of the same kind."""
        return ArrayDataset(self.data[indices], self.targets[indices], self.divisor, name=self.name)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` for the whole set: float32 ``(N, *sample_shape)`` and int64 ``(N,)``."""
        return self._convert(self.data), self.targets.clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={len(self)}, x={tuple(self.data.shape[1:])})"


def uint8_image_bundle(name: str, train: tuple, test: tuple, input_shape: tuple, n_classes: int, note: str, classes=None) -> DataBundle:
    """A static DataBundle from uint8 image arrays ``(x, y)`` already shaped
    ``(N, *input_shape)``; pixels are scaled to [0, 1] when read."""

    def ds(arrays, part):
        x, y = arrays
        return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), divisor=255.0, name=f"{name}/{part}")

    return DataBundle(
        name=name,
        train=ds(train, "train"),
        test=ds(test, "test"),
        input_shape=input_shape,
        n_classes=n_classes,
        time_steps=None,
        kind="static",
        note=note,
        classes=classes,
    )


def parse_fraction(key: str, text: str) -> float:
    """A data option given as a fraction (``"0.2"`` or 0.2), checked to lie in (0, 1)."""
    try:
        value = float(text) if isinstance(text, (str, int, float)) and not isinstance(text, bool) else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise ValueError(f"option {key}={text!r} must be a fraction in (0, 1), e.g. {key}=0.2")
    return value


def hold_out_validation(bundle: DataBundle, fraction: float, seed: int) -> DataBundle:
    """``bundle`` with a seeded, stratified ``fraction`` of its training set as the
    evaluation set and the rest as the training set; its test set is left unused.

    This is the split to tune recipes on: nothing of the test set is seen."""
    train = bundle.train
    if not hasattr(train, "targets") or not hasattr(train, "subset"):
        raise ValueError(f"{bundle.name}: its training set cannot be split (it has no targets or subset())")
    # An offset seed: the validation split must not repeat the split a set already draws with `seed`.
    keep, held = stratified_split(np.asarray(train.targets), fraction, seed + 7919)
    fit, validation = train.subset(keep), train.subset(held)
    note = (
        f"{bundle.note}; validation run: {len(validation)} of the {len(train)} training samples held out "
        f"(stratified, seed {seed}) and evaluated instead of the test set, {len(fit)} trained on"
    )
    return replace(bundle, train=fit, test=validation, note=note.lstrip("; "))


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= minimum, or a ValueError naming the option."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: indices ``(train, test)``, each sorted ascending.

    The test set has exactly ``round(test_fraction * N)`` samples, shared among the
    classes in proportion to their sizes (largest remainders get the extra ones).
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(round(test_fraction * labels.size))
    quota = counts * test_fraction
    take = np.floor(quota).astype(np.int64)
    extra = n_test - int(take.sum())
    if extra > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:extra]] += 1
    rng = np.random.default_rng(seed)
    test_parts = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        test_parts.append(rng.permutation(members)[:k])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
    mask = np.ones(labels.size, bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded stratified k-fold partition: the fold (0..k-1) of every sample.

    Each class is shuffled and dealt round the folds, continuing where the
    previous class stopped, so fold sizes differ by at most one overall and
    each class's count differs by at most one between folds."""
    labels = np.asarray(labels)
    k = check_int("k", k, 2)
    if k > labels.size:
        raise ValueError(f"cannot split {labels.size} samples into {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.size, np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (start + np.arange(members.size)) % k
        start += members.size
    return fold


def parse_kfold(value: int | str) -> int:
    """The data option ``kfold``: a whole number of folds >= 2, given as a
    number or as its decimal string (configs and ``--set`` give strings)."""
    if isinstance(value, str):
        folds = int(value) if value.strip().isdecimal() else 0
    else:
        folds = value if isinstance(value, int) and not isinstance(value, bool) else 0
    if folds < 2:
        raise ValueError(f"option kfold={value!r} must be a whole number of folds >= 2, e.g. kfold=5")
    return folds


def kfold_split(labels: np.ndarray, folds: int, seed: int, dataset: str, samples: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and test indices of seed ``seed`` under the data option ``kfold``:
    fold ``seed % folds`` tested, the stratified folds drawn with ``seed //
    folds`` (so seeds 0..folds-1 test every sample once), and how, for the note.
    More folds than samples fails naming ``dataset`` and what the ``samples``
    are (e.g. "recordings in DIR")."""
    if folds > len(labels):
        raise ValueError(f"{dataset}: kfold={folds} asks for more folds than the {len(labels)} {samples}")
    fold_of = stratified_folds(labels, folds, seed // folds)
    tr, te = np.flatnonzero(fold_of != seed % folds), np.flatnonzero(fold_of == seed % folds)
    return tr, te, f"{folds}-fold cross-validation: fold {seed % folds} tested, stratified folds drawn with seed {seed // folds}"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``root``, else ``$CHSNN_CACHE``, else ``~/.cache/chsnn``."""
    if root is None:
        root = os.environ.get("CHSNN_CACHE") or Path.home() / ".cache" / "chsnn"
    return Path(root).expanduser()


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz next to ``path`` and move it into place in one step,
    so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
