"""Recorded neuromorphic sets, read from files the user already has (never
downloaded): N-MNIST (its 40-bit binary event files, decoded with tonic's
reader), and DVS128 Gesture, CIFAR10-DVS and SHD through tonic's dataset
classes with their download replaced by a clear missing-files error.

Every sample is binned to ``time_steps`` frames with tonic's ``ToFrame`` when it
is read: ``(T, 2, H, W)`` for cameras, ``(T, 700)`` for SHD."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from chsnn.data._base import (
    EVENT_DTYPE,
    DataBundle,
    DataError,
    MissingDataError,
    kfold_split,
    missing_files,
    parse_fraction,
    parse_kfold,
    stratified_split,
)
from chsnn.data.frames import events_to_frames

NMNIST_SENSOR = (34, 34, 2)


def read_nmnist_file(path: str | Path, sensor: tuple[int, int] = NMNIST_SENSOR[:2]) -> np.ndarray:
    """Decode one N-MNIST recording (5 bytes per event: x, y, then polarity bit and
    a 23-bit timestamp in µs; y == 240 marks a timestamp overflow) with tonic's
    ``read_mnist_file``. Returns an ``EVENT_DTYPE`` array sorted by t.

    Raises :class:`DataError` naming the file when it is empty, not a whole number
    of 5-byte events (truncated), holds no events, or has coordinates outside the
    ``sensor`` (W, H)."""
    from tonic.io import read_mnist_file

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file (an N-MNIST recording has 5 bytes per event)")
    if size % 5:
        raise DataError(f"{path}: {size} bytes is not a whole number of 5-byte events (truncated or not an N-MNIST file)")
    events = read_mnist_file(str(path), dtype=EVENT_DTYPE)
    if len(events) == 0:
        raise DataError(f"{path}: no events (only timestamp-overflow markers)")
    w, h = sensor
    if events["x"].max() >= w or events["y"].max() >= h:
        raise DataError(
            f"{path}: coordinates up to x={int(events['x'].max())}, y={int(events['y'].max())} "
            f"lie outside the {w}x{h} sensor (corrupt file?)"
        )
    t = events["t"]
    if np.any(t[1:] < t[:-1]):
        events = events[np.argsort(t, kind="stable")]
    return events


class EventFileDataset(Dataset):
    """Recordings read one by one (``reader(i)`` gives events and label), binned to
    ``time_steps`` frames; items are ``(float32 (T, *input_shape), int)``.
    ``events(i)`` is the raw structured event array."""

    def __init__(
        self, reader: Callable[[int], tuple[np.ndarray, int]], indices, targets, sensor_size, time_steps: int, input_shape, name: str = ""
    ):
        self._reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.sensor_size = tuple(sensor_size)
        self.time_steps = time_steps
        self.input_shape = tuple(input_shape)
        self.name = name
        if len(self.targets) != len(self.indices):
            raise ValueError(f"{name}: {len(self.indices)} samples but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.indices)

    def events(self, i: int) -> np.ndarray:
        return self._reader(int(self.indices[i]))[0]

    def subset(self, indices: np.ndarray) -> EventFileDataset:
        """The recordings at ``indices``, read by the same reader."""
        return EventFileDataset(
            self._reader, self.indices[indices], self.targets[indices], self.sensor_size, self.time_steps, self.input_shape, self.name
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        events, label = self._reader(int(self.indices[i]))
        frames = events_to_frames(events, self.sensor_size, self.time_steps)
        x = torch.from_numpy(frames.astype(np.float32)).reshape(self.time_steps, *self.input_shape)
        return x, int(label)

    def __repr__(self) -> str:
        return f"EventFileDataset({self.name}, n={len(self)}, x={(self.time_steps, *self.input_shape)})"


# --------------------------------------------------------------------------- N-MNIST

_NMNIST_SOURCE = "the N-MNIST page of Garrick Orchard (the dataset is also on Mendeley Data: Train.zip and Test.zip; extract both)"


def _nmnist_files(part_dir: Path) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    if part_dir.is_dir():
        for sub in sorted(part_dir.iterdir()):
            if sub.is_dir() and sub.name.isdigit() and int(sub.name) < 10:
                found = sorted(sub.glob("*.bin"))
                files += found
                labels += [int(sub.name)] * len(found)
    return files, labels


class _NmnistFiles:
    """Picklable reader: recording i of a list of N-MNIST files, with its label."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, labels

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        return read_nmnist_file(self.files[i]), self.labels[i]


