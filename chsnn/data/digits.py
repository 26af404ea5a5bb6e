"""``digits`` (scikit-learn's bundled 8x8 handwritten digits) and ``ndigits``,
their event-camera twin made the way N-MNIST was made from MNIST."""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from chsnn.data._base import EVENT_DTYPE, ArrayDataset, DataBundle, atomic_save_npz, cache_dir, stratified_split
from chsnn.data.evsim import EventStore, SaccadeCamera, simulate_saccades
from chsnn.data.frames import events_to_frames

#: Bump when the simulation changes: cached files of other versions are ignored.
NDIGITS_VERSION = 1
NDIGITS_CAMERA = SaccadeCamera()
TEST_FRACTION = 0.2
DIGIT_CLASSES = [str(i) for i in range(10)]


@lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scikit-learn digits: images (1797, 8, 8) float32 in [0, 1] (the
    0..16 grey levels / 16), labels int64. Fresh copies on every call."""
    images, labels = _digits_raw()
    return images.copy(), labels.copy()


def _split_note(train: np.ndarray, test: np.ndarray, seed: int) -> str:
    return f"stratified split {len(train)}/{len(test)} (seed {seed})"


def load_digits_bundle(seed: int = 0) -> DataBundle:
    images, labels = digit_images()
    tr, te = stratified_split(labels, TEST_FRACTION, seed)
    x = torch.from_numpy(images[:, None])
    y = torch.from_numpy(labels)
    return DataBundle(
        name="digits",
        train=ArrayDataset(x[tr], y[tr], name="digits/train"),
        test=ArrayDataset(x[te], y[te], name="digits/test"),
        input_shape=(1, 8, 8),
        n_classes=10,
        time_steps=None,
        kind="static",
        note=f"scikit-learn 8x8 digits: {_split_note(tr, te, seed)}",
        classes=DIGIT_CLASSES,
    )


# --------------------------------------------------------------------------- ndigits


def ndigits_events(seed: int = 0, indices=None) -> list[np.ndarray]:
    """Simulate ndigits' event streams directly (no cache): one structured array
    (``EVENT_DTYPE``: x, y, t µs, p) per digit, for the digits at ``indices`` of
    scikit-learn's order (all 1797 by default). Identical to what the cached
    dataset holds for the same seed."""
    images, _ = digit_images()
    ids = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    store = simulate_saccades(images[ids], seed=seed, ids=ids, camera=NDIGITS_CAMERA)
    return [store[i] for i in range(len(store))]


def ndigits_cache_path(seed: int = 0, root=None) -> Path:
    """Where the events of ndigits for ``seed`` are cached."""
    return cache_dir(root) / f"ndigits-v{NDIGITS_VERSION}-seed{seed}.npz"


def _params_array() -> np.ndarray:
    cam = NDIGITS_CAMERA.as_dict()
    return np.array([f"{k}={cam[k]!r}" for k in sorted(cam)])


def _read_cache(path: Path, labels: np.ndarray) -> EventStore:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("x", "y", "t", "p", "offsets", "labels", "params", "version")}
    if int(arrays["version"]) != NDIGITS_VERSION:
        raise ValueError(f"version {int(arrays['version'])}, expected {NDIGITS_VERSION}")
    if not np.array_equal(arrays["params"], _params_array()):
        raise ValueError("simulation parameters differ from this chsnn's")
    if not np.array_equal(arrays["labels"], labels):
        raise ValueError("labels differ from scikit-learn's digits")
    off = arrays["offsets"]
    n_ev = len(arrays["t"])
    if off.shape != (len(labels) + 1,) or off[0] != 0 or off[-1] != n_ev or np.any(np.diff(off) < 0):
        raise ValueError("inconsistent offsets")
    if any(len(arrays[k]) != n_ev for k in ("x", "y", "p")):
        raise ValueError("field lengths differ")
    s = NDIGITS_CAMERA.sensor
    if n_ev and (
        arrays["x"].max() >= s or arrays["y"].max() >= s or arrays["t"].min() < 0 or arrays["t"].max() > NDIGITS_CAMERA.duration_us
    ):
        raise ValueError("events outside the sensor or the recording")
    return EventStore(arrays["x"], arrays["y"], arrays["t"], arrays["p"], off)


def ndigits_store(seed: int = 0, root=None) -> EventStore:
    """All 1797 recordings for ``seed``, from the cache, simulated (and cached) on
    first use. A corrupt or stale cache file is regenerated with a warning."""
    images, labels = digit_images()
    path = ndigits_cache_path(seed, root)
    if path.exists():
        try:
            return _read_cache(path, labels)
        except Exception as err:  # any unreadable cache is rebuilt, never trusted
            warnings.warn(f"ndigits cache {path} is unusable ({type(err).__name__}: {err}); regenerating it", RuntimeWarning, stacklevel=3)
    store = simulate_saccades(images, seed=seed, camera=NDIGITS_CAMERA)
    try:
        atomic_save_npz(path, **store.arrays(), labels=labels, params=_params_array(), version=np.array(NDIGITS_VERSION))
    except OSError as err:
        warnings.warn(f"could not write the ndigits cache {path} ({err}); using the events without caching", RuntimeWarning, stacklevel=3)
    return store


class EventFramesDataset(ArrayDataset):
    """ndigits' frames in memory (int16 counts, (N, T, 2, H, W)) plus the raw events:
    ``events(i)`` is the i-th sample's structured event array."""

    def __init__(self, frames, targets, store: EventStore, indices: np.ndarray, name: str = ""):
        super().__init__(frames, targets, name=name)
        self._store = store
        self.indices = np.asarray(indices, dtype=np.int64)  # positions in scikit-learn's order

    def events(self, i: int) -> np.ndarray:
        return self._store[int(self.indices[i])]

    def subset(self, indices: np.ndarray) -> EventFramesDataset:
        return EventFramesDataset(self.data[indices], self.targets[indices], self._store, self.indices[indices], name=self.name)


def load_ndigits_bundle(seed: int = 0, time_steps: int = 8, root=None) -> DataBundle:
    _, labels = digit_images()
    store = ndigits_store(seed, root)
    cam = NDIGITS_CAMERA
    frames = np.stack([events_to_frames(store[i], cam.sensor_size, time_steps) for i in range(len(store))])
    frames = torch.from_numpy(frames.astype(np.int16))
    tr, te = stratified_split(labels, TEST_FRACTION, seed)
    y = torch.from_numpy(labels)
    return DataBundle(
        name="ndigits",
        train=EventFramesDataset(frames[tr], y[tr], store, tr, name="ndigits/train"),
        test=EventFramesDataset(frames[te], y[te], store, te, name="ndigits/test"),
        input_shape=(2, cam.sensor, cam.sensor),
        n_classes=10,
        time_steps=time_steps,
        kind="events",
        note=(
            f"simulated event camera on scikit-learn digits (3 saccades x {cam.saccade_us // 1000} ms, "
            f"{cam.sensor}x{cam.sensor} sensor, v{NDIGITS_VERSION}), {time_steps} time bins; {_split_note(tr, te, seed)}"
        ),
        classes=DIGIT_CLASSES,
    )


__all__ = [
    "EVENT_DTYPE",
    "digit_images",
    "load_digits_bundle",
    "load_ndigits_bundle",
    "ndigits_events",
    "ndigits_store",
    "ndigits_cache_path",
]
