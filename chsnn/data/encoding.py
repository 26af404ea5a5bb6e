"""Spike encodings of static inputs: (N, ...) values in [0, 1] -> (T, N, ...)."""

from __future__ import annotations

import torch

ENCODINGS = ("direct", "poisson", "latency")


def encode(x: torch.Tensor, time_steps: int, method: str = "direct", generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn a batch ``x`` (N, ...) into ``time_steps`` steps, shape (T, N, ...).

    - ``direct``: the input repeated at every step (analog current input);
    - ``poisson``: rate coding, a spike at each step with probability ``x``
      (clamped to [0, 1]), drawn with ``generator``;
    - ``latency``: one spike per input at step ``round((1 - x) * (T - 1))`` (bright
      inputs fire first), none where ``x == 0``.

    The result is floating point (x's dtype when x is floating, else float32), on x's device.
    """
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
    if method not in ENCODINGS:
        raise ValueError(f"method must be one of {', '.join(ENCODINGS)}, got {method!r}")
    x = torch.as_tensor(x)
    if x.ndim < 1:
        raise ValueError("x must be a batch (N, ...), got a scalar")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    t = time_steps
    if method == "direct":
        return x.unsqueeze(0).repeat(t, *([1] * x.ndim))
    v = x.clamp(0.0, 1.0)
    if method == "poisson":
        u = torch.rand((t, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (u < v.unsqueeze(0)).to(x.dtype)
    step = torch.round((1.0 - v) * (t - 1)).to(torch.long).unsqueeze(0)
    out = torch.zeros((t, *x.shape), dtype=x.dtype, device=x.device)
    out.scatter_(0, step, (v > 0).to(x.dtype).unsqueeze(0))
    return out