def load_nmnist_bundle(directory: Path, time_steps: int = 8, seed: int = 0, resplit: str = "", kfold: int | str = 0) -> DataBundle:
    """N-MNIST in its official layout. ``resplit`` (a fraction as a string,
    e.g. "0.2"): pool Train and Test and split them again, stratified by
    seed, for a usable test set from a small copy of the data.

    ``kfold`` (a count, e.g. 5): pool Train and Test, deal them
    into that many stratified folds and test on fold ``seed % k``; the folds
    are drawn with ``seed // k``, so seeds 0..k-1 are one k-fold
    cross-validation that tests every recording exactly once (and seeds
    k..2k-1 a second one on a new partition)."""
    if resplit and kfold:
        raise ValueError(
            "nmnist: give resplit= or kfold=, not both (kfold= already splits Train and Test pooled); "
            "to cross-validate with a config that sets resplit, clear it: --set data_options.resplit="
        )
    folds = parse_kfold(kfold) if kfold else 0  # checked before any file is read
    directory = Path(directory).expanduser()
    base = directory / "NMNIST" if not (directory / "Train").is_dir() and (directory / "NMNIST").is_dir() else directory
    parts = {}
    missing = []
    for part in ("Train", "Test"):
        files, labels = _nmnist_files(base / part)
        if not files:
            missing.append(
                f"{part}/0/*.bin ... {part}/9/*.bin"
                + (" (the folder exists but holds no digit folders with .bin files)" if (base / part).is_dir() else "")
            )
        parts[part] = (files, labels)
    if missing:
        raise missing_files("N-MNIST", base, missing, _NMNIST_SOURCE, spec_name="nmnist")

    def make(part: str) -> EventFileDataset:
        files, labels = parts[part]
        reader = _NmnistFiles(files, labels)
        return EventFileDataset(
            reader, np.arange(len(files)), labels, NMNIST_SENSOR, time_steps, (2, 34, 34), name=f"nmnist/{part.lower()}"
        )

    if resplit or folds:
        files = parts["Train"][0] + parts["Test"][0]
        labels = parts["Train"][1] + parts["Test"][1]
        if folds:
            tr, te, how = kfold_split(np.asarray(labels), folds, seed, "nmnist", f"recordings in {base}")
        else:
            tr, te = stratified_split(np.asarray(labels), parse_fraction("resplit", resplit), seed)
            how = f"stratified, seed {seed}"
        reader = _NmnistFiles(files, labels)
        label_array = np.asarray(labels)

        def subset(idx, part):
            return EventFileDataset(reader, idx, label_array[idx], NMNIST_SENSOR, time_steps, (2, 34, 34), name=f"nmnist/resplit-{part}")

        train, test = subset(tr, "train"), subset(te, "test")
        note = f"N-MNIST: Train and Test pooled and split {len(train)}/{len(test)} ({how}), {time_steps} time bins"
    else:
        train, test = make("Train"), make("Test")
        note = f"N-MNIST: official split {len(train)}/{len(test)}, {time_steps} time bins"
    return DataBundle(
        name="nmnist",
        train=train,
        test=test,
        input_shape=(2, 34, 34),
        n_classes=10,
        time_steps=time_steps,
        kind="events",
        note=note,
        classes=[str(i) for i in range(10)],
    )


# --------------------------------------------------------------------------- tonic wrappers


