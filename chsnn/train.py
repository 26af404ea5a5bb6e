"""Training runs: ``chsnn train``, ``chsnn eval`` and ``chsnn zoo``.

A run is described by one config (a zoo YAML file from ``models/``, then the
command-line options, then ``--set key=value`` overrides) and leaves a run
directory:

    config.yaml      the resolved config
    metrics.jsonl    one line per epoch: loss, accuracies, per-layer density and
                     active neurons, firing rates, topology update times
    tb/              TensorBoard logs
    latest.pt        weights, masks, engine, optimizer and RNG state (atomic)
    best.pt          the same at the best test accuracy
    summary.json     the final figures

Started by ``torchrun`` (``python -m torch.distributed.run --nproc_per_node N
-m chsnn train ...``) the run is data-parallel over N processes: see
:mod:`chsnn.distributed` for the design. ``batch_size`` and
``eval_batch_size`` are then global (split over the ranks), so a run has the
same steps, schedules and topology updates on any number of ranks; only rank 0
writes the run directory. ``precision`` (fp32, bf16, fp16) runs the forward
passes under ``torch.autocast``; the engine's statistics and link scores stay
fp32/float64.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from chsnn import distributed
from chsnn.sparse import ConfigError, EngineConfig, SparseEngine

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
CALIBRATION_BYTES = 1 << 30  # calibration inputs kept on the device, unless calibration_batches is set
# lr_schedule: linear, the CHT reference's: down to 1% of lr over the first 90% of training.
LINEAR_LR_FLOOR, LINEAR_LR_SPAN = 0.01, 0.9
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
    import re

    yaml = _yaml()

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); give each key once")
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
        need("calibration_batches", is_int(cfg["calibration_batches"]) and cfg["calibration_batches"] > 0, "it must be a whole number > 0, or null")
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
        need(key, isinstance(cfg[key], str) and (key == "description" or cfg[key].strip() != ""), "it must be a string" + (" (a name)" if key != "description" else ""))
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


# Data and model -------------------------------------------------------------------

DEVICES_TEXT = "auto, cpu, cuda, cuda:N (N a GPU index), mps (Apple GPUs)"


def check_device_name(name: str) -> None:
    """A device name chsnn trains on (availability is checked by :func:`pick_device`)."""
    import re

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
        raise ConfigError(f"device {name} was asked for, but torch sees {torch.cuda.device_count()} GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()}; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
    return device


class Runner:
    """Everything a run needs, built from a resolved config."""

    def __init__(self, cfg: dict):
        from chsnn.data import encode, load_dataset
        from chsnn.models import build_model

        self.cfg = cfg
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.device = pick_device(cfg["device"], distributed.env_local_rank() if self.world > 1 else None)
        self.precision = cfg.get("precision", "fp32")
        self._check_precision()
        if self.world > 1 and cfg["batch_size"] < self.world:
            raise ConfigError(f"batch_size {cfg['batch_size']} is the global batch, split over {self.world} ranks: it must be at least {self.world}")
        torch.manual_seed(cfg["seed"])
        data_options = dict(cfg["data_options"])
        data_options.setdefault("seed", cfg["seed"])
        data_options.setdefault("time_steps", cfg["time_steps"])
        self.data = load_dataset(cfg["data"], **data_options)
        self._encode = encode
        self.model = build_model(cfg["model"], self.data.input_shape, self.data.n_classes, time_steps=cfg["time_steps"], **cfg["model_options"]).to(self.device)
        distributed.broadcast_module(self.model)  # every rank starts from rank 0's model
        self.spiking = bool(getattr(self.model, "spiking", False))
        self.steps_per_epoch = math.ceil(len(self.data.train) / cfg["batch_size"])
        # Schedules span the configured epochs; max_steps only stops early.
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.optimizer = self._optimizer()
        self.scheduler = self._lr_scheduler()
        # Each rank its own encoding noise (rank 0's is the single-process stream).
        self.encode_gen = torch.Generator(device="cpu").manual_seed(cfg["seed"] + 1 + 1000003 * self.rank)
        # The model's own defaults (e.g. Spikformer: only its linear layers, chains
        # inside each MLP) sit under the config's engine options.
        engine_cfg = {**getattr(self.model, "default_engine_options", {}), **cfg["engine"]}
        engine_cfg.setdefault("seed", cfg["seed"])
        engine_cfg.setdefault("total_steps", self.total_steps)
        engine_cfg.setdefault("update_interval", self.default_update_interval(engine_cfg))
        # One number of calibration batches: engine.calibration_batches, if set, wins;
        # unset, the first calibration_samples samples of the training set.
        n_calibration = engine_cfg.get("calibration_batches") or cfg["calibration_batches"]
        if n_calibration is None:
            bound = engine_cfg.get("calibration_samples", EngineConfig.calibration_samples)
            # The batches stay on the device for the whole run: at most CALIBRATION_BYTES
            # of inputs (DVS frames, 2x128x128 over 16 steps, are 2 MB a sample).
            per_sample = 4 * math.prod(self.data.input_shape) * (cfg["time_steps"] if self.spiking else 1)
            bound = min(bound, max(cfg["batch_size"], CALIBRATION_BYTES // per_sample))
            n_calibration = max(1, math.ceil(min(len(self.data.train), bound) / cfg["batch_size"]))
        engine_cfg["calibration_batches"] = n_calibration
        # Each rank calibrates on its part of the first batches; the engine's
        # sync hooks reduce the statistics over the ranks.
        calibration = [
            self.prepare(x) for x, y in self._batches(self.data.train, cfg["batch_size"], epoch=-1, limit=n_calibration, shard=True, shuffle=True) if y.numel()
        ]
        self.sync = distributed.DistributedSync() if self.world > 1 else None
        self.engine = SparseEngine(
            self.model,
            self.optimizer,
            engine_cfg,
            calibration=calibration,
            forward_fn=lambda m, x: m(x),
            row_groups=getattr(self.model, "head_groups", None),
            sync=self.sync,
        )
        if self.rank > 0:  # dropout and other noise: each rank its own (rank 0 keeps the single-process stream)
            torch.manual_seed(cfg["seed"] + 7919 * self.rank)
        # The engine's own schedule decides updates; the LR schedule steps per optimizer step.
        if self.scheduler is not None:
            self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.scheduler.step())

    def _lr_scheduler(self):
        schedule, total = self.cfg["lr_schedule"], max(1, self.total_steps)
        if schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        if schedule == "linear":
            span = max(1, round(LINEAR_LR_SPAN * total))
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 - (1.0 - LINEAR_LR_FLOOR) * min(step, span) / span)
        return None

    def default_update_interval(self, engine_cfg: dict) -> int:
        """Steps between topology updates: ``updates_per_epoch`` a epoch, but
        at least ``min_update_steps`` apart so a new link can learn before it
        is judged; never so far apart that fewer than 4 updates fit before
        the topology stops changing."""
        cfg = self.cfg
        per_epoch = max(1, self.steps_per_epoch // cfg["updates_per_epoch"])
        end = engine_cfg.get("end_step") or round(engine_cfg.get("end_fraction", EngineConfig.end_fraction) * self.total_steps)
        return max(1, min(max(per_epoch, cfg["min_update_steps"]), max(per_epoch, end // 4)))

    def _check_precision(self) -> None:
        p, dev = self.precision, self.device
        if p not in PRECISIONS:
            raise ConfigError(f"config precision={p!r} is not allowed; valid precisions are {', '.join(PRECISIONS)}")
        if p == "fp16" and dev.type != "cuda":
            raise ConfigError(f"precision fp16 needs a CUDA device (it trains with a GradScaler, CUDA only); the device is {dev}: use precision bf16 or fp32")
        if p == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision bf16: the GPU {torch.cuda.get_device_name(dev)} does not support bfloat16; use fp16 or fp32")

    def autocast(self):
        """The context the forward passes run in: torch.autocast for bf16 and
        fp16 (the weights, gradients, optimizer and engine stay fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def grad_scaler(self):
        """A GradScaler for fp16, else None."""
        return torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def _optimizer(self):
        cfg, params = self.cfg, self.model.parameters()
        # Fused kernels: faster, and on CPU they avoid unfused Adam's slow sqrt of
        # the zero second moments at pruned positions (see BENCHMARKS.md).
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        if cfg["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], **fused)
        cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
        return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], **fused)

    def _batches(self, dataset, batch_size, epoch: int, limit: int | None = None, skip: int = 0, shard: bool = False, shuffle: bool = False):
        """Batches in an order fixed by (seed, epoch): resuming mid-epoch
        replays the same order and skips what was done. With ``shard``, this
        rank's part of each (global) batch, possibly empty."""
        loader_gen = torch.Generator().manual_seed(self.cfg["seed"] * 1000003 + epoch)
        # epoch -1: evaluation (in order) or calibration (shuffled: data sets stored by class)
        order = torch.randperm(len(dataset), generator=loader_gen) if epoch >= 0 or shuffle else torch.arange(len(dataset))
        n_batches = math.ceil(len(dataset) / batch_size)
        whole = dataset.tensors() if hasattr(dataset, "tensors") else None  # in-memory sets: slice at once
        for b in range(skip, n_batches if limit is None else min(limit, n_batches)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if shard:
                idx = distributed.shard(idx)
            if whole is not None:
                yield whole[0][idx], whole[1][idx]
                continue
            items = [dataset[int(i)] for i in (idx if idx.numel() else order[:1])]
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
            yield (x, y) if idx.numel() else (x[:0], y[:0])

    @staticmethod
    def global_batch_size(n: int, batch_size: int, b: int) -> int:
        """Samples in batch ``b`` of a data set of ``n``."""
        return max(0, min(batch_size, n - b * batch_size))

    def shard_samples(self, n: int, batch_size: int) -> int:
        """Samples of a data set of ``n`` that this rank sees in one pass."""
        if self.world == 1:
            return n
        return sum(distributed.shard_size(self.global_batch_size(n, batch_size, b)) for b in range(math.ceil(n / batch_size)))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Model input: (T, N, ...) for spiking models (event frames moved to
        time-major; static images through the encoder), (N, ...) otherwise."""
        if self.spiking and not self.data.time_steps:  # encoded on the CPU (its generator's device), then moved once
            T = self.cfg["time_steps"]
            gen = self.encode_gen if self.cfg["encoder"] == "poisson" else None
            return self._encode(x.to("cpu", torch.float32), T, method=self.cfg["encoder"], generator=gen).to(self.device)
        x = x.to(self.device, torch.float32)
        if not self.spiking:
            return x.flatten(1, 2) if self.data.time_steps else x
        return x.transpose(0, 1)  # (N, T, ...) event frames

    @torch.no_grad()
    def evaluate(self, dataset=None) -> dict:
        """Test accuracy and loss, firing rates, and the synaptic operations
        and energy per sample (CH-SPEC section 7), in one pass. In a
        multi-process run each rank scores its part of every batch and the
        sums are reduced over the ranks (every rank gets the same result)."""
        from chsnn.energy import account_energy

        dataset = dataset or self.data.test
        probes = FiringRateProbes(self.model)
        score = {"correct": 0, "total": 0, "loss": 0.0}

        def tally(batch, logits):
            y = batch[1].to(self.device)
            score["loss"] += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            score["correct"] += int((logits.argmax(1) == y).sum())
            score["total"] += y.numel()

        batch_size = self.cfg["eval_batch_size"]
        local = self.shard_samples(len(dataset), batch_size)
        batches = ((self.prepare(x), y) for x, y in self._batches(dataset, batch_size, epoch=-1, shard=True) if y.numel())
        totals = dict.fromkeys(("sops", "macs", "energy_pj", "dense_sops", "dense_macs", "dense_energy_pj"), 0.0)
        try:
            if local or self.world == 1:  # a rank may hold no test sample when the test set has fewer than the ranks
                with self.autocast():
                    totals = account_energy(self.model, batches, on_output=tally)["totals"]
        finally:
            probes.remove()
        if self.world > 1:
            reduced = distributed.all_reduce(
                {"score": score, "totals": {k: v * score["total"] for k, v in totals.items()}, "spikes": probes.counts},
                what="reducing the evaluation",
            )
            score, probes.counts = reduced["score"], reduced["spikes"]
            totals = {k: v / max(score["total"], 1) for k, v in reduced["totals"].items()}
        n = max(score["total"], 1)
        out = {
            "test_accuracy": score["correct"] / n,
            "test_loss": score["loss"] / n,
            "firing_rates": probes.rates(),
            "macs_per_sample": totals["macs"],
            "energy_pj_per_sample": totals["energy_pj"],
            "dense_energy_pj_per_sample": totals["dense_energy_pj"],
        }
        if self.spiking:
            out["sops_per_sample"] = totals["sops"]
        return out


class FiringRateProbes:
    """Forward hooks counting the spikes of every spiking neuron layer."""

    def __init__(self, model: nn.Module):
        self.counts: dict[str, list[float]] = {}
        self.handles = []
        neuron_types = _neuron_types()
        for name, m in model.named_modules():
            if neuron_types and isinstance(m, neuron_types):
                self.counts[name] = [0.0, 0.0]
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            acc = self.counts[name]
            acc[0] += float(out.detach().sum())
            acc[1] += out.numel()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def rates(self) -> dict[str, float]:
        return {k: v[0] / v[1] for k, v in self.counts.items() if v[1]}


def _neuron_types():
    types = []
    try:
        from spikingjelly.activation_based.neuron import BaseNode

        types.append(BaseNode)
    except Exception:  # pragma: no cover - spikingjelly is a dependency
        pass
    try:
        from snntorch._neurons import SpikingNeuron

        types.append(SpikingNeuron)
    except Exception:  # pragma: no cover
        pass
    return tuple(types)


# Checkpoints and the run directory ---------------------------------------------------


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_run_dir(cfg: dict) -> Path:
    e = cfg["engine"]
    name = f"{cfg['model']}_{str(cfg['data']).split(':')[0]}_{e.get('method', 'chsnn')}_s{e.get('sparsity', 0)}_seed{cfg['seed']}"
    return Path("runs") / name


def _rng_state(runner: Runner) -> dict:
    return {"torch": torch.get_rng_state(), "encode": runner.encode_gen.get_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _checkpoint(runner: Runner, epoch: int, step_in_epoch: int, best: float, history: list, rank_rngs: list | None = None, partial: dict | None = None) -> dict:
    """The run's state (weights, masks, engine, optimizer, schedule, RNG);
    ``rank_rngs``: every rank's RNG state, for a multi-process run;
    ``partial``: the train loss/accuracy sums of the epoch in progress (so a
    resumed epoch's figures cover all of it). Tensors and plain data only:
    it loads with ``torch.load(weights_only=True)`` (:mod:`chsnn.checkpoint`)."""
    rng = _rng_state(runner)
    if rank_rngs is not None:
        rng["ranks"] = rank_rngs
    return {
        "config": runner.cfg,
        "epoch": epoch,  # epochs finished
        "step_in_epoch": step_in_epoch,  # batches done of the epoch in progress
        "best_accuracy": best,
        "history": history,
        "model": runner.model.state_dict(),
        "optimizer": runner.optimizer.state_dict(),
        "scheduler": runner.scheduler.state_dict() if runner.scheduler else None,
        "engine": runner.engine.state_dict(),
        "rng": rng,
        "world_size": runner.world,
        "epoch_partial": partial,
    }


def _restore(runner: Runner, ckpt: dict) -> None:
    runner.model.load_state_dict(ckpt["model"])
    runner.optimizer.load_state_dict(ckpt["optimizer"])
    if runner.scheduler and ckpt["scheduler"]:
        runner.scheduler.load_state_dict(ckpt["scheduler"])
    runner.engine.load_state_dict(ckpt["engine"])
    rng = ckpt["rng"]
    ranks = rng.get("ranks")
    if ranks is not None and len(ranks) == runner.world:  # each rank its own streams
        rng = ranks[runner.rank]
    elif runner.rank > 0:  # another world size: rank 0's streams, told apart per rank
        rng = dict(rng, torch=None, encode=None, cuda=None)
        torch.manual_seed(runner.cfg["seed"] + 7919 * runner.rank + 104729 * runner.engine.step_count)
        runner.encode_gen.manual_seed(runner.cfg["seed"] + 1 + 1000003 * runner.rank + 104729 * runner.engine.step_count)
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    if rng.get("encode") is not None:
        runner.encode_gen.set_state(rng["encode"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class TrainingDiverged(RuntimeError):
    """A non-finite loss or weight: the run stops; its last good checkpoint
    stays as it was and no summary.json is written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the state was saved and said so."""


def _non_finite(runner: Runner) -> str | None:
    """The first parameter or floating buffer holding NaN or inf, else None
    (one host sync for the whole model)."""
    tensors = [(n, t) for n, t in [*runner.model.named_parameters(), *runner.model.named_buffers()] if t.is_floating_point() and t.numel()]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        return None
    return next(n for n, t in tensors if not bool(torch.isfinite(t).all()))


def check_out_dir(out_dir: Path) -> None:
    """The run directory can be created and written, or a one-line error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file, not a directory; give a directory for the run")
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out_dir}: {parent} is a file, so the run directory cannot be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "the run directory" if parent == out_dir else f"{parent}, where the run directory would be made,"
        raise ConfigError(f"--out {out_dir}: {what} is not writable; give a directory you can write to")


# Options a resumed run may be given: they change where or how long it runs, not what it is.
RESUMABLE = ("--max-steps", "--device", "--quiet")


def _resume_conflicts(cfg: dict, requested: dict) -> list[str]:
    """``requested``: {option text: (config path, value)} given with --resume;
    those whose value differs from the saved config, described."""
    out = []
    for text, (path, value) in requested.items():
        node = cfg
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node != value:
            out.append(f"{text} (the run has {short_repr(node, 40)})")
    return out


def train(
    cfg: dict | None,
    out_dir: Path,
    resume: bool = False,
    quiet: bool = False,
    max_steps: int | None = None,
    device: str | None = None,
    requested: dict | None = None,
) -> dict:
    """Run (or resume) training; returns the summary. A resumed run keeps its
    saved config, except ``max_steps`` (None: run to the last epoch) and
    ``device`` (where it runs); ``requested``: other options given with the
    resume, {option text: (config path, value)}, refused when they differ
    from the saved config. Checkpoints are read with ``weights_only=True``.

    A non-finite loss or weight raises :class:`TrainingDiverged` (the last
    good checkpoint is kept, no summary written); Ctrl-C saves the state and
    raises :class:`RunInterrupted`.

    Started by torchrun with several ranks (``WORLD_SIZE`` > 1), it joins the
    process group first and trains data-parallel (:mod:`chsnn.distributed`);
    only rank 0 writes and prints. A lost rank raises
    :class:`chsnn.distributed.DistributedError`."""
    from chsnn.checkpoint import CheckpointError, load_checkpoint

    out_dir = Path(out_dir)
    latest = out_dir / "latest.pt"
    ckpt = None
    # Every rank checks and reads the run directory (nobody writes before all
    # ranks have joined), so they all fail, or all go on, alike.
    check_out_dir(out_dir)
    if resume:
        if not latest.is_file():
            raise ConfigError(f"--resume: no checkpoint {latest}; start the run without --resume (or give its --out)")
        try:
            ckpt = load_checkpoint(latest, training=True)
        except CheckpointError as exc:
            hint = f"; {out_dir / 'best.pt'} is there: copy it to latest.pt to resume from the best epoch" if (out_dir / "best.pt").is_file() else ""
            raise CheckpointError(f"--resume: {exc}{hint}") from None
        cfg = dict(ckpt["config"], max_steps=max_steps)
        for key, value in DEFAULTS.items():  # keys added since the run started get their defaults
            cfg.setdefault(key, copy.deepcopy(value))
        conflicts = _resume_conflicts(cfg, requested or {})
        if conflicts:
            raise ConfigError(
                f"--resume continues {out_dir} with the config it was started with; these options would change it: {'; '.join(conflicts)}. "
                f"Drop them, or start a new run with another --out (with --resume only {', '.join(RESUMABLE)} may be given)"
            )
        if device is not None and device != cfg["device"]:
            if not quiet:
                print(f"resuming on device {device} (the run was started with device {cfg['device']})", file=sys.stderr)
            cfg["device"] = device
        try:
            validate_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"--resume: the config saved in {latest} is not valid: {exc}") from None
    elif (out_dir / "summary.json").exists() or latest.exists():
        raise ConfigError(f"run directory {out_dir} already holds a run; use --resume to continue it or --out for a new one")
    own_group = False
    if distributed.launched() and not distributed.active():
        device = pick_device(cfg["device"], distributed.env_local_rank())
        distributed.init(device, distributed.timeout_seconds(cfg.get("dist_timeout")))
        own_group = True
    try:
        return _train(cfg, out_dir, ckpt, quiet=quiet or not distributed.is_main())
    finally:
        if own_group:  # also after a lost rank: gloo's threads must not outlive the interpreter
            distributed.teardown()


