"""The dataset registry: one entry per data set, and ``load_dataset``, the one
entry point that finds a set by name and checks what it is given.

A loader is a function ``fn(request, *, option=default, ...)`` returning a
:class:`~chsnn.data.DataBundle`. ``request`` is a :class:`DataRequest` (the path,
seed, time steps and cache root ``load_dataset`` was given); the loader's
keyword-only parameters are the set's options, their defaults the documented
defaults, so ``load_dataset`` can reject unknown options before loading anything::

    @register_dataset("blobs", input_shape=(4,), n_classes=2, kind="static", takes_path=False)
    def blobs(request):
        ...

``register_dataset`` can also be used bare (``@register_dataset``): the name is
the function name with ``_`` turned into ``-`` and the description the first
line of its docstring. A name or alias already taken is refused. The built-in
sets are registered in :mod:`chsnn.data.catalog`.
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chsnn.data._base import KINDS, DataBundle, cache_dir, check_int, hold_out_validation, parse_fraction

#: Frames per recording of an event set when ``time_steps`` is not given.
DEFAULT_TIME_STEPS = 8
#: Arguments every set takes; a loader's own options must not reuse them.
COMMON_OPTIONS = ("time_steps", "seed", "root", "validation")

# name -> one-line description, in registration (listing) order: the public
# registry, like chsnn.models.MODELS.
DATASETS: dict[str, str] = {}


@dataclass(frozen=True)
class DataRequest:
    """What ``load_dataset`` hands a loader besides its options."""

    name: str  # the canonical name
    path: Path | None  # PATH of a "NAME:PATH" spec, None when not given
    root: str | os.PathLike | None  # the cache directory as given (None: the default)
    time_steps: int | None  # None when not given; event sets get DEFAULT_TIME_STEPS instead
    seed: int

    @property
    def directory(self) -> Path:
        """Where a set's files are: PATH when given, else ``root/NAME``."""
        return self.path if self.path is not None else cache_dir(self.root) / self.name


@dataclass(frozen=True)
class DatasetInfo:
    """One registered data set. ``input_shape``, ``n_classes`` and ``kind`` are
    what the loader produces with its default options (event sets add a leading
    time axis: x is ``(T, *input_shape)``); None where the set has no fixed shape."""

    name: str
    loader: Callable[..., DataBundle]
    description: str
    aliases: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    n_classes: int | None = None
    kind: str | None = None  # "static", "events", or None: either
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> default, from the loader's keyword-only parameters
    takes_path: bool = True  # False: built in, a "NAME:PATH" spec is refused
    no_path_hint: str = ""  # what to do instead of giving a path, for sets that take none

    @property
    def has_fixed_shape(self) -> bool:
        return self.input_shape is not None


_ENTRIES: dict[str, DatasetInfo] = {}
_NAMES: dict[str, str] = {}  # every name and alias -> its canonical name


class _ShapesView(Mapping):
    """Read-only ``name -> (input_shape, n_classes, kind)`` of the sets with a fixed shape."""

    def _fixed(self) -> dict[str, DatasetInfo]:
        return {name: info for name, info in _ENTRIES.items() if info.has_fixed_shape}

    def __getitem__(self, name: str) -> tuple[tuple[int, ...], int, str]:
        info = self._fixed()[name]
        return info.input_shape, info.n_classes, info.kind

    def __iter__(self) -> Iterator[str]:
        return iter(self._fixed())

    def __len__(self) -> int:
        return len(self._fixed())

    def __repr__(self) -> str:
        return f"DATASET_SHAPES({dict(self)!r})"


#: name -> (input_shape, n_classes, kind) of every registered set with a fixed
#: shape, read from the registry (``npz`` and ``random`` have none).
DATASET_SHAPES: Mapping[str, tuple[tuple[int, ...], int, str]] = _ShapesView()


# --------------------------------------------------------------------------- registration