def _check_exists_here(self) -> bool:
    # tonic looks in save_to/<class name>; chsnn passes the data folder itself as
    # save_to (its files were checked beforehand), so point tonic back at it.
    root = self.__dict__.get("_chsnn_dir")
    if root is None:  # idempotent: strip tonic's class-name folder only once
        root = self._chsnn_dir = os.path.dirname(self.location_on_system)
    self.location_on_system = root
    return True


def _download_refused(self) -> None:
    raise MissingDataError(
        f"{type(self).__name__[len('_Local') :]}: tonic asked to download into {self.location_on_system}; chsnn never downloads data"
    )


def _local_tonic_class(cls):
    """A subclass of tonic's dataset class ``cls`` that reads the folder it is
    given (``save_to``) as it is and never downloads. Defined at module level
    (``_Local<Name>``) so datasets pickle into DataLoader worker processes."""
    name = "_Local" + cls.__name__
    local = globals().get(name)
    if local is None:
        local = type(name, (cls,), {"_check_exists": _check_exists_here, "download": _download_refused, "__module__": __name__})
        globals()[name] = local
    return local


def __getattr__(name: str):
    # unpickling a _Local<Name> dataset in a fresh process recreates its class
    if name.startswith("_Local"):
        import tonic.datasets

        base = getattr(tonic.datasets, name[len("_Local") :], None)
        if isinstance(base, type):
            return _local_tonic_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _TonicItems:
    """Picklable reader: item i of a tonic dataset as (events, int label)."""

    def __init__(self, ds):
        self.ds = ds

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        events, target = self.ds[i]
        return events, int(target)


def _path_order(ds) -> np.ndarray:
    """tonic lists files in directory order, which differs between file systems;
    chsnn orders samples by path so that splits and indices are reproducible."""
    return np.array(sorted(range(len(ds.data)), key=lambda i: str(ds.data[i])), dtype=np.int64)


def _pick(directory: Path, sub: str, present: Callable[[Path], bool]) -> Path:
    """``directory`` if it holds the data, else ``directory/sub`` if that does."""
    if not present(directory) and present(directory / sub):
        return directory / sub
    return directory


def _has_file(d: Path, pattern: str) -> bool:
    return d.is_dir() and next(d.glob(pattern), None) is not None


_GESTURE_SOURCE = (
    "tonic's preprocessed DVS128 Gesture release (ibmGestureTrain.tar.gz and ibmGestureTest.tar.gz, "
    "made from IBM Research's DVS128 Gesture dataset; extract both)"
)


def load_dvsgesture_bundle(directory: Path, time_steps: int = 8) -> DataBundle:
    from tonic.datasets import DVSGesture

    directory = Path(directory).expanduser()
    folders = ("ibmGestureTrain", "ibmGestureTest")
    base = _pick(directory, "DVSGesture", lambda d: all(_has_file(d / f, "*/*.npy") for f in folders))
    missing = [f"{f}/user*_*/*.npy" for f in folders if not _has_file(base / f, "*/*.npy")]
    if missing:
        raise missing_files("DVS128 Gesture", base, missing, _GESTURE_SOURCE, spec_name="dvsgesture")
    cls = _local_tonic_class(DVSGesture)
    sets = {part: cls(save_to=str(base), train=part == "train") for part in ("train", "test")}
    size = DVSGesture.sensor_size

    def make(part: str) -> EventFileDataset:
        ds = sets[part]
        order = _path_order(ds)
        targets = np.asarray(ds.targets, dtype=np.int64)[order]
        return EventFileDataset(_TonicItems(ds), order, targets, size, time_steps, (2, size[1], size[0]), name=f"dvsgesture/{part}")

    train, test = make("train"), make("test")
    return DataBundle(
        name="dvsgesture",
        train=train,
        test=test,
        input_shape=(2, size[1], size[0]),
        n_classes=len(DVSGesture.classes),
        time_steps=time_steps,
        kind="events",
        note=f"DVS128 Gesture (tonic release): official split {len(train)}/{len(test)}, {time_steps} time bins",
        classes=list(DVSGesture.classes),
    )


