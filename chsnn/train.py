"""Training runs: ``chsnn train``, ``chsnn eval`` and ``chsnn zoo``.

This module only gathers the names that used to live here; the code is in

* :mod:`chsnn.config`: the defaults, zoo YAML files, ``--set``, validation;
* :mod:`chsnn.trainer`: :class:`Runner` (building, the training loop,
  evaluation, checkpoints);
* :mod:`chsnn.rundir`: the run directory (:class:`~chsnn.rundir.RunDir`),
  its default checkpoint, atomic writes, :func:`~chsnn.rundir.load_model`;
* :mod:`chsnn.commands`: :func:`train`, :func:`evaluate_run` and the
  command line;
* :mod:`chsnn.summary` and :mod:`chsnn.contracts`: summary.json and the
  firing rates (with masks and neuron resets, the package's shared contracts).
"""

from chsnn.commands import RESUMABLE, add_commands, check_out_dir, evaluate_run, train
from chsnn.config import (
    DEFAULT_CONFIG,
    DEFAULTS,
    DEVICES_TEXT,
    ENCODERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    ZOO_DIR,
    check_device_name,
    default_run_dir,
    find_config,
    load_config_file,
    merge,
    parse_assignment,
    pick_device,
    resolve_config,
    resolve_data_path,
    short_repr,
    validate_config,
    yaml_load,
    zoo_table,
)
from chsnn.contracts import FiringRateProbes
from chsnn.optim import LINEAR_LR_FLOOR, LINEAR_LR_SPAN
from chsnn.summary import attention_heads, make_summary, summary_screen
from chsnn.trainer import CALIBRATION_BYTES, RunInterrupted, Runner, TrainingDiverged

__all__ = [
    "CALIBRATION_BYTES", "DEFAULTS", "DEFAULT_CONFIG", "DEVICES_TEXT", "ENCODERS", "LINEAR_LR_FLOOR", "LINEAR_LR_SPAN",
    "LR_SCHEDULES", "OPTIMIZERS", "PRECISIONS", "RESUMABLE", "ZOO_DIR", "FiringRateProbes", "RunInterrupted", "Runner",
    "TrainingDiverged", "add_commands", "attention_heads", "check_device_name", "check_out_dir", "default_run_dir",
    "evaluate_run", "find_config", "load_config_file", "make_summary", "merge", "parse_assignment", "pick_device",
    "resolve_config", "resolve_data_path", "short_repr", "summary_screen", "train", "validate_config", "yaml_load", "zoo_table",
]  # fmt: skip
