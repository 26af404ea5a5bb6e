"""The model registry: names, builders and the one validated entry point.

A builder is a function ``fn(input_shape, n_classes, time_steps, *, option=default, ...)``
returning an ``nn.Module``; its keyword-only parameters are the model's
options (their defaults are the documented defaults), so ``build_model`` can
reject unknown options before building anything::

    @register_model("snn-mlp", description="Spiking MLP ...")
    def snn_mlp(input_shape, n_classes, time_steps, *, hidden=(512, 512), tau=2.0):
        ...

``register_model`` can also be used bare (``@register_model``): the name is
the function name with ``_`` turned into ``-`` and the description the first
line of its docstring. Non-spiking (ANN) models register with
``spiking=False``; they get ``time_steps=None`` and take input ``(N, *input_shape)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

# name -> one-line description (the public registry, timm style).
MODELS: dict[str, str] = {}


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    spiking: bool
    defaults: dict[str, Any]  # option -> default, from the builder's keyword-only parameters
    open_options: bool  # the builder takes **options and validates them itself


_ENTRIES: dict[str, _Entry] = {}


def _options_of(fn: Callable) -> tuple[dict[str, Any], bool]:
    defaults, open_options = {}, False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty:
                raise TypeError(f"model builder {fn.__name__}: option {p.name!r} needs a default value")
            defaults[p.name] = p.default
        elif p.kind is p.VAR_KEYWORD:
            open_options = True
    return defaults, open_options


def register_model(name: str | Callable | None = None, *, description: str | None = None, spiking: bool = True, overwrite: bool = False):
    """Decorator adding a model builder to :data:`MODELS`.

    ``@register_model``, ``@register_model("name")`` or
    ``@register_model("name", description="...", spiking=False)``. A second
    model under the same name is an error unless ``overwrite=True``.
    """

    def add(fn: Callable[..., nn.Module], model_name: str | None) -> Callable[..., nn.Module]:
        model_name = model_name or fn.__name__.replace("_", "-")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model name must be a non-empty string, got {model_name!r}")
        if model_name in _ENTRIES and not overwrite:
            raise ValueError(f"model {model_name!r} is already registered (pass overwrite=True to replace it)")
        text = description
        if text is None:
            doc = (inspect.getdoc(fn) or "").strip()
            text = doc.splitlines()[0] if doc else model_name
        defaults, open_options = _options_of(fn)
        _ENTRIES[model_name] = _Entry(model_name, fn, text, spiking, defaults, open_options)
        MODELS[model_name] = text
        return fn

    if callable(name):  # bare @register_model
        return add(name, None)
    return lambda fn: add(fn, name)


def model_defaults(name: str) -> dict[str, Any]:
    """The options a registered model accepts, with their defaults."""
    return dict(_entry(name).defaults)


def is_spiking(name: str) -> bool:
    """Whether a registered model is a spiking network (it runs over time steps)."""
    return _entry(name).spiking


def _entry(name: str) -> _Entry:
    if name not in _ENTRIES:
        close = difflib.get_close_matches(str(name), list(_ENTRIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listing = "; ".join(f"{k}: {v}" for k, v in MODELS.items())
        raise ValueError(f"unknown model {name!r}{hint}; registered models: {listing}")
    return _ENTRIES[name]


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _input_shape(value) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise ValueError(f"input_shape must be a tuple of positive integers such as (2, 24, 24), got {value!r}") from None
    if not dims:
        raise ValueError("input_shape must have at least one dimension, got ()")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(f"input_shape must be a tuple of positive integers such as (2, 24, 24), got {value!r}")
    return tuple(int(d) for d in dims)


def build_model(name: str, input_shape, n_classes: int, time_steps: int | None = None, **options) -> nn.Module:
    """Build a registered model.

    Args:
        name: a key of :data:`MODELS`.
        input_shape: the shape of one sample at one time step, e.g. ``(2, 24, 24)``.
        n_classes: number of output logits.
        time_steps: the number of time steps the data uses (spiking models;
            informational: the forward accepts any ``T``). Ignored (stored as
            ``None``) for non-spiking models.
        **options: model options; see :func:`model_defaults` for each model's.

    The model carries ``spiking``, ``time_steps``, ``input_shape``,
    ``n_classes``, ``model_name``, ``default_engine_options`` and
    ``head_groups`` (``{}`` unless the builder set them) and ``options`` (the full resolved options,
    so ``build_model(m.model_name, m.input_shape, m.n_classes, m.time_steps,
    **m.options)`` rebuilds it).

    Raises:
        ValueError: unknown model name or option, or a bad size or option value.
    """
    entry = _entry(name)
    input_shape = _input_shape(input_shape)
    n_classes = _positive_int("n_classes", n_classes)
    if entry.spiking:
        time_steps = None if time_steps is None else _positive_int("time_steps", time_steps)
    else:
        time_steps = None
    if not entry.open_options:
        unknown = sorted(set(options) - set(entry.defaults))
        if unknown:
            allowed = ", ".join(entry.defaults) or "none"
            raise ValueError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for model {name!r}; "
                f"allowed options: {allowed}"
            )
    model = entry.builder(input_shape, n_classes, time_steps, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"builder of model {name!r} returned {type(model).__name__}, not an nn.Module")
    model.spiking = entry.spiking
    model.time_steps = time_steps
    model.input_shape = input_shape
    model.n_classes = n_classes
    model.model_name = name
    resolved = {**entry.defaults, **options}
    model.options = {**resolved, **getattr(model, "options", {})}
    # Read by the trainer / sparse engine; absent means none.
    if not isinstance(getattr(model, "default_engine_options", None), dict):
        model.default_engine_options = {}
    if not isinstance(getattr(model, "head_groups", None), dict):
        model.head_groups = {}
    return model