def _train(cfg: dict, out_dir: Path, ckpt: dict | None, quiet: bool) -> dict:
    from tqdm import tqdm

    main = distributed.is_main()
    latest = out_dir / "latest.pt"
    metrics = out_dir / "metrics.jsonl"
    if main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {out_dir}: cannot create the run directory ({exc.strerror or exc})") from None
        atomic_write_text(out_dir / "config.yaml", _yaml().safe_dump(cfg, sort_keys=False))
        if ckpt is None:
            # A new run: metrics.jsonl starts empty, even where an earlier run
            # left one (without a checkpoint, there is nothing to continue).
            if metrics.is_file() and metrics.stat().st_size and not quiet:
                print(f"note: {metrics} from an earlier run without a checkpoint is replaced by this run's", file=sys.stderr)
            atomic_write_text(metrics, "")
        else:
            # Resumed: the epochs the checkpoint holds, not lines written after it.
            atomic_write_text(metrics, "".join(json.dumps(row) + "\n" for row in ckpt["history"]))

    start = time.time()
    runner = Runner(cfg)
    epoch0, skip, best, history = 0, 0, -1.0, []
    wall_before = 0.0
    partial = None
    if ckpt is not None:
        _restore(runner, ckpt)
        epoch0, skip, best, history = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["best_accuracy"], ckpt["history"]
        wall_before = history[-1]["wall_seconds"] if history else 0.0
        partial = ckpt.get("epoch_partial") if skip else None
    writer = _tensorboard(out_dir / "tb") if main else None
    engine, model = runner.engine, runner.model
    multi = runner.world > 1
    scaler = runner.grad_scaler()
    n_train, batch_size = len(runner.data.train), cfg["batch_size"]
    step = engine.step_count
    max_steps = cfg["max_steps"]
    stopped = max_steps is not None and step >= max_steps
    epoch, done_in_epoch = epoch0, skip
    n_updates_before, loss_sum, correct, seen = len(engine.records), 0, 0, 0
    last_saved = step if ckpt is not None else None  # the step latest.pt holds
    try:
        for epoch in range(epoch0, cfg["epochs"]):
            if stopped:
                break
            n_updates_before = len(engine.records)
            loss_sum = correct = seen = 0
            if partial is not None:  # a resumed epoch: its figures cover the batches before the resume too
                n_updates_before = partial.get("records_start", n_updates_before)
                if runner.rank == 0:  # the other ranks' sums were reduced into rank 0's
                    loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
                partial = None
            bar = tqdm(total=runner.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=quiet, leave=False)
            done_in_epoch = skip
            for b, (x, y) in enumerate(runner._batches(runner.data.train, batch_size, epoch, skip=skip, shard=multi), start=skip):
                n_local = y.numel()
                share = n_local / runner.global_batch_size(n_train, batch_size, b) if multi else 1.0
                if runner.sync is not None:
                    runner.sync.weight = share
                runner.optimizer.zero_grad(set_to_none=True)
                if n_local:  # a rank with no sample of a short last batch only joins the all-reduce
                    inputs, y = runner.prepare(x), y.to(runner.device)
                    with runner.autocast():
                        logits = model(inputs)
                        loss = nn.functional.cross_entropy(logits.float(), y)
                    # Each rank's share of the global batch's mean loss; summing the gradients adds them up.
                    scaled = loss * share if multi else loss
                    if scaler is not None:
                        scaled = scaler.scale(scaled)
                        engine.loss_scale = scaler._get_scale_async()  # RigL unscales what it accumulates (a tensor: no host sync)
                    scaled.backward()
                if multi:
                    distributed.all_reduce_grads(model.parameters())
                if scaler is not None:
                    scaler.step(runner.optimizer)  # skips the step (and the engine) on inf/nan gradients
                    scaler.update()
                else:
                    runner.optimizer.step()  # the engine masks and updates after this
                done_in_epoch += 1
                step += 1
                if n_local:
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value) and not multi:  # several ranks: checked on the reduced sums below
                        raise TrainingDiverged(f"the training loss is {loss_value} at step {step} (epoch {epoch + 1})")
                    loss_sum += loss_value * n_local
                    correct += int((logits.argmax(1) == y).sum())
                    seen += n_local
                if not quiet:
                    bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}", density=f"{1 - engine.sparsity():.4f}", refresh=False)
                    bar.update()
                distributed.fault_point(step, model)
                if max_steps is not None and step >= max_steps:
                    stopped = True
                    break
            bar.close()
            skip = 0
            if multi:
                distributed.average_buffers(model)
                loss_sum, correct, seen = distributed.all_reduce([float(loss_sum), int(correct), int(seen)], what="reducing the training metrics")
            # Nothing non-finite is evaluated, logged or saved (every rank holds the same weights and sums).
            if not math.isfinite(loss_sum):
                raise TrainingDiverged(f"the training loss is {loss_sum / max(seen, 1)} over epoch {epoch + 1} (step {step})")
            bad = _non_finite(runner)
            if bad is not None:
                raise TrainingDiverged(f"{bad} holds NaN or infinite values after step {step} (epoch {epoch + 1})")
            evaluation = runner.evaluate()
            updates = engine.records[n_updates_before:]
            row = {
                "epoch": epoch + 1,
                "step": step,
                "loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "test_accuracy": evaluation["test_accuracy"],
                "test_loss": evaluation["test_loss"],
                "sparsity": engine.sparsity(),
                "layers": [{k: s[k] for k in ("name", "density", "active_in", "active_out")} for s in engine.stats()],
                "percolation": engine.percolation(),
                "firing_rates": evaluation["firing_rates"],
                "topology_updates": len(updates),
                "topology_update_ms": [round(r["ms"], 2) for r in updates],
                "lr": runner.optimizer.param_groups[0]["lr"],
                "wall_seconds": wall_before + time.time() - start,
            }
            for key in ("sops_per_sample", "macs_per_sample", "energy_pj_per_sample", "dense_energy_pj_per_sample"):
                if key in evaluation:
                    row[key] = evaluation[key]
            history.append(row)
            complete = not stopped or done_in_epoch == runner.steps_per_epoch
            rank_rngs = distributed.all_gather_object(_rng_state(runner), "gathering the RNG states") if multi else None
            if main:
                with open(metrics, "a") as f:
                    f.write(json.dumps(row) + "\n")
                _log_tensorboard(writer, row)
                sums = None if complete else {"loss_sum": float(loss_sum), "correct": int(correct), "seen": int(seen), "records_start": n_updates_before}
                ck = _checkpoint(runner, epoch + 1 if complete else epoch, 0 if complete else done_in_epoch, max(best, row["test_accuracy"]), history, rank_rngs, sums)
                atomic_save(ck, latest)
                last_saved = step
                if row["test_accuracy"] > best:
                    atomic_save(ck, out_dir / "best.pt")
            best = max(best, row["test_accuracy"])
            if not quiet:
                print(
                    f"epoch {epoch + 1}: loss {row['loss']:.4f}  train {row['train_accuracy']:.4f}  test {row['test_accuracy']:.4f}  "
                    f"sparsity {row['sparsity']:.4f}  updates {len(updates)}",
                    file=sys.stderr,
                )
    except TrainingDiverged as exc:
        kept = f"the last good checkpoint {latest} (step {last_saved}) is kept" if last_saved is not None else "no checkpoint was written"
        raise TrainingDiverged(
            f"training diverged: {exc}; lr is {cfg['lr']} with {cfg['optimizer']}: lower it. Stopped: {kept}, and no summary.json was written"
        ) from None
    except KeyboardInterrupt:
        if main:  # no collective here: the other ranks may be anywhere
            bad = _non_finite(runner)
            if bad is not None:
                print(f"\ninterrupted: state NOT saved ({bad} holds NaN or infinite values); {latest} is the last good state", file=sys.stderr)
            else:
                sums = partial or ({"loss_sum": float(loss_sum), "correct": int(correct), "seen": int(seen), "records_start": n_updates_before} if done_in_epoch else None)
                atomic_save(_checkpoint(runner, epoch, done_in_epoch, best, history, partial=sums), latest)
                print(f"\ninterrupted: state saved to {latest}; continue with --resume --out {out_dir}", file=sys.stderr)
        raise RunInterrupted() from None
    finally:
        if writer is not None:
            writer.close()
    summary = make_summary(runner, history, wall_before + time.time() - start)
    if main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    if not quiet:
        print(summary_screen(summary, out_dir))
    return summary


