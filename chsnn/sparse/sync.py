"""The hooks that keep the engines of data-parallel processes identical.

Data-parallel training (several processes, each with a copy of the model and
its own share of every batch) passes ``sync=`` to the engine: an
:class:`EngineSync` whose hooks the engine calls before each decision, to
reduce the statistics the decision reads (calibration activity, RigL's dense
gradients, Hebb's activations) over the processes, and after it, so every
process holds the same masks, weights, optimizer state and RNG
(:class:`chsnn.distributed.DistributedSync`). The default does nothing, and
the engine never imports ``torch.distributed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from chsnn.sparse.hebb import HebbRule
from chsnn.sparse.targets import SparseTarget

if TYPE_CHECKING:
    from chsnn.sparse.engine import SparseEngine


class EngineSync:
    """Hooks that keep the engines of data-parallel processes identical; this
    default, for a single process, does nothing. Every process calls each
    hook at the same point of the same engine code, so a hook may run
    collective operations."""

    def reduce_activity(self, stats: dict, generator: torch.Generator) -> None:
        """In place: this process's ``ActivityStats`` (calibration or
        activity pass, one per layer name) -> those of all processes."""

    def reduce_counts(self, counts: list[int]) -> list[int]:
        """This process's sample count of each calibration batch -> the
        counts of the global batches (summed over the processes)."""
        return counts

    def reduce_hebb(self, rule: HebbRule) -> None:
        """In place: the last forward's mean activations (``rule.pre``,
        ``rule.out``) -> their mean over all processes' samples."""

    def reduce_gradients(self, accumulated: dict[str, torch.Tensor]) -> None:
        """In place: RigL's accumulated dense gradients -> summed over the
        processes (each process's loss is its share of the global mean)."""

    def agree(self, engine: SparseEngine, targets: list[SparseTarget]) -> None:
        """After a decision (a layer's initial topology, a topology update):
        make every process hold one process's masks, weights and optimizer
        state of ``targets``, and its engine RNG and frozen layers."""
