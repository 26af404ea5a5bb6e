"""CIFAR-10 and CIFAR-100 from their python pickle batches.

The batches are unpickled with a restricted unpickler that only rebuilds numpy
arrays (a pickle can otherwise run arbitrary code)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from chsnn.data._base import DataBundle, DataError, missing_files, uint8_image_bundle

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# What a CIFAR batch may reference: numpy's array reconstruction, nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays, lists and bytes)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 moved numpy.core
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: empty file")
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
        MemoryError,
        OverflowError,
    ) as err:
        raise DataError(
            f"{path}: not a valid CIFAR python batch ({type(err).__name__}: {err}); the file is probably truncated or corrupt"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar_batch(path: str | Path, label_key: str = "labels", n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: images (N, 3, 32, 32) uint8 and labels (N,) int64.
    Raises :class:`DataError` naming the file and the fault."""
    path = Path(path)
    d = _unpickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path}: no '{key}' entry (found {', '.join(sorted(d)) or 'nothing'})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {desc}, expected a uint8 array (N, 3072)")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: '{label_key}' is not a list of integers ({err})") from err
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} entries in '{label_key}'")
    if len(data) == 0:
        raise DataError(f"{path}: holds no images")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(f"{path}: '{label_key}' has values {int(labels.min())}..{int(labels.max())}, expected 0..{n_classes - 1}")
    return data.reshape(-1, 3, 32, 32).copy(), labels


def load_cifar_bundle(name: str, directory: Path, labels: str = "fine") -> DataBundle:
    """CIFAR-10 (``cifar-10-batches-py/``) or CIFAR-100 (``cifar-100-python/``),
    given that folder or its parent."""
    directory = Path(directory).expanduser()
    if name == "cifar10":
        folder, train_files, test_files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        label_key, n_classes, title = "labels", 10, "CIFAR-10"
        source = (
            "the CIFAR-10 page of Alex Krizhevsky at the University of Toronto "
            "('CIFAR-10 python version', cifar-10-python.tar.gz; extract it)"
        )
    else:
        if labels not in ("fine", "coarse"):
            raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
        folder, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        label_key, n_classes, title = f"{labels}_labels", 100 if labels == "fine" else 20, "CIFAR-100"
        source = (
            "the CIFAR-100 page of Alex Krizhevsky at the University of Toronto "
            "('CIFAR-100 python version', cifar-100-python.tar.gz; extract it)"
        )
    base = directory if (directory / train_files[0]).is_file() or not (directory / folder).is_dir() else directory / folder
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise missing_files(title, base, missing, source, spec_name=name)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_batch(base / f, label_key, n_classes) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    classes = CIFAR10_CLASSES if name == "cifar10" else _meta_names(base, f"{labels}_label_names")

    note = f"{title}{' (' + labels + ' labels)' if name == 'cifar100' else ''}: official split {len(x_tr)}/{len(x_te)}"
    return uint8_image_bundle(name, (x_tr, y_tr), (x_te, y_te), (3, 32, 32), n_classes, note, classes)


def _meta_names(base: Path, key: str) -> list[str] | None:
    """Class names from CIFAR-100's ``meta`` file, when it is there and readable."""
    path = base / "meta"
    if not path.is_file():
        return None
    try:
        names = _unpickle(path).get(key)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else None
    except (DataError, OSError, TypeError):
        return None
