"""A small event-camera simulator: still images moved through three saccades in
front of a simulated DVS sensor, the way N-MNIST was recorded from MNIST.

Model. The image (upscaled, bilinear) moves along a triangle (three straight
saccades of ``saccade_us`` each) over a dark sensor, rendered every
``saccade_us / steps_per_saccade`` with sub-pixel (bilinear) shifts. Every
pixel keeps a reference log intensity ``ref`` (``log(I + eps)``); whenever the
current log intensity ``L`` has moved ``n >= 1`` thresholds ``C`` from it, the
pixel emits ``n`` events (ON for increases, OFF for decreases) and ``ref`` moves
by ``n * C``. Between two renders ``L`` is taken as linear in time and each
event is timed where its level is crossed. Each pixel has its own ON and OFF
thresholds, ``C * (1 + threshold_noise * z)`` with ``z`` standard normal drawn
from ``numpy.random.default_rng([seed, sample_id])``: a sample's events depend
only on its image, its id and the seed, never on which other samples are
simulated with it.

Everything is vectorised over all samples at once (one numpy pass per render
step), so the 1797 scikit-learn digits take about two seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from chsnn.data._base import EVENT_DTYPE


@dataclass(frozen=True)
class SaccadeCamera:
    """Geometry and sensor parameters of the simulation (the defaults make ndigits)."""

    sensor: int = 30  # square sensor side, pixels
    scale: int = 3  # image upscaling factor (8x8 -> 24x24)
    margin: int = 1  # pixels between the image and the sensor's top/left edge at rest
    amplitude: float = 4.0  # saccade triangle: (+A/2, +A), (+A/2, -A), (-A, 0) pixels
    saccade_us: int = 100_000  # duration of one saccade, microseconds
    steps_per_saccade: int = 20  # renders per saccade
    threshold: float = 0.5  # contrast threshold C, log-intensity units
    threshold_noise: float = 0.05  # relative std of the per-pixel thresholds
    eps: float = 0.1  # log(I + eps): keeps dark pixels finite and quiet

    @property
    def duration_us(self) -> int:
        """The length of a recording: three saccades."""
        return 3 * self.saccade_us

    @property
    def sensor_size(self) -> tuple[int, int, int]:
        """tonic's (W, H, P)."""
        return (self.sensor, self.sensor, 2)

    def as_dict(self) -> dict:
        return asdict(self)

    def path(self) -> np.ndarray:
        """The triangle's four vertices (dx, dy) in pixels, start = end = (0, 0)."""
        a = float(self.amplitude)
        return np.array([[0.0, 0.0], [a / 2, a], [a, 0.0], [0.0, 0.0]])


def upscale_matrix(n_in: int, factor: int) -> np.ndarray:
    """(n_in * factor, n_in) bilinear interpolation matrix (pixel-centre aligned,
    edges clamped), so ``M @ img @ M.T`` upscales an image."""
    n_out = n_in * factor
    src = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w)
    np.add.at(m, (np.arange(n_out), i1), w)
    return m


class EventStore:
    """Many recordings' events in flat, compact arrays (``x``, ``y``: uint8;
    ``t``: int32 µs; ``p``: int8) with ``offsets``: recording ``i`` is
    ``[offsets[i], offsets[i + 1])``. ``store[i]`` is a structured EVENT_DTYPE array."""

    FIELDS = ("x", "y", "t", "p")

    def __init__(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, offsets: np.ndarray):
        self.x, self.y, self.t, self.p = x, y, t, p
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"recording {i} out of range (0..{n - 1})")
        i %= n
        a, b = self.offsets[i], self.offsets[i + 1]
        ev = np.empty(b - a, dtype=EVENT_DTYPE)
        for f in self.FIELDS:
            ev[f] = getattr(self, f)[a:b]
        return ev

    def arrays(self) -> dict[str, np.ndarray]:
        return {"x": self.x, "y": self.y, "t": self.t, "p": self.p, "offsets": self.offsets}