def _loader_options(fn: Callable) -> dict[str, Any]:
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"dataset loader {fn.__name__}: its first parameter must take the DataRequest")
    options = {}
    for p in params[1:]:
        if p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"dataset loader {fn.__name__}: parameter {p.name!r} must be keyword-only (after '*'), with a default")
        if p.default is p.empty:
            raise TypeError(f"dataset loader {fn.__name__}: option {p.name!r} needs a default value")
        if p.name in COMMON_OPTIONS:
            raise TypeError(f"dataset loader {fn.__name__}: {p.name!r} comes in the request, not as an option")
        options[p.name] = p.default
    return options


def _check_key(what: str, key: Any) -> str:
    if not isinstance(key, str) or not key or key != key.strip().lower() or ":" in key:
        raise ValueError(f"dataset {what} must be a non-empty lower-case string without ':' or surrounding spaces, got {key!r}")
    return key


def _check_shape(input_shape, n_classes, kind) -> None:
    if isinstance(input_shape, int):
        raise ValueError(f"input_shape must be a tuple such as ({input_shape},), got {input_shape!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    if (input_shape is None) != (n_classes is None) or (input_shape is not None and kind is None):
        raise ValueError("give input_shape, n_classes and kind together (a fixed shape), or leave input_shape and n_classes out")
    if input_shape is not None:
        for value in input_shape:
            check_int("input_shape", value, 1)
        check_int("n_classes", n_classes, 2)


def _refuse_taken(name: str, aliases: tuple[str, ...]) -> None:
    keys = (name, *aliases)
    for key in keys:
        if key in _NAMES:
            owner = _NAMES[key]
            taken = (
                f"dataset {key!r} is already registered"
                if key == owner
                else f"dataset name {key!r} is already taken, as an alias of {owner!r}"
            )
            raise ValueError(f"{taken}; pick another name or alias, or call unregister_dataset({owner!r}) first to replace it")
    if len(set(keys)) != len(keys):
        raise ValueError(f"dataset {name!r}: the name and aliases {keys} repeat one another")


def register_dataset(
    name: str | Callable | None = None,
    *,
    description: str | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    input_shape: tuple[int, ...] | None = None,
    n_classes: int | None = None,
    kind: str | None = None,
    takes_path: bool = True,
    no_path_hint: str = "use root= for its cache directory",
):
    """Decorator adding a data set's loader to :data:`DATASETS`.

    ``@register_dataset``, ``@register_dataset("name")`` or
    ``@register_dataset("name", description=..., aliases=(...), input_shape=(1, 28, 28),
    n_classes=10, kind="static")``. Give the shape, classes and kind the loader
    produces with its default options, so smoke runs can stand in for the set
    (:func:`chsnn.data.smoke_data`); leave them out when the shape varies.
    ``takes_path=False``: the set is built in and refuses "NAME:PATH" (the error
    ends with ``no_path_hint``). A name or alias already registered is an error.
    """

    def add(fn: Callable[..., DataBundle], set_name: str | None) -> Callable[..., DataBundle]:
        set_name = _check_key("name", set_name or fn.__name__.replace("_", "-"))
        keys = tuple(_check_key("alias", a) for a in ((aliases,) if isinstance(aliases, str) else aliases))
        _refuse_taken(set_name, keys)
        _check_shape(input_shape, n_classes, kind)
        text = description or _first_doc_line(fn) or set_name
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        options = types.MappingProxyType(_loader_options(fn))  # read-only: the defaults are the documented ones
        info = DatasetInfo(set_name, fn, text, keys, shape, n_classes, kind, options, bool(takes_path), no_path_hint)
        _ENTRIES[set_name] = info
        _NAMES.update(dict.fromkeys((set_name, *keys), set_name))
        DATASETS[set_name] = text
        return fn

    if callable(name):  # bare @register_dataset
        return add(name, None)
    return lambda fn: add(fn, name)


def _first_doc_line(fn: Callable) -> str:
    doc = (inspect.getdoc(fn) or "").strip()
    return doc.splitlines()[0] if doc else ""


def unregister_dataset(name: str) -> DatasetInfo:
    """Remove a registered set (by name or alias) and return its entry; for
    replacing a set, e.g. when a notebook cell that registers it runs again."""
    info = dataset_info(name)
    del _ENTRIES[info.name]
    del DATASETS[info.name]
    for key in (info.name, *info.aliases):
        del _NAMES[key]
    return info


# --------------------------------------------------------------------------- lookup


def dataset_info(name: str) -> DatasetInfo:
    """The entry of a registered set, by name or alias (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in _NAMES:
        raise ValueError(f"unknown dataset {str(name).strip()!r}; valid names: {', '.join(DATASETS)}")
    return _ENTRIES[_NAMES[key]]


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """``"NAME"`` or ``"NAME:PATH"`` -> (canonical name, path or None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a dataset spec is 'NAME' or 'NAME:PATH', got {spec!r}; valid names: {', '.join(DATASETS)}")
    name, sep, path = spec.partition(":")
    key = dataset_info(name).name
    path = path.strip()
    if sep and not path:
        raise ValueError(f"empty path in dataset spec {spec!r}; use '{key}:/path/to/data' or just '{key}'")
    return key, (Path(path).expanduser() if path else None)


# --------------------------------------------------------------------------- loading


def load_dataset(
    spec: str,
    *,
    time_steps: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    validation: str | float = "",
    **options,
) -> DataBundle:
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
      string, e.g. "0.2", pools Train and Test and splits them again by seed;
      ``kfold``, a count, e.g. 5, pools them into that many
      stratified folds and tests on fold ``seed % k``: seeds 0..k-1 are one
      k-fold cross-validation).
    - ``validation`` (any set; a fraction, e.g. "0.2" or 0.2): hold out that
      stratified share of the training set, by seed, and evaluate on it instead of
      the test set, which stays unseen: the split to tune recipes on.
    - ``random`` takes ``input_shape``, ``n_classes``, ``n_train``, ``n_test`` and
      ``kind`` (static or events; default: events exactly when ``time_steps`` is
      given); see :mod:`chsnn.data.synthetic`.
    - Each set's options and their defaults: ``dataset_info(name).options``.

    Nothing is ever downloaded: missing files raise ``MissingDataError`` naming the
    files, the directory searched and where to get them.
    """
    name, path = parse_spec(spec)
    info = _ENTRIES[name]
    _check_options(info, options)
    if time_steps is not None:
        time_steps = check_int("time_steps", time_steps, 1)
    seed = check_int("seed", seed, 0)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a directory path, got {root!r}")
    if not info.takes_path and path is not None:
        raise ValueError(f"{name} is built in and takes no path (got '{name}:{path}'); {info.no_path_hint}")
    if info.kind == "events" and time_steps is None:
        time_steps = DEFAULT_TIME_STEPS
    held_out = None if validation == "" else parse_fraction("validation", validation)  # checked before any loading
    request = DataRequest(name, path, root, time_steps, seed)
    bundle = _checked(info, info.loader(request, **options))
    return bundle if held_out is None else hold_out_validation(bundle, held_out, seed)


def _check_options(info: DatasetInfo, options: dict) -> None:
    for key in options:
        if key not in info.options:
            valid = ", ".join([*COMMON_OPTIONS, *info.options])
            raise ValueError(f"unknown option {key!r} for dataset {info.name!r}; valid options: {valid}")
    # Text options (split=, labels=, ...) come from configs and the command line: no silent casts.
    for key, value in options.items():
        if isinstance(info.options[key], str) and not isinstance(value, str):
            raise ValueError(f"option {key!r} must be a string, got {value!r}")


def _checked(info: DatasetInfo, bundle: Any) -> DataBundle:
    """The loader's bundle, refused when it is not what the set was registered with
    (smoke runs and exports rely on the registered shape)."""
    if not isinstance(bundle, DataBundle):
        raise TypeError(f"loader of dataset {info.name!r} returned {type(bundle).__name__}, not a DataBundle")
    if info.has_fixed_shape and (bundle.input_shape, bundle.kind) != (info.input_shape, info.kind):
        raise ValueError(
            f"loader of dataset {info.name!r} returned {bundle.kind} data of input_shape {bundle.input_shape}, "
            f"but the set is registered as {info.kind} {info.input_shape}"
        )
    return bundle
