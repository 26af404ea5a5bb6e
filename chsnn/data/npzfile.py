"""Any data set as one .npz file with ``x_train, y_train, x_test, y_test``.

Sample arrays by number of dimensions: (N, F) feature vectors, (N, H, W) grey
images, (N, C, H, W) images (all static), or (N, T, C, H, W) event frames
(kind "events", time_steps T). Static uint8 arrays are scaled by 1/255, bool
to 0/1, floats are kept (they must be finite); event frames are counts, kept
as they are. Labels are integers 0..N-1 (N at most 100000); n_classes = max label + 1."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from chsnn.data._base import ArrayDataset, DataBundle, DataError, MissingDataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
# Labels are class numbers: a label L makes an output layer of L + 1 units, so a
# stray huge label would ask for a model of that width (10^9: 128 GB).
MAX_CLASSES = 100_000


def _check_x(path: Path, key: str, x: np.ndarray) -> str:
    if x.ndim not in (2, 3, 4, 5):
        raise DataError(
            f"{path}: '{key}' has shape {x.shape} ({x.ndim}-D); expected (N, F), (N, H, W), (N, C, H, W) or event frames (N, T, C, H, W)"
        )
    if len(x) == 0:
        raise DataError(f"{path}: '{key}' holds no samples")
    kind = "events" if x.ndim == 5 else "static"
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: '{key}' has dtype {x.dtype}; expected numbers (uint8, bool or float)")
    if kind == "static" and x.dtype.kind in "iu" and x.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' has dtype {x.dtype}; static inputs must be uint8 (0..255, scaled by 1/255), bool or float")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{path}: '{key}' holds NaN or infinite values")
    return kind


def _check_y(path: Path, key: str, y: np.ndarray, n: int, x_key: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: '{key}' has shape {y.shape}; expected one label per sample, (N,)")
    if y.dtype.kind not in "iub":
        raise DataError(f"{path}: '{key}' has dtype {y.dtype}; expected integer class labels")
    if len(y) != n:
        raise DataError(f"{path}: '{key}' has {len(y)} labels but '{x_key}' has {n} samples")
    if len(y) and y.dtype.kind == "i" and int(y.min()) < 0:
        raise DataError(f"{path}: '{key}' has a negative label ({int(y.min())}); labels are class numbers 0..N-1")
    top = int(y.max()) if len(y) else 0  # in the stored dtype: a uint64 label keeps its value
    if top >= MAX_CLASSES:
        raise DataError(
            f"{path}: '{key}' has a label {top}, which would make {top + 1} classes; "
            f"labels are class numbers 0..N-1 with N at most {MAX_CLASSES}"
        )
    return y.astype(np.int64)


def load_npz_bundle(file: Path | None, time_steps: int | None = None) -> DataBundle:
    if file is None:
        raise ValueError("npz needs a file: load_dataset('npz:/path/to/data.npz')")
    path = Path(file).expanduser()
    if not path.is_file():
        raise MissingDataError(
            f"npz: file {path.name} not found in {path.parent}; write it with numpy.savez(..., x_train=, y_train=, x_test=, y_test=)"
        )
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, expected an .npz archive with {', '.join(KEYS)}")
        with z:
            absent = [k for k in KEYS if k not in z.files]
            if absent:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(repr(k) for k in absent)} "
                    f"(found {', '.join(z.files) or 'none'}; needs {', '.join(KEYS)})"
                )
            arrays = {}
            for k in KEYS:
                try:
                    arrays[k] = z[k]
                except ValueError as err:  # object arrays need pickle, which stays off
                    raise DataError(f"{path}: '{k}' cannot be read without pickle ({err}); store plain numeric arrays") from err
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err

    x_tr, x_te = arrays["x_train"], arrays["x_test"]
    kind = _check_x(path, "x_train", x_tr)
    kind_te = _check_x(path, "x_test", x_te)
    if kind_te != kind or x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(f"{path}: 'x_test' samples have shape {x_te.shape[1:]} but 'x_train' samples {x_tr.shape[1:]}")
    y_tr = _check_y(path, "y_train", arrays["y_train"], len(x_tr), "x_train")
    y_te = _check_y(path, "y_test", arrays["y_test"], len(x_te), "x_test")

    if kind == "events":
        t = int(x_tr.shape[1])
        if time_steps is not None and time_steps != t:
            raise ValueError(f"time_steps={time_steps} does not match the {t} time steps of the frames in {path}")
        input_shape = tuple(x_tr.shape[2:])
    else:
        t = None
        input_shape = tuple(x_tr.shape[1:]) if x_tr.ndim != 3 else (1, *x_tr.shape[1:])

    def ds(x: np.ndarray, y: np.ndarray, part: str) -> ArrayDataset:
        if kind == "static" and x.ndim == 3:
            x = x[:, None]
        divisor = 255.0 if (kind == "static" and x.dtype == np.uint8) else 1.0
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), divisor=divisor, name=f"npz/{part}")

    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return DataBundle(
        name="npz",
        train=ds(x_tr, y_tr, "train"),
        test=ds(x_te, y_te, "test"),
        input_shape=input_shape,
        n_classes=n_classes,
        time_steps=t,
        kind=kind,
        note=f"{path.name}: {len(x_tr)}/{len(x_te)} samples as stored",
    )