def simulate_saccades(
    images: np.ndarray, seed: int = 0, ids: np.ndarray | None = None, camera: SaccadeCamera = SaccadeCamera()
) -> EventStore:
    """Simulate the event streams of ``images`` ((N, h, w), values in [0, 1]).

    ``ids`` (default ``arange(N)``) are the samples' identities for the per-pixel
    threshold noise. Returns an :class:`EventStore`, each recording sorted by t,
    with t in ``[0, camera.duration_us]`` and x, y inside the sensor.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, h, w), got shape {images.shape}")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be scaled to [0, 1]")
    n, h0, w0 = images.shape
    ids = np.arange(n) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per image ({n}), got shape {ids.shape}")
    cam = camera
    s = cam.sensor
    h, w = h0 * cam.scale, w0 * cam.scale
    reach = cam.margin + int(np.ceil(cam.amplitude)) + 1
    if h + reach > s or w + reach > s:
        raise ValueError(f"a {h}x{w} image moving {cam.amplitude} px does not fit a {s}x{s} sensor")

    # Upscale and place every image once; renders are sums of shifted copies.
    big = np.einsum("oi,nij,pj->nop", upscale_matrix(h0, cam.scale), images, upscale_matrix(w0, cam.scale)).astype(np.float32)
    np.clip(big, 0.0, 1.0, out=big)
    eps = np.float32(cam.eps)

    def render(dx: float, dy: float) -> np.ndarray:
        ox, oy = cam.margin + dx, cam.margin + dy
        ix, iy = int(np.floor(ox)), int(np.floor(oy))
        fx, fy = ox - ix, oy - iy
        frame = np.zeros((n, s, s), np.float32)
        for a, b, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if wt > 1e-12:
                frame[:, iy + b : iy + b + h, ix + a : ix + a + w] += np.float32(wt) * big
        frame += eps
        return np.log(frame).reshape(-1)

    # Per-pixel ON / OFF thresholds, seeded per sample.
    thr = np.empty((n, 2, s, s), np.float32)
    for k, sid in enumerate(ids):
        thr[k] = np.random.default_rng([int(seed), int(sid)]).standard_normal((2, s, s))
    thr = cam.threshold * np.clip(1.0 + cam.threshold_noise * thr, 0.5, None)
    c_on = np.ascontiguousarray(thr[:, 0]).reshape(-1)
    c_off = np.ascontiguousarray(thr[:, 1]).reshape(-1)
    c_min = float(min(c_on.min(), c_off.min())) if n else 1.0

    verts = cam.path()
    k_steps = cam.steps_per_saccade
    dt = cam.saccade_us / k_steps
    l_prev = render(0.0, 0.0)
    ref = l_prev.copy()  # the sensor starts adapted to the still image
    parts: list[tuple[np.ndarray, ...]] = []
    for step in range(3 * k_steps):
        sac, k = divmod(step, k_steps)
        d = verts[sac] + (k + 1) / k_steps * (verts[sac + 1] - verts[sac])
        l_cur = render(float(d[0]), float(d[1]))
        diff = l_cur - ref
        cand = np.flatnonzero(np.abs(diff) >= c_min)
        if cand.size:
            dc = diff[cand]
            for sign, thr_flat, pol in ((1.0, c_on, 1), (-1.0, c_off, 0)):
                c = thr_flat[cand]
                cnt = np.floor(sign * dc / c).astype(np.int64)
                hit = cnt > 0
                if not hit.any():
                    continue
                pix, cnt, c = cand[hit], cnt[hit], c[hit]
                rep = np.repeat(np.arange(pix.size), cnt)
                kth = np.arange(rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1
                p_rep = pix[rep]
                level = ref[p_rep] + sign * kth * c[rep]
                lp, lc = l_prev[p_rep], l_cur[p_rep]
                frac = np.clip((level - lp) / (lc - lp), 0.0, 1.0)
                t = np.rint(step * dt + frac * dt).astype(np.int64)
                sample, rest = np.divmod(p_rep, s * s)
                yy, xx = np.divmod(rest, s)
                parts.append((sample, xx, yy, t, np.full(rep.size, pol, np.int8)))
                ref[pix] += np.float32(sign) * cnt.astype(np.float32) * c
        l_prev = l_cur

    if parts:
        sample = np.concatenate([q[0] for q in parts])
        cols = [np.concatenate([q[j] for q in parts]) for j in range(1, 5)]
    else:
        sample = np.zeros(0, np.int64)
        cols = [np.zeros(0, np.int64)] * 3 + [np.zeros(0, np.int8)]
    order = np.argsort(sample * (cam.duration_us + 1) + cols[2], kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(sample, minlength=n))])
    return EventStore(
        x=cols[0][order].astype(np.uint8),
        y=cols[1][order].astype(np.uint8),
        t=cols[2][order].astype(np.int32),
        p=cols[3][order].astype(np.int8),
        offsets=offsets,
    )