def make_summary(runner: Runner, history: list, wall: float) -> dict:
    """The final figures. In a multi-process run every rank calls it (it
    runs collectives); ``ranks_agree``: all ranks hold the same masks and
    parameters (always true for one process)."""
    cfg, engine = runner.cfg, runner.engine
    last = history[-1] if history else runner.evaluate()
    layers = []
    topology = engine.topology_summary()
    for s in engine.stats():
        row = {k: s[k] for k in ("name", "shape", "density", "active_in", "active_out")}
        for k in ("kernel_active_min", "kernel_active_max"):
            if k in s:
                row[k] = s[k]
        # how far the topology evolved: turnover, the step it froze, the overlaps
        row.update(topology.get(s["name"], {}))
        layers.append(row)
    summary = {
        "method": engine.config.method,
        "dataset": cfg["data"],
        "model": cfg["model"],
        "seed": cfg["seed"],
        "epochs": len(history),
        "steps": engine.step_count,
        "test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max((h["test_accuracy"] for h in history), default=last["test_accuracy"]),
        "sparsity": engine.sparsity(),
        "percolation": engine.percolation(),
        "layers": layers,
        "dense_output": engine.dense_output,
        "topology_updates": engine.n_updates,
        "heads": attention_heads(engine),
        "wall_seconds": wall,
        "device": str(runner.device),
        "precision": runner.precision,
        "world_size": runner.world,
        "ranks_agree": distributed.ranks_agree(engine, runner.model),
        "data_note": getattr(runner.data, "note", ""),
    }
    if runner.spiking:
        summary["sops_per_sample"] = last.get("sops_per_sample")
        summary["firing_rates"] = last.get("firing_rates", {})
    for key in ("macs_per_sample", "energy_pj_per_sample", "dense_energy_pj_per_sample"):
        summary[key] = last.get(key)
    return summary


