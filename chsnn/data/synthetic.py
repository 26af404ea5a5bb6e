"""Seeded random data of any shape, for smoke runs of configs whose real data is
not on disk.

```python
from chsnn.data import load_dataset, smoke_data
bundle = load_dataset("random", input_shape=(3, 32, 32), n_classes=10)           # static
bundle = load_dataset("random", input_shape=(2, 128, 128), n_classes=11, time_steps=16)  # events
spec, options = smoke_data("dvsgesture:/data/dvs", time_steps=16)  # the same shapes as the real set
bundle = load_dataset(spec, **options)
```

The data carry no signal: labels are drawn independently of the inputs, so
accuracy stays at chance. Use it to check that a model, a config and the
training loop run end to end, never to measure anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chsnn.data._base import ArrayDataset, DataBundle, check_int
from chsnn.data.registry import DEFAULT_TIME_STEPS, dataset_info, parse_spec

#: Sizes of the random sets smoke_data asks for: two batches of 8 to train on.
SMOKE_TRAIN = 16
SMOKE_TEST = 8
#: Mean event count per pixel and time bin of random event frames.
EVENT_RATE = 0.2
RANDOM_DEFAULTS: dict[str, Any] = {
    "input_shape": (1, 28, 28),
    "n_classes": 10,
    "n_train": 64,
    "n_test": 32,
    "kind": None,
}
_MAX_ELEMENTS = 2**28  # per set: refuse shapes that would not fit in memory anyway


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"input_shape must be a non-empty list of positive integers, e.g. [3, 32, 32], got {value!r}")
    try:
        return tuple(check_int("input_shape", v, 1) for v in value)
    except ValueError:
        raise ValueError(f"input_shape must be a non-empty list of positive integers, e.g. [3, 32, 32], got {value!r}") from None


def load_random_bundle(
    time_steps: int | None = None,
    seed: int = 0,
    *,
    input_shape: Any = RANDOM_DEFAULTS["input_shape"],
    n_classes: int = RANDOM_DEFAULTS["n_classes"],
    n_train: int = RANDOM_DEFAULTS["n_train"],
    n_test: int = RANDOM_DEFAULTS["n_test"],
    kind: str | None = None,
) -> DataBundle:
    """Random inputs of ``input_shape`` and uniform labels over ``n_classes``.

    ``kind`` "static": pixels uniform in [0, 1), ``time_steps`` ignored (as for the
    real static sets). ``kind`` "events": frames ``(time_steps, *input_shape)`` of
    Poisson counts with mean ``EVENT_RATE`` (``time_steps`` default 8). ``kind``
    None (the default): events when ``time_steps`` is given, else static.
    The same ``seed`` always gives the same data.
    """
    shape = _shape(input_shape)
    n_classes = check_int("n_classes", n_classes, 2)
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    seed = check_int("seed", seed, 0)
    if time_steps is not None:
        time_steps = check_int("time_steps", time_steps, 1)
    if kind is None:
        kind = "static" if time_steps is None else "events"
    if kind not in ("static", "events"):
        raise ValueError(f"kind must be 'static' or 'events' (or left out), got {kind!r}")
    if kind == "static":
        time_steps = None
    elif time_steps is None:
        time_steps = DEFAULT_TIME_STEPS
    sample = shape if kind == "static" else (time_steps, *shape)
    per_sample = int(np.prod(sample, dtype=np.int64))
    if per_sample * max(n_train, n_test) > _MAX_ELEMENTS:
        raise ValueError(
            f"random data of {max(n_train, n_test)} samples of shape {sample} is too large; lower n_train / n_test or input_shape"
        )

    gen = torch.Generator().manual_seed(seed)

    def part(n: int, name: str) -> ArrayDataset:
        if kind == "static":
            x = torch.rand((n, *sample), generator=gen)
        else:
            x = torch.poisson(torch.full((n, *sample), EVENT_RATE), generator=gen).to(torch.int16)
        y = torch.randint(0, n_classes, (n,), generator=gen)
        return ArrayDataset(x, y, name=f"random/{name}")

    train, test = part(n_train, "train"), part(n_test, "test")
    what = "uniform [0, 1) pixels" if kind == "static" else f"Poisson({EVENT_RATE}) event counts over {time_steps} time steps"
    return DataBundle(
        name="random",
        train=train,
        test=test,
        input_shape=shape,
        n_classes=n_classes,
        time_steps=time_steps,
        kind=kind,
        note=f"random data for smoke runs (no signal, chance accuracy): {what}, seed {seed}, {n_train}/{n_test}",
    )


def smoke_data(spec: str, time_steps: int) -> tuple[str, dict]:
    """``("random", options)`` standing in for the data set ``spec`` ("mnist",
    "dvsgesture:/x", ...): the same input shape, classes and kind (event sets get
    ``time_steps`` frames), a few samples. ``load_dataset(*smoke)`` style:
    ``name, opts = smoke_data(spec, T); load_dataset(name, **opts)``."""
    name, _ = parse_spec(spec)
    time_steps = check_int("time_steps", time_steps, 1)
    if name == "random":
        raise ValueError("the data is already 'random'; it needs no smoke stand-in")
    info = dataset_info(name)
    if not info.has_fixed_shape:  # npz, or a set registered without a shape
        raise ValueError(
            f"{name} data has no fixed shape, so a smoke run cannot guess it; give random data of your shape instead, "
            "e.g. --data random --set 'data_options={input_shape: [1, 28, 28], n_classes: 10, kind: static}'"
        )
    return "random", {
        "input_shape": list(info.input_shape),
        "n_classes": info.n_classes,
        "kind": info.kind,
        "time_steps": time_steps if info.kind == "events" else None,
        "n_train": SMOKE_TRAIN,
        "n_test": SMOKE_TEST,
    }
