"""Run configs: the defaults, the zoo's YAML files, ``--set`` overrides,
validation, and the device a config names.

A run is described by one config: :data:`DEFAULTS`, then a zoo YAML file from
``models/`` (or any YAML path), then the command-line options, then ``--set
key=value`` overrides (:func:`resolve_config`). Unknown keys and bad values
fail with a :class:`~chsnn.sparse.ConfigError` naming the key, the value and
what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path

import torch

from chsnn.sparse import ConfigError, EngineConfig

ZOO_DIR = Path(os.environ.get("CHSNN_ZOO", Path(__file__).resolve().parent.parent / "models"))
DEFAULT_CONFIG = "snn-mlp_ndigits"

DEFAULTS: dict = {
    "description": "",
    "model": "snn-mlp",
    "model_options": {},
    "data": "ndigits",
    "data_options": {},
    "encoder": "direct",  # static data into spiking models: direct, poisson, latency
    "time_steps": 8,
    "epochs": 10,
    "max_steps": None,  # stop after this many optimizer steps (smoke runs)
    "batch_size": 64,  # the global batch: a multi-process run (torchrun) splits each batch over its ranks
    "eval_batch_size": 256,  # global too
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "updates_per_epoch": 1,  # topology updates per epoch, unless engine.update_interval is set
    # ...but at least this many optimizer steps apart, so new links have time
    # to learn (unless fewer than 4 updates would fit before the topology's end)
    "min_update_steps": 100,
    # Calibration batches handed to the engine; unset: the training set's
    # first engine.calibration_samples samples (4096 by default).
    "calibration_batches": None,
    "seed": 0,
    "device": "auto",
    "num_workers": 0,
    "precision": "fp32",  # forward passes under torch.autocast: fp32 (none), bf16, fp16 (CUDA only, with a GradScaler)
    "dist_timeout": 300,  # seconds a multi-process run waits for another rank before failing (CHSNN_DIST_TIMEOUT overrides)
    "engine": {"method": "chsnn", "sparsity": 0.95},
    "results": {},  # figures this config reached (informational, written by the zoo runs)
}
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
ENCODERS = ("direct", "poisson", "latency")
PRECISIONS = ("fp32", "bf16", "fp16")


# Configs -----------------------------------------------------------------------


def _yaml():
    import yaml

    return yaml


_NUMBER = r"""^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+(?:[eE][-+]?[0-9]+)$"""


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping and reads
    numbers like ``1e-3`` (YAML 1.2, no dot) as floats rather than strings."""
    yaml = _yaml()

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(
                        f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); give each key once"
                    )
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_NUMBER), list("-+0123456789."))
    return StrictLoader


def yaml_load(text: str):
    """YAML as chsnn reads configs and ``--set`` values (see :func:`_strict_loader`)."""
    return _yaml().load(text, Loader=_strict_loader())