def attention_heads(engine: SparseEngine) -> dict:
    """Per attention layer: heads whose q, k and v blocks all keep links.
    Row groups come from the model's ``head_groups``, ordered q heads, then
    k heads, then v heads (chsnn.models.spikformer)."""
    out = {}
    for name, g in engine.active_groups().items():
        n_heads = g["total"] // 3
        alive = g["alive"]
        heads = sum(all(alive[s * n_heads + h] for s in range(3)) for h in range(n_heads))
        out[name] = {"active": heads, "total": n_heads, "qkv_blocks_active": g["active"], "qkv_blocks": g["total"]}
    return out


def summary_screen(summary: dict, out_dir: Path) -> str:
    lines = [
        "",
        f"{summary['model']} on {summary['dataset']}, method {summary['method']}, seed {summary['seed']}",
        f"  test accuracy  {summary['test_accuracy']:.4f}  (best {summary['best_test_accuracy']:.4f})",
        f"  sparsity       {summary['sparsity']:.4f} over the sparse layers; percolation {summary['percolation']:.3f}",
        f"  epochs {summary['epochs']}, steps {summary['steps']}, topology updates {summary['topology_updates']}, {summary['wall_seconds']:.1f} s on {summary['device']}",
    ]
    if summary.get("world_size", 1) > 1:
        agree = "masks and weights agree" if summary.get("ranks_agree") else "MASKS OR WEIGHTS DIFFER between ranks"
        lines.append(f"  ranks          {summary['world_size']} processes, data-parallel; {agree}")
    if summary.get("precision", "fp32") != "fp32":
        lines.append(f"  precision      {summary['precision']} forward passes (autocast)")
    for name, g in (summary.get("heads") or {}).items():
        lines.append(f"  heads          {g['active']}/{g['total']} attention heads active in {name}")
    if summary.get("sops_per_sample") is not None:
        lines.append(f"  synaptic ops   {summary['sops_per_sample']:.4g} per sample")
    if summary.get("energy_pj_per_sample") is not None:
        dense = summary.get("dense_energy_pj_per_sample")
        ratio = f" ({summary['energy_pj_per_sample'] / dense:.3f} of the same model dense)" if dense else ""
        lines.append(f"  energy         {summary['energy_pj_per_sample'] / 1e6:.4g} uJ per sample at 45 nm{ratio}")
    lines.append("  layer                          shape            density   active in/out   turnover  froze at")
    for layer in summary["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        frozen = layer.get("frozen_at_step")
        evolved = f"   {layer.get('turnover', 0.0):>8.3f}  {'-' if frozen is None else f'step {frozen}'}"
        lines.append(f"  {layer['name']:<30} {shape:<16} {layer['density']:.4f}    {str(layer['active_in']) + '/' + str(layer['active_out']):<15}{evolved}")
    if summary.get("dense_output"):
        lines.append(f"  {summary['dense_output']:<30} (output layer, dense)")
    lines.append(f"  run directory: {out_dir}")
    return "\n".join(lines)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(path))


