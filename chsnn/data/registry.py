"""``load_dataset``: one entry point for every data set, by name."""

from __future__ import annotations

import os
from pathlib import Path

from chsnn.data._base import DataBundle, cache_dir, check_int

#: name -> short description, in listing order.
DATASETS: dict[str, str] = {
    "digits": "scikit-learn's 8x8 handwritten digits, bundled (1797 images, 10 classes); static (1, 8, 8)",
    "ndigits": "digits through a simulated event camera, 3 saccades like N-MNIST (1797 recordings); events (T, 2, 30, 30); no download",
    "mnist": "MNIST from IDX files (60k/10k, or the 10k test set alone split 8000/2000); static (1, 28, 28)",
    "fashion-mnist": "Fashion-MNIST from IDX files (60k/10k); static (1, 28, 28)",
    "emnist": "EMNIST from IDX files, option split= (default balanced: 47 classes); static (1, 28, 28)",
    "cifar10": "CIFAR-10 from the python pickle batches (50k/10k); static (3, 32, 32)",
    "cifar100": "CIFAR-100 from the python pickle files, option labels=fine|coarse (50k/10k); static (3, 32, 32)",
    "nmnist": "N-MNIST recordings, the dataset's binary event files (60k/10k); events (T, 2, 34, 34)",
    "dvsgesture": "DVS128 Gesture via tonic, tonic's .npy release (11 gestures, official train/test); events (T, 2, 128, 128)",
    "cifar10dvs": "CIFAR10-DVS via tonic, AEDAT4 files (10k, split 9000/1000 by seed); events (T, 2, 128, 128)",
    "shd": "Spiking Heidelberg Digits via tonic, .h5 files (8156/2264, 20 classes); events (T, 700)",
    "npz": "your own data: one .npz with x_train, y_train, x_test, y_test (static images or event frames)",
    "random": "seeded random data of any shape for smoke runs, options input_shape=, n_classes=, n_train=, n_test=, kind=; events when time_steps is given; no signal",
}

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "n-mnist": "nmnist",
    "dvs-gesture": "dvsgesture",
    "dvs128gesture": "dvsgesture",
    "dvs128-gesture": "dvsgesture",
    "cifar10-dvs": "cifar10dvs",
    "cifar-10-dvs": "cifar10dvs",
}

# Per-dataset options beyond time_steps, seed and root, with their defaults.
_EXTRA_OPTIONS = {"emnist": {"split": "balanced"}, "cifar100": {"labels": "fine"}, "nmnist": {"resplit": ""}}
_NO_PATH = ("digits", "ndigits", "random")
DEFAULT_TIME_STEPS = 8


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """``"NAME"`` or ``"NAME:PATH"`` -> (canonical name, path or None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a dataset spec is 'NAME' or 'NAME:PATH', got {spec!r}; valid names: {', '.join(DATASETS)}")
    name, sep, path = spec.partition(":")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name.strip()!r}; valid names: {', '.join(DATASETS)}")
    path = path.strip()
    if sep and not path:
        raise ValueError(f"empty path in dataset spec {spec!r}; use '{key}:/path/to/data' or just '{key}'")
    return key, (Path(path).expanduser() if path else None)


def load_dataset(spec: str, *, time_steps: int | None = None, seed: int = 0, root: str | os.PathLike | None = None, **options) -> DataBundle:
    """Load a data set by spec: ``"NAME"`` or ``"NAME:PATH"`` (see ``DATASETS``).

    - ``time_steps``: frames per recording for event sets (default 8; for ``npz``
      event frames it must match the file). Static sets accept and ignore it: their
      items are single images, and :func:`chsnn.data.encode` makes the time steps.
    - ``seed``: the train/test split where a set has none (digits, ndigits, the
      MNIST test set alone, CIFAR10-DVS) and ndigits' sensor noise.
    - ``root``: the cache directory (default ``$CHSNN_CACHE`` or ``~/.cache/chsnn``);
      real sets given without a PATH are looked for in ``root/NAME``.
    - ``split`` (emnist: byclass, bymerge, balanced, letters, digits, mnist),
      ``labels`` (cifar100: fine, coarse), ``resplit`` (nmnist: a fraction as a
      string, e.g. "0.2", pools Train and Test and splits them again by seed).
    - ``random`` takes ``input_shape``, ``n_classes``, ``n_train``, ``n_test`` and
      ``kind`` (static or events; default: events exactly when ``time_steps`` is
      given); see :mod:`chsnn.data.synthetic`.

    Nothing is ever downloaded: missing files raise ``MissingDataError`` naming the
    files, the directory searched and where to get them.
    """
    name, path = parse_spec(spec)
    if name == "random":
        return _load_random(path, time_steps, seed, root, options)
    allowed = _EXTRA_OPTIONS.get(name, {})
    for key in options:
        if key not in allowed:
            valid = ", ".join(["time_steps", "seed", "root", *allowed])
            raise ValueError(f"unknown option {key!r} for dataset {name!r}; valid options: {valid}")
    opts = {**allowed, **options}
    for key, value in opts.items():
        if not isinstance(value, str):
            raise ValueError(f"option {key!r} must be a string, got {value!r}")
    if time_steps is not None:
        time_steps = check_int("time_steps", time_steps, 1)
    seed = check_int("seed", seed, 0)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a directory path, got {root!r}")
    if name in _NO_PATH and path is not None:
        raise ValueError(f"{name} is built in and takes no path (got '{name}:{path}'); use root= for its cache directory")
    data_dir = path if path is not None else cache_dir(root) / name
    t = DEFAULT_TIME_STEPS if time_steps is None else time_steps

    if name == "digits":
        from chsnn.data.digits import load_digits_bundle

        return load_digits_bundle(seed)
    if name == "ndigits":
        from chsnn.data.digits import load_ndigits_bundle

        return load_ndigits_bundle(seed, t, root)
    if name in ("mnist", "fashion-mnist", "emnist"):
        from chsnn.data.idx import load_idx_bundle

        return load_idx_bundle(name, data_dir, seed=seed, split=opts.get("split", "balanced"))
    if name in ("cifar10", "cifar100"):
        from chsnn.data.cifar import load_cifar_bundle

        return load_cifar_bundle(name, data_dir, labels=opts.get("labels", "fine"))
    if name == "npz":
        from chsnn.data.npzfile import load_npz_bundle

        return load_npz_bundle(path, time_steps)
    from chsnn.data import neuromorphic as nm

    if name == "nmnist":
        return nm.load_nmnist_bundle(data_dir, t, seed, opts.get("resplit", ""))
    if name == "dvsgesture":
        return nm.load_dvsgesture_bundle(data_dir, t)
    if name == "cifar10dvs":
        return nm.load_cifar10dvs_bundle(data_dir, t, seed)
    if name == "shd":
        return nm.load_shd_bundle(data_dir, t)
    raise AssertionError(name)  # pragma: no cover - every name is handled above


def _load_random(path, time_steps, seed, root, options) -> DataBundle:
    from chsnn.data.synthetic import RANDOM_DEFAULTS, load_random_bundle

    if path is not None:
        raise ValueError(f"random is generated and takes no path (got 'random:{path}'); give its shape with input_shape=")
    for key in options:
        if key not in RANDOM_DEFAULTS:
            valid = ", ".join(["time_steps", "seed", "root", *RANDOM_DEFAULTS])
            raise ValueError(f"unknown option {key!r} for dataset 'random'; valid options: {valid}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a directory path, got {root!r}")
    return load_random_bundle(time_steps, seed, **options)
