"""Engine configuration: one validated dataclass, method presets by name.

A method preset fills the stage options (topology init, weight init, removal,
regrowth...) that the user left unset; any stage can be overridden, so an
ablation is one config change, e.g. ``{"method": "chsnn", "regrowth": "random"}``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from chsnn.linkpred import METHODS as LINKPRED_METHODS
from chsnn.sparse import strategies
from chsnn.sparse.errors import ConfigError

ZETA_SCHEDULES = ("auto", "constant", "cosine")
DENSITY_SCHEDULES = ("constant", "sigmoid")

# Stage options of each method; the user's explicit options win.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "dense": dict(init="random", weight_init="keep", removal="magnitude", regrowth="none"),
    "static": dict(init="random", weight_init="keep", removal="magnitude", regrowth="none"),
    "set": dict(init="random", weight_init="keep", removal="magnitude", regrowth="random", regrow_removed=False),
    "rigl": dict(init="random", weight_init="keep", removal="magnitude", regrowth="gradient", regrow_removed=False),
    "mest": dict(init="random", weight_init="keep", removal="mest", regrowth="random", regrow_removed=False),
    # The CHT reference command: magnitude removal followed by chain removal.
    "cht": dict(init="csti", weight_init="swi", removal="magnitude", regrowth="CH3", chain_removal=True, regrow_removed=True),
    "chts": dict(init="csti", weight_init="swi", removal="soft", regrowth="CH3", soft_regrowth=True, regrow_removed=True),
    # CH-SNN departs from the reference on one point: the links removed in an
    # update are not regrowth candidates in that update. CH3-L3 is a link
    # predictor, so it ranks a link it just lost near the top (it re-predicted
    # 100% of them on a graph grown by CH3, against 1.3% on a random graph:
    # scripts/overlap_probe.py), which turns every update into a no-op and
    # freezes the topology; excluding them makes regrowth explore.
    "chsnn": dict(init="sscti", weight_init="sswi", removal="lrs", regrowth="CH3", chain_removal=True, regrow_removed=False),
}
METHOD_NAMES = tuple(METHOD_PRESETS)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A config resolves several times per run; say a thing about it once per process."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Each field's declared type -> (check, what is allowed). A field of another
# type is left to _validate.
_TYPE_CHECKS = {
    "str": (lambda v: isinstance(v, str), "it must be a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "it must be a string (or null for the method's default)"),
    "float": (_is_number, "it must be a finite number"),
    "float | None": (lambda v: v is None or _is_number(v), "it must be a finite number (or null)"),
    "int": (_is_int, "it must be a whole number"),
    "int | None": (lambda v: v is None or _is_int(v), "it must be a whole number (or null)"),
    "bool": (lambda v: isinstance(v, bool), "it must be true or false"),
    "bool | None": (lambda v: v is None or isinstance(v, bool), "it must be true or false (or null for the method's default)"),
    "list[str]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "it must be a list of strings"),
    "list[float]": (lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) for x in v), "it must be a list of finite numbers"),
    "str | list": (lambda v: isinstance(v, (str, list, tuple)), "it must be a string or a list"),
    "dict | None": (lambda v: v is None or isinstance(v, dict), "it must be a mapping (or null)"),
}


def _short(value, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class EngineConfig:
    """Everything the sparse engine needs to know; see README "Engine options"."""

    method: str = "chsnn"
    sparsity: float = 0.9
    # Topology updates happen every `update_interval` optimizer steps, up to
    # `end_step` (default: `end_fraction` of total_steps, 75% as in the CHT
    # reference; no end when total_steps is unknown).
    update_interval: int = 100
    end_step: int | None = None
    end_fraction: float = 0.75
    total_steps: int | None = None  # needed by the cosine / sigmoid / soft schedules
    zeta: float = 0.3
    # auto: cosine-annealed to 0 at end_step when that is known (the reference's
    # --adaptive_zeta), else constant.
    zeta_schedule: str = "auto"
    density_schedule: str = "constant"
    initial_density: float | None = None  # start of the sigmoid density schedule
    early_stop: bool = True
    early_stop_overlap: float = 0.9
    seed: int = 0
    # Which layers: fnmatch patterns on module names, or class names.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    sparsify_output: bool = False
    # Stages (None: the method's preset).
    init: str | None = None
    weight_init: str | None = None
    removal: str | None = None
    regrowth: str | None = None
    linkpred: str = "exact"
    chain_removal: bool | None = None
    chain: str | list = "auto"  # "auto", "none", or explicit [[layer_a, layer_b], ...]
    regrow_removed: bool | None = None
    # Share of each update's regrown links drawn uniformly at random from the
    # candidates, the rest by the regrowth scores. CH3-L3 scores 0 wherever no
    # length-3 path reaches, so without a share an unlinked input stays unlinked.
    regrow_random_share: float = 0.0
    soft_regrowth: bool | None = None
    soft_temperature: list[float] = field(default_factory=lambda: [1.0, 3.0])
    sscti_soft: bool = False
    sscti_per_neuron: bool = False  # the same number of top links for every output neuron, not a global top-k
    sscti_cover_inputs: bool = False  # every varying input keeps a link (CH3 never regrows into an isolated one)
    # Draw the initial topology and weights again, on a fresh calibration,
    # after this fraction of training (0: never; needs total_steps). For
    # layers fed by learned features (a CNN's FC layers), whose correlations
    # at step 0 are those of untrained features.
    reinit_fraction: float = 0.0
    lrs_alpha: float = 0.5
    mest_grad_coeff: float = 0.01
    rigl_accumulation: int = 1
    init_gain: float = 2.0
    # Calibration data (SSCTI/CSTI correlations, SSWI rates): every batch
    # given, up to calibration_samples samples (or exactly calibration_batches).
    calibration_batches: int | None = None
    calibration_samples: int = 4096
    # The activity pass of LRS removal at each update reads this many of them.
    activity_samples: int = 1024
    hebb: dict | None = None  # Hebb-SET: {"lr": 1e-3, "decay": 0.999, "window": 20}
    # Mask the weights after every step too (None: only for optimizers not known to keep zeros).
    remask_weights: bool | None = None

    @classmethod
    def from_dict(cls, options: dict | None = None, **overrides) -> EngineConfig:
        """Build from a mapping; unknown keys fail naming the allowed ones."""
        merged = dict(options or {})
        merged.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"unknown engine option(s) {', '.join(map(repr, unknown))}; allowed options are: {', '.join(sorted(known))}")
        return cls(**merged).resolved()

    def _check_types(self) -> None:
        """Every option of the type its field declares (strict: a string is
        no number, a number no bool), before any value is compared."""
        for f in fields(self):
            check = _TYPE_CHECKS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
            value = getattr(self, f.name)
            if check is not None and not check[0](value):
                raise ConfigError(f"engine option {f.name}={_short(value)} is not allowed; {check[1]}")

    def resolved(self) -> EngineConfig:
        """Validate and fill the stage options from the method preset."""
        self._check_types()
        if self.method not in METHOD_PRESETS:
            raise ConfigError(f"unknown method {self.method!r}; valid methods are {', '.join(METHOD_NAMES)}")
        cfg = dataclasses.replace(self)
        defaults = dict(chain_removal=False, regrow_removed=False, soft_regrowth=False)
        defaults.update(METHOD_PRESETS[cfg.method])
        for key, value in defaults.items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.method == "dense":
            cfg.sparsity = 0.0
        cfg._validate()
        if cfg.soft_regrowth and cfg.regrowth in strategies.DENSE_GRADIENT_REGROWTHS:
            # A config that samples CH-SNN's link-prediction scores (the MLP zoo configs)
            # run with --method rigl stays RigL: the top gradients, not a draw by gradient.
            _warn_once(
                f"soft_regrowth samples regrowth by link-prediction score; regrowth={cfg.regrowth} (RigL) takes "
                "the top gradients, so it is ignored here (--set engine.soft_regrowth=null to silence this)"
            )
            cfg.soft_regrowth = False
        if cfg.end_step is None and cfg.total_steps:
            cfg.end_step = max(1, round(cfg.end_fraction * cfg.total_steps))
        if cfg.zeta_schedule == "auto":
            cfg.zeta_schedule = "cosine" if cfg.end_step else "constant"
        return cfg

    def _validate(self) -> None:
        def bad(key, allowed):
            raise ConfigError(f"engine option {key}={_short(getattr(self, key))} is not allowed; {allowed}")

        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            bad("sparsity", "it must be a number in [0, 1), e.g. 0.99 keeps 1% of the links")
        for key, allowed in [
            ("init", tuple(strategies.TOPOLOGY_INITS)),
            ("weight_init", tuple(strategies.WEIGHT_INITS)),
            ("removal", tuple(strategies.REMOVALS)),
            ("regrowth", tuple(strategies.REGROWTHS)),
            ("linkpred", LINKPRED_METHODS),
            ("zeta_schedule", ZETA_SCHEDULES),
            ("density_schedule", DENSITY_SCHEDULES),
        ]:
            if getattr(self, key) not in allowed:
                bad(key, f"valid values are {', '.join(allowed)}")
        if not isinstance(self.update_interval, int) or self.update_interval < 0:
            bad("update_interval", "it must be a whole number >= 0 (0 disables topology updates)")
        if not 0.0 <= self.zeta <= 1.0:
            bad("zeta", "it must be in [0, 1] (the fraction of links replaced per update)")
        if not 0.0 < self.early_stop_overlap <= 1.0:
            bad("early_stop_overlap", "it must be in (0, 1]")
        if not 0.0 <= self.regrow_random_share <= 1.0:
            bad("regrow_random_share", "it must be in [0, 1] (the share of regrown links drawn at random; 0: all by score)")
        if not 0.0 <= self.reinit_fraction < 1.0:
            bad("reinit_fraction", "it must be in [0, 1) (the fraction of training after which the initialisation is redrawn; 0: never)")
        if self.lrs_alpha < 0 or self.lrs_alpha > 1:
            bad("lrs_alpha", "it must be in [0, 1] (weight of magnitude against relative importance)")
        if self.rigl_accumulation < 1:
            bad("rigl_accumulation", "it must be >= 1 (steps of dense gradient summed before an update)")
        if self.calibration_batches is not None and self.calibration_batches < 1:
            bad("calibration_batches", "use >= 1 batch, or leave it unset to use calibration_samples")
        if self.calibration_samples < 2:
            bad("calibration_samples", "it must be a whole number >= 2")
        if self.activity_samples < 1:
            bad("activity_samples", "it must be a whole number >= 1")
        if not 0.0 < self.end_fraction <= 1.0:
            bad("end_fraction", "it must be in (0, 1]: the fraction of training after which the topology stops changing")
        if self.seed < 0:
            bad("seed", "it must be a whole number >= 0")
        if self.total_steps is not None and self.total_steps < 1:
            bad("total_steps", "it must be a whole number >= 1 (the optimizer steps of the run)")
        if self.init_gain <= 0:
            bad("init_gain", "it must be > 0")
        if self.sscti_soft and self.sscti_per_neuron:
            bad("sscti_per_neuron", "it picks the top links of each neuron, sscti_soft samples them: set one of the two")
        if len(self.soft_temperature) != 2 or min(self.soft_temperature) <= 0:
            bad("soft_temperature", "give [start, end], both > 0")
        needs_total = []
        if self.reinit_fraction > 0:
            needs_total.append("reinit_fraction")
        if self.zeta_schedule == "cosine" and self.end_step is None:
            needs_total.append("zeta_schedule=cosine")
        if self.density_schedule == "sigmoid":
            needs_total.append("density_schedule=sigmoid")
            d = 1.0 - self.sparsity
            if self.initial_density is None or not d <= self.initial_density <= 1.0:
                bad("initial_density", f"the sigmoid schedule needs a start density in [{d:g}, 1] (the target density is {d:g})")
        if needs_total and (self.total_steps is None or self.total_steps < 1):
            raise ConfigError(f"{' and '.join(needs_total)} need total_steps (the number of optimizer steps of the run)")
        chain_ok = self.chain in ("auto", "none") or (
            isinstance(self.chain, (list, tuple))
            and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in self.chain)
        )
        if not chain_ok:
            bad("chain", 'use "auto", "none" or a list of [layer_a, layer_b] pairs of layer names')
        if self.hebb is not None:
            unknown = sorted(map(str, set(self.hebb) - {"lr", "decay", "window"}))
            if unknown:
                bad("hebb", f"unknown Hebb-SET keys {unknown}; allowed: lr, decay, window")
            for key, ok, what in (
                ("lr", _is_number, "a finite number"),
                ("decay", _is_number, "a finite number"),
                ("window", lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
            ):
                if key in self.hebb and not ok(self.hebb[key]):
                    bad("hebb", f"hebb.{key} must be {what}")

    # Schedules -------------------------------------------------------------

    @property
    def reinit_step(self) -> int | None:
        """The step at which ``reinit_fraction`` draws the initialisation again (None: never)."""
        if not self.reinit_fraction or not self.total_steps:
            return None
        return max(1, round(self.reinit_fraction * self.total_steps))

    def zeta_at(self, step: int) -> float:
        if self.zeta_schedule == "cosine":  # to 0 at end_step (or at total_steps)
            end = self.end_step or self.total_steps
            return self.zeta * 0.5 * (1.0 + math.cos(math.pi * min(step, end) / end))
        return self.zeta

    def density_at(self, step: int) -> float:
        """CHTss sigmoid decay from initial_density to the target density."""
        target = 1.0 - self.sparsity
        if self.density_schedule != "sigmoid":
            return target

        def s(t):
            return 1.0 / (1.0 + math.exp(-10.0 * (t - 0.5)))

        end = self.end_step or self.total_steps  # the target is reached when the topology stops changing
        progress = (s(min(step, end) / end) - s(0)) / (s(1) - s(0))
        return self.initial_density + (target - self.initial_density) * progress

    def temperature_at(self, step: int) -> float:
        start, end = self.soft_temperature
        if not self.total_steps:
            return start
        return start + (end - start) * min(step, self.total_steps) / self.total_steps


def make_config(config=None, **options) -> EngineConfig:
    """EngineConfig from a config, a dict, a method name or keywords."""
    if isinstance(config, EngineConfig):
        return EngineConfig.from_dict(dataclasses.asdict(config), **options)
    if isinstance(config, str):
        return EngineConfig.from_dict({"method": config}, **options)
    if config is None or isinstance(config, dict):
        return EngineConfig.from_dict(config, **options)
    raise ConfigError(f"config must be an EngineConfig, a dict or a method name, not {type(config).__name__}")