def _log_tensorboard(writer, row: dict) -> None:
    if writer is None:
        return
    e = row["epoch"]
    for key in ("loss", "train_accuracy", "test_accuracy", "test_loss", "sparsity", "percolation", "lr"):
        writer.add_scalar(key, row[key], e)
    for layer in row["layers"]:
        writer.add_scalar(f"density/{layer['name']}", layer["density"], e)
        writer.add_scalar(f"active_out/{layer['name']}", layer["active_out"], e)
    for name, rate in row["firing_rates"].items():
        writer.add_scalar(f"firing_rate/{name}", rate, e)
    writer.flush()


def evaluate_run(run_dir: Path, quiet: bool = False) -> dict:
    """Rebuild a saved run from its directory and re-evaluate it on its test set."""
    from chsnn.checkpoint import load_first

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist") if not run_dir.exists() else ConfigError(f"{run_dir} is not a directory; give a chsnn run directory")
    # best.pt, or latest.pt when best.pt is absent or damaged (weights_only=True: no code runs)
    ckpt, name = load_first(run_dir, ("best.pt", "latest.pt"), training=True)
    cfg = dict(ckpt["config"])
    for key, value in DEFAULTS.items():
        cfg.setdefault(key, copy.deepcopy(value))
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"the config saved in {run_dir / name} is not valid: {exc}") from None
    runner = Runner(cfg)
    _restore(runner, ckpt)
    result = runner.evaluate()
    result["checkpoint"] = name
    result["sparsity"] = runner.engine.sparsity()
    return result


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


