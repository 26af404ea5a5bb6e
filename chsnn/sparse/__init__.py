"""Dynamic sparse training: masks, schedules and topology updates."""

from chsnn.sparse.calibration import reset_states
from chsnn.sparse.config import METHOD_NAMES, METHOD_PRESETS, ConfigError, EngineConfig
from chsnn.sparse.engine import EngineSync, SparseEngine, make_config
from chsnn.sparse.targets import KERNEL, LINEAR, SparseTarget, find_targets

__all__ = [
    "SparseEngine",
    "EngineSync",
    "EngineConfig",
    "ConfigError",
    "METHOD_NAMES",
    "METHOD_PRESETS",
    "make_config",
    "find_targets",
    "SparseTarget",
    "LINEAR",
    "KERNEL",
    "reset_states",
]
