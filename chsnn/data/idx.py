"""MNIST, Fashion-MNIST and EMNIST from their IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from chsnn.data._base import DataBundle, DataError, kfold_split, missing_files, parse_kfold, stratified_split, uint8_image_bundle

# IDX type codes: numpy dtype (big-endian where it matters).
_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path}: not a readable gzip file ({type(err).__name__}: {err}); the download is probably truncated or corrupt"
            ) from err
    return path.read_bytes()


def read_idx(path: str | Path, ndim: int | None = None, dtype: np.dtype | str | None = "u1") -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed), checking the magic number, the
    type code, the number of dimensions and that the data size matches the header
    exactly. Any mismatch raises :class:`DataError` naming the file and the fault."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (4-byte magic number)")
    magic = int.from_bytes(raw[:4], "big")
    code, nd = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_TYPES or nd == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08X} (expected 0x0000TTDD: two zero bytes, a type code, the number of dimensions)"
        )
    want = np.dtype(dtype) if dtype is not None else None
    if want is not None and _IDX_TYPES[code].newbyteorder("=") != want.newbyteorder("="):
        raise DataError(f"{path}: IDX type code 0x{code:02X} ({_IDX_TYPES[code]}), expected {want}")
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: IDX magic number 0x{magic:08X} says {nd} dimension(s), expected {ndim} (images are 3-D, labels 1-D)")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside the header ({len(raw)} bytes, the header needs {header})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    item = _IDX_TYPES[code]
    count = math.prod(dims)  # Python ints: huge header dimensions give huge, not overflowed, numbers
    expected = count * item.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated: dims {dims} need {expected} data bytes after the header, the file has {found}")
    if found > expected:
        raise DataError(f"{path}: {found - expected} unexpected bytes after the data (dims {dims} need {expected}); not a valid IDX file")
    arr = np.frombuffer(raw, dtype=item, count=count, offset=header).reshape(dims)
    return arr.astype(item.newbyteorder("="))  # native order, writable copy


def _find(directories: list[Path], stem: str) -> Path | None:
    for d in directories:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def read_idx_pair(images_path: Path, labels_path: Path, n_classes: int, shape: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from an IDX pair, cross-checked."""
    x = read_idx(images_path, ndim=3)
    y = read_idx(labels_path, ndim=1)
    if tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{images_path}: images are {x.shape[1]}x{x.shape[2]}, expected {shape[0]}x{shape[1]}")
    if len(x) != len(y):
        raise DataError(f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{images_path}: holds no images")
    if y.max() >= n_classes:
        raise DataError(f"{labels_path}: label {int(y.max())} out of range (expected 0..{n_classes - 1})")
    return x, y.astype(np.int64)


MNIST_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_DIGITS = [str(i) for i in range(10)]
_UPPER = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
_LOWER = [chr(c) for c in range(ord("a"), ord("z") + 1)]
_MERGED = _DIGITS + _UPPER + list("abdefghnqrt")
EMNIST_SPLITS = {
    "byclass": _DIGITS + _UPPER + _LOWER,
    "bymerge": _MERGED,
    "balanced": _MERGED,
    "letters": _UPPER,  # stored as labels 1..26; shifted to 0..25
    "digits": _DIGITS,
    "mnist": _DIGITS,
}

_SOURCES = {
    "mnist": "the official MNIST database page (Yann LeCun, Corinna Cortes and Chris Burges; mirrors carry the same four files)",
    "fashion-mnist": "the Fashion-MNIST repository of Zalando Research (its data/fashion folder)",
    "emnist": "the EMNIST page of NIST (the 'Python/binary' gzip.zip archive; unzip it, the files are in its gzip/ folder)",
}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "emnist": "EMNIST"}


def load_idx_bundle(name: str, directory: Path, seed: int = 0, split: str = "balanced", kfold: int | str = 0) -> DataBundle:
    """MNIST / Fashion-MNIST / EMNIST from ``directory`` (or its ``raw/`` or
    ``gzip/`` subfolder). With only the t10k files present, MNIST-style sets split
    those 80/20 (stratified, seeded) and say so in the note.

    ``kfold`` (a count, e.g. 5): pool the images found (train and test, or
    t10k alone), deal them into that many stratified folds and test on fold
    ``seed % k``, the folds drawn with ``seed // k``: seeds 0..k-1 are one
    k-fold cross-validation that tests every image once."""
    folds = parse_kfold(kfold) if kfold else 0  # checked before any file is read
    directory = Path(directory).expanduser()
    if name == "emnist":
        if split not in EMNIST_SPLITS:
            raise ValueError(f"split must be one of {', '.join(EMNIST_SPLITS)}, got {split!r}")
        classes = EMNIST_SPLITS[split]
        stems = {
            part: (f"emnist-{split}-{part}-images-idx3-ubyte", f"emnist-{split}-{part}-labels-idx1-ubyte") for part in ("train", "test")
        }
        search = [directory, directory / "gzip"]
    else:
        classes = MNIST_FASHION_CLASSES if name == "fashion-mnist" else _DIGITS
        stems = {
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
        search = [directory, directory / "raw"]
    found = {part: tuple(_find(search, s) for s in pair) for part, pair in stems.items()}
    have = {part: all(f is not None for f in files) for part, files in found.items()}
    title = _TITLES[name]
    label_offset = 1 if split == "letters" and name == "emnist" else 0
    n_classes = len(classes)

    def pair(part: str) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = found[part]
        x, y = read_idx_pair(img_path, lab_path, n_classes + label_offset)
        if label_offset:
            if y.min() < label_offset:
                raise DataError(f"{lab_path}: label {int(y.min())} out of range (EMNIST letters are 1..26)")
            y = y - label_offset
        if name == "emnist":
            x = np.ascontiguousarray(x.transpose(0, 2, 1))  # EMNIST stores images transposed
        return x, y

    full_title = f"{title}{' ' + split if name == 'emnist' else ''}"
    if have["train"] and have["test"]:
        (x_tr, y_tr), (x_te, y_te) = pair("train"), pair("test")
        note = f"{full_title}: official split {len(x_tr)}/{len(x_te)}"
        if folds:
            x, y, pooled = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), "train and test pooled"
    elif have["test"] and name != "emnist":
        x, y = pair("test")
        pooled = "t10k only"
        if not folds:
            tr, te = stratified_split(y, 0.2, seed)
            x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
            note = f"{title} t10k only: split {len(tr)}/{len(te)} (seed {seed})"
    else:
        missing = [s + "[.gz]" for part in ("train", "test") for s, f in zip(stems[part], found[part]) if f is None]
        raise missing_files(title, directory, missing, _SOURCES[name], spec_name=name)
    if folds:
        tr, te, how = kfold_split(y, folds, seed, name, f"images in {directory}")
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        note = f"{full_title}, {pooled}: split {len(tr)}/{len(te)} ({how})"

    return uint8_image_bundle(name, (x_tr[:, None], y_tr), (x_te[:, None], y_te), (1, 28, 28), n_classes, note, list(classes))