# Command line ---------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``train``, ``eval`` and ``zoo`` on the ``chsnn`` parser."""
    p = sub.add_parser("train", help="train a model (default: the zoo's CH-SNN spiking MLP on ndigits)")
    p.add_argument("--config", help="zoo config name (see `chsnn zoo`) or a YAML file")
    p.add_argument("--data", help="dataset NAME or NAME:PATH (e.g. ndigits, mnist:DIR, npz:FILE)")
    p.add_argument("--model", help="model name (e.g. snn-mlp, snn-cnn)")
    p.add_argument("--method", help="sparse training method (dense, static, set, rigl, mest, cht, chts, chsnn)")
    p.add_argument("--sparsity", type=float, help="target sparsity of the sparse layers, in [0, 1)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--out", help="run directory (default: runs/MODEL_DATA_METHOD_sSPARSITY_seedSEED)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. engine.zeta=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--smoke", action="store_true", help="random data of the config's data shape, 1 epoch, 2 steps unless --max-steps: checks a config in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=_train_command)

    p = sub.add_parser("eval", help="re-evaluate a saved run directory on its test set")
    p.add_argument("run_dir")
    p.set_defaults(func=_eval_command)

    p = sub.add_parser("zoo", help="list the zoo configs and the figures they reached")
    p.set_defaults(func=_zoo_command)


def _train_command(args) -> int:
    try:
        return _train_command_inner(args)
    except distributed.DistributedError as exc:  # a lost rank: say so and exit, never hang
        print(f"chsnn train: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except TrainingDiverged as exc:  # not the input's fault: exit 1, like a lost rank
        print(f"chsnn train: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _train_command_inner(args) -> int:
    if args.resume:
        out = Path(args.out) if args.out else None
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        if args.config or args.smoke:
            given = ", ".join(o for o, v in (("--config", args.config), ("--smoke", args.smoke)) if v)
            raise ConfigError(f"--resume continues the run in {out} with its saved config; {given} would start another: drop it, or give a new --out without --resume")
        requested = {}
        for option, path, value in (
            ("--data", ("data",), None if args.data is None else resolve_data_path(args.data)),
            ("--model", ("model",), args.model),
            ("--method", ("engine", "method"), args.method),
            ("--sparsity", ("engine", "sparsity"), args.sparsity),
            ("--epochs", ("epochs",), args.epochs),
            ("--seed", ("seed",), args.seed),
        ):
            if value is not None:
                requested[f"{option} {value}"] = (path, value)
        for text in args.set:
            parts, value = parse_assignment(text)
            requested[f"--set {text}"] = (tuple(parts), value)
        if args.device is not None:
            check_device_name(args.device)
        train(None, out, resume=True, quiet=args.quiet, max_steps=args.max_steps, device=args.device, requested=requested)
        return 0
    overrides = {"data": args.data, "model": args.model, "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed, "device": args.device}
    engine = {k: v for k, v in {"method": args.method, "sparsity": args.sparsity}.items() if v is not None}
    if engine:
        overrides["engine"] = engine
    cfg = resolve_config(args.config, overrides, args.set)
    if args.smoke:
        from chsnn.data import smoke_data

        cfg["data"], cfg["data_options"] = smoke_data(cfg["data"], cfg["time_steps"])
        cfg["data_options"].setdefault("time_steps", None)  # static stays static (the runner fills in time_steps otherwise)
        cfg["epochs"], cfg["max_steps"] = 1, args.max_steps or 2
        validate_config(cfg)
    out = Path(args.out) if args.out else default_run_dir(cfg).with_name(default_run_dir(cfg).name + ("_smoke" if args.smoke else ""))
    train(cfg, out, quiet=args.quiet)
    return 0


def _eval_command(args) -> int:
    result = evaluate_run(Path(args.run_dir))
    print(json.dumps(result, indent=2))
    return 0


def _zoo_command(args) -> int:
    rows = zoo_table()
    if not rows:
        print(f"no zoo configs in {ZOO_DIR}")
        return 0

    def fmt(v, spec=""):
        return "-" if v is None else format(v, spec)

    table = [("config", "model", "data", "method", "sparsity", "test acc", "seconds", "")]
    for r in rows:
        table.append(
            (r["name"], r["model"], str(r["data"]), r["method"], fmt(r["sparsity"], ".2f"), fmt(r["test_accuracy"], ".4f"), fmt(r["wall_seconds"], ".0f"), "(default)" if r["default"] else "")
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return 0
