"""Events to frames, with tonic's ToFrame (and the two cases it cannot bin)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def _to_frame(sensor_size: tuple[int, int, int], n_time_bins: int):
    from tonic.transforms import ToFrame

    return ToFrame(sensor_size=sensor_size, n_time_bins=n_time_bins)


def events_to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], n_time_bins: int) -> np.ndarray:
    """Bin a structured event array into ``n_time_bins`` frames of per-pixel,
    per-polarity event counts: ``(T, P, H, W)`` for a (W, H, P) sensor, ``(T, P, W)``
    when the events have no ``y`` (audio-like sensors such as SHD's (700, 1, 1)).

    tonic's ``ToFrame(sensor_size=..., n_time_bins=T)`` does the binning (bins span
    the recording's first to last event). A recording with no events gives zero
    frames, and one shorter than T microseconds (which ToFrame would leave empty)
    is binned here by its relative time.
    """
    sensor_size = tuple(int(s) for s in sensor_size)
    w, h, p = sensor_size
    has_y = "y" in events.dtype.names
    shape = (n_time_bins, p, h, w) if has_y else (n_time_bins, p, w)
    if len(events) == 0:
        return np.zeros(shape, np.int16)
    t = events["t"]
    span = int(t[-1]) - int(t[0])
    if span >= n_time_bins:
        frames = _to_frame(sensor_size, n_time_bins)(events)
        if frames.shape != shape:  # pragma: no cover - tonic contract
            raise RuntimeError(f"tonic ToFrame gave frames {frames.shape}, expected {shape}")
        return frames
    frames = np.zeros(shape, np.int16)
    b = ((t.astype(np.int64) - int(t[0])) * n_time_bins) // (span + 1)
    pol = np.zeros(len(events), np.int64) if p == 1 else events["p"].astype(np.int64)
    idx = (b, pol, events["y"].astype(np.int64), events["x"].astype(np.int64)) if has_y else (b, pol, events["x"].astype(np.int64))
    np.add.at(frames, idx, 1)
    return frames