def find_config(name_or_path: str) -> Path:
    """A zoo name (``snn-mlp_ndigits``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    zoo = ZOO_DIR / f"{name_or_path}.yaml"
    if not zoo.is_file():
        names = ", ".join(sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))) or "(none found)"
        raise ConfigError(f"no zoo config named {name_or_path!r} in {ZOO_DIR}; available: {names}")
    return zoo


def load_config_file(path: Path) -> dict:
    try:
        data = yaml_load(path.read_text()) or {}
    except Exception as exc:  # yaml.YAMLError, a key given twice, decoding errors
        detail = " ".join(str(exc).split())
        raise ConfigError(f"cannot read config {path}: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of options, not {type(data).__name__}")
    return data


def parse_assignment(text: str) -> tuple[list[str], object]:
    """``engine.update_interval=1`` -> (["engine", "update_interval"], 1)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. engine.zeta=0.2), got {text!r}")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml_load(value) if value.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"--set {text!r}: {exc}") from None
    except Exception:
        parsed = value
    return parts, parsed


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(config: str | None = None, overrides: dict | None = None, assignments: list[str] = ()) -> dict:
    """Defaults <- zoo/config file <- options <- ``--set`` assignments,
    validated: unknown keys and bad values fail with the key and what is
    allowed."""
    cfg = copy.deepcopy(DEFAULTS)
    source = find_config(config or DEFAULT_CONFIG)
    cfg = merge(cfg, load_config_file(source))
    cfg["config_source"] = str(source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    # Another model or dataset than the config's: its options do not carry over
    # (the same dataset at another path keeps them).
    for key in ("model", "data"):
        if key in overrides and _option_owner(key, overrides[key]) != _option_owner(key, cfg[key]):
            cfg[f"{key}_options"] = {}
    cfg = merge(cfg, overrides)
    for text in assignments:
        parts, value = parse_assignment(text)
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                if p not in node and node is cfg:
                    raise ConfigError(f"--set {text}: unknown key {p!r}; top-level keys are {', '.join(sorted(DEFAULTS))}")
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    validate_config(cfg)
    cfg["data"] = resolve_data_path(cfg["data"])
    return cfg


def _option_owner(key: str, value):
    """What model_options / data_options belong to: the model's name, or the
    dataset's name without its path."""
    if key == "data" and isinstance(value, str):
        return value.split(":", 1)[0]
    return value


def resolve_data_path(spec: str) -> str:
    """``NAME:PATH`` with PATH made absolute, so the run directory's config
    finds the data from any working directory (``chsnn eval``, ``--resume``)."""
    name, sep, path = spec.partition(":")
    if not sep or not path.strip():
        return spec
    return f"{name}:{Path(path.strip()).expanduser().resolve()}"


def validate_config(cfg: dict) -> None:
    allowed = set(DEFAULTS) | {"config_source", "default"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; allowed keys are {', '.join(sorted(allowed))}")

    def need(key, ok, allowed_text):
        if not ok:
            raise ConfigError(f"config {key}={short_repr(cfg.get(key))} is not allowed; {allowed_text}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):  # finite: inf and nan are no learning rate, momentum or timeout
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def one_of(key, values, what, note=""):
        v = cfg[key]
        need(key, isinstance(v, str) and v in values, f"valid {what} are {', '.join(values)}{note}")

    for key in ("epochs", "batch_size", "eval_batch_size", "time_steps", "updates_per_epoch", "min_update_steps"):
        need(key, is_int(cfg[key]) and cfg[key] > 0, "it must be a whole number > 0")
    if cfg["calibration_batches"] is not None:
        need(
            "calibration_batches",
            is_int(cfg["calibration_batches"]) and cfg["calibration_batches"] > 0,
            "it must be a whole number > 0, or null",
        )
    if cfg["max_steps"] is not None:
        need("max_steps", is_int(cfg["max_steps"]) and cfg["max_steps"] > 0, "it must be a whole number > 0")
    one_of("optimizer", OPTIMIZERS, "optimizers")
    one_of("lr_schedule", LR_SCHEDULES, "schedules")
    one_of("encoder", ENCODERS, "encoders")
    one_of("precision", PRECISIONS, "precisions", " (fp16 needs a CUDA device)")
    need("lr", is_number(cfg["lr"]) and cfg["lr"] > 0, "it must be a finite number > 0, e.g. 1e-3")
    need("momentum", is_number(cfg["momentum"]) and 0 <= cfg["momentum"] < 1, "it must be a number in [0, 1), e.g. 0.9")
    need("weight_decay", is_number(cfg["weight_decay"]) and cfg["weight_decay"] >= 0, "it must be a finite number >= 0")
    need("seed", is_int(cfg["seed"]) and 0 <= cfg["seed"] < 2**32, "it must be a whole number in [0, 2^32)")
    need("num_workers", is_int(cfg["num_workers"]) and cfg["num_workers"] >= 0, "it must be a whole number >= 0")
    need("dist_timeout", is_number(cfg["dist_timeout"]) and cfg["dist_timeout"] > 0, "it must be a number of seconds > 0")
    for key in ("description", "model", "data"):
        need(
            key,
            isinstance(cfg[key], str) and (key == "description" or cfg[key].strip() != ""),
            "it must be a string" + (" (a name)" if key != "description" else ""),
        )
    need("device", isinstance(cfg["device"], str), f"valid devices are {DEVICES_TEXT}")
    check_device_name(cfg["device"])
    for key in ("model_options", "data_options", "engine", "results"):
        need(key, isinstance(cfg[key], dict), "it must be a mapping")
    for key in ("model_options", "data_options", "engine"):
        bad = [k for k in cfg[key] if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"config {key} has a key {short_repr(bad[0])} that is not a name; its keys must be option names")
    if "default" in cfg:
        need("default", isinstance(cfg["default"], bool), "it must be true or false")

    # Raises on unknown engine options or bad values (total_steps is filled in per run).
    EngineConfig.from_dict({"total_steps": 1, **cfg["engine"]})


def short_repr(value, limit: int = 80) -> str:
    """repr on one line, cut to ``limit`` characters (for error messages)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_defaults(cfg: dict) -> dict:
    """``cfg`` with the keys added to :data:`DEFAULTS` since it was saved filled in."""
    cfg = dict(cfg)
    for key, value in DEFAULTS.items():
        cfg.setdefault(key, copy.deepcopy(value))
    return cfg


def dump_config(cfg: dict) -> str:
    """The config as a run directory's ``config.yaml`` holds it."""
    return _yaml().safe_dump(cfg, sort_keys=False)


# Devices -------------------------------------------------------------------------

DEVICES_TEXT = "auto, cpu, cuda, cuda:N (N a GPU index), mps (Apple GPUs)"


def check_device_name(name: str) -> None:
    """A device name chsnn trains on (availability is checked by :func:`pick_device`)."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", name.strip()):
        raise ConfigError(f"device {short_repr(name)} is not allowed; valid devices are {DEVICES_TEXT}")


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto``: CUDA when present. With ``local_rank`` (a multi-process
    run), CUDA without an index means ``cuda:LOCAL_RANK``."""
    check_device_name(name)
    name = name.strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device mps was asked for, but torch sees no Apple MPS GPU here; use --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name} was asked for, but torch sees {torch.cuda.device_count()} GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    if device.type == "cuda" and device.index is None and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()}; start at most that many processes per node"
            )
        device = torch.device("cuda", local_rank)
    return device


# The zoo and run names -------------------------------------------------------------


def default_run_dir(cfg: dict) -> Path:
    e = cfg["engine"]
    name = f"{cfg['model']}_{str(cfg['data']).split(':')[0]}_{e.get('method', 'chsnn')}_s{e.get('sparsity', 0)}_seed{cfg['seed']}"
    return Path("runs") / name


def zoo_table() -> list[dict]:
    rows = []
    for path in sorted(ZOO_DIR.glob("*.yaml")):
        cfg = load_config_file(path)
        res = cfg.get("results") or {}
        rows.append(
            {
                "name": path.stem,
                "model": cfg.get("model", DEFAULTS["model"]),
                "data": cfg.get("data", DEFAULTS["data"]),
                "method": (cfg.get("engine") or {}).get("method", "chsnn"),
                "sparsity": (cfg.get("engine") or {}).get("sparsity"),
                "test_accuracy": res.get("test_accuracy"),
                "reached_sparsity": res.get("sparsity"),
                "wall_seconds": res.get("wall_seconds"),
                "default": bool(cfg.get("default")) or path.stem == DEFAULT_CONFIG,
            }
        )
    return rows