_CIFAR10DVS_SOURCE = (
    "tonic's CIFAR10-DVS release (CIFAR10DVS.zip with one zip per class in AEDAT4 format, converted from "
    "the CIFAR10-DVS dataset of Li et al. 2017; extract the class zips)"
)


def load_cifar10dvs_bundle(directory: Path, time_steps: int = 8, seed: int = 0) -> DataBundle:
    from tonic.datasets import CIFAR10DVS

    directory = Path(directory).expanduser()
    classes = list(CIFAR10DVS.classes)
    base = _pick(directory, "CIFAR10DVS", lambda d: all(_has_file(d / c, "*.aedat4") for c in classes))
    missing = [f"{c}/*.aedat4" for c in classes if not _has_file(base / c, "*.aedat4")]
    if missing:
        raise missing_files("CIFAR10-DVS", base, missing, _CIFAR10DVS_SOURCE, spec_name="cifar10dvs")
    if importlib.util.find_spec("aedat") is None:
        raise ModuleNotFoundError(
            "cifar10dvs: tonic reads CIFAR10-DVS's AEDAT4 files with the 'aedat' package; install it: pip install aedat"
        )
    ds = _local_tonic_class(CIFAR10DVS)(save_to=str(base))
    order = _path_order(ds)
    targets = np.asarray(ds.targets, dtype=np.int64)[order]
    tr, te = stratified_split(targets, 0.1, seed)
    size = CIFAR10DVS.sensor_size
    shape = (2, size[1], size[0])
    reader = _TonicItems(ds)
    return DataBundle(
        name="cifar10dvs",
        train=EventFileDataset(reader, order[tr], targets[tr], size, time_steps, shape, name="cifar10dvs/train"),
        test=EventFileDataset(reader, order[te], targets[te], size, time_steps, shape, name="cifar10dvs/test"),
        input_shape=shape,
        n_classes=10,
        time_steps=time_steps,
        kind="events",
        note=f"CIFAR10-DVS has no official split: stratified {len(tr)}/{len(te)} (seed {seed}), {time_steps} time bins",
        classes=sorted(classes, key=CIFAR10DVS.classes.get),
    )


_SHD_SOURCE = "the Spiking Heidelberg Datasets page of the Zenke lab (shd_train.h5.zip and shd_test.h5.zip; unzip both)"


def load_shd_bundle(directory: Path, time_steps: int = 8) -> DataBundle:
    from tonic.datasets import SHD

    directory = Path(directory).expanduser()
    files = ("shd_train.h5", "shd_test.h5")
    base = _pick(directory, "SHD", lambda d: all((d / f).is_file() for f in files))
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise missing_files("SHD", base, missing, _SHD_SOURCE, spec_name="shd")
    cls = _local_tonic_class(SHD)
    size = SHD.sensor_size  # (700, 1, 1)

    def make(part: str) -> EventFileDataset:
        try:
            ds = cls(save_to=str(base), train=part == "train")
            import h5py

            with h5py.File(base / ds.data_filename, "r") as f:
                labels = np.asarray(f["labels"][()], dtype=np.int64)
        except (OSError, KeyError) as err:
            raise DataError(f"{base / ('shd_' + part + '.h5')}: not a readable SHD file ({type(err).__name__}: {err})") from err
        if len(labels) == 0:
            raise DataError(f"{base / ds.data_filename}: holds no samples")
        return EventFileDataset(_TonicItems(ds), np.arange(len(labels)), labels, size, time_steps, (size[0],), name=f"shd/{part}")

    train, test = make("train"), make("test")
    return DataBundle(
        name="shd",
        train=train,
        test=test,
        input_shape=(size[0],),
        n_classes=20,
        time_steps=time_steps,
        kind="events",
        note=f"SHD: official split {len(train)}/{len(test)}, {time_steps} time bins of spike counts",
    )
