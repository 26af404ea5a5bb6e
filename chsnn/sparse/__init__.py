"""Dynamic sparse training: masks, schedules and topology updates.

:class:`SparseEngine` keeps the masks and runs the updates; the update's
mathematics are the pure functions of :mod:`chsnn.sparse.topology`; each
stage's rule is a strategy chosen by name, and a new one is a function of an
:class:`UpdateContext` registered with ``@register_regrowth("name")`` (or
``register_removal``, ``register_topology_init``, ``register_weight_init``).
"""

from chsnn.sparse.calibration import reset_states
from chsnn.sparse.config import METHOD_NAMES, METHOD_PRESETS, ConfigError, EngineConfig, make_config
from chsnn.sparse.context import LinkScores, UpdateContext
from chsnn.sparse.engine import EngineSync, SparseEngine
from chsnn.sparse.strategies import register_regrowth, register_removal, register_topology_init, register_weight_init
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
    "UpdateContext",
    "LinkScores",
    "register_topology_init",
    "register_weight_init",
    "register_removal",
    "register_regrowth",
]
