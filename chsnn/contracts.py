"""What the sparse engine, the models, the exports and the reports agree on.

Masks. :class:`chsnn.sparse.SparseEngine` marks the links of each layer it
sparsifies with a bool buffer ``weight_mask`` (:data:`MASK`) of the weight's
shape on that module: ``True`` where a link exists. The buffer is persistent,
so a checkpoint's model state holds it as ``"<module>.weight_mask"``; pruned
weights are exactly 0 in training. A non-persistent float copy
``weight_mask_f`` (:data:`MASK_F`) makes masking fast and never reaches a
state dict. A module without a mask is dense. Code that reads masks goes
through :func:`masks_of`; code that wants a plain network (exports, sparse
inference, energy accounting of a stripped copy) through :func:`strip_masks`;
code that reads a checkpoint's model state through :func:`split_masked_state`.
A model loaded from a sparse (CSR) export has no buffers; it carries its
masks as the attribute ``export_masks`` (:data:`EXPORT_MASKS`), which sparse
inference reads.

Neuron state. Spiking models keep membrane potentials between the time steps
of one forward; :func:`reset_network` puts every neuron of SpikingJelly and
snnTorch back at rest. The chsnn spiking models call it at the start and the
end of each forward (the snnTorch MLP calls snnTorch's reset, its last step,
directly), and the engine after each calibration pass.

Spikes. :func:`neuron_types` names the spiking neuron classes (SpikingJelly's
``BaseNode``, snnTorch's ``SpikingNeuron``); :class:`FiringRateProbes`
counts their spikes with SpikingJelly's ``OutputMonitor`` for the training
summaries, reports and exports (an snnTorch neuron may return
``(spikes, membrane)``: its spikes are counted).
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "weight_mask"  # bool, the weight's shape, True where a link exists; persistent
MASK_F = "weight_mask_f"  # the same mask in the weight's dtype; not persistent
MASK_BUFFERS = (MASK, MASK_F)
EXPORT_MASKS = "export_masks"  # {module name: bool mask} on a model loaded from a sparse export

__all__ = [
    "MASK",
    "MASK_F",
    "MASK_BUFFERS",
    "EXPORT_MASKS",
    "masks_of",
    "strip_masks",
    "split_masked_state",
    "reset_network",
    "neuron_types",
    "FiringRateProbes",
    "firing_rates",
]


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: bool mask}`` of every masked module, in registration
    order (names as in ``model.named_modules()``, the state dict's prefixes)."""
    return {name: getattr(m, MASK).bool() for name, m in model.named_modules() if isinstance(getattr(m, MASK, None), torch.Tensor)}


@torch.no_grad()
def strip_masks(model: nn.Module) -> nn.Module:
    """In place: every masked module's weight exactly ``+0.0`` where its mask
    is off (NaN or inf there included), and its mask buffers removed; returns
    the model, now plain PyTorch. An engine attached to the model reads the
    buffers in its hooks: strip a copy (``copy.deepcopy(model)``), or call
    ``engine.remove()`` afterwards."""
    for module in model.modules():
        mask = getattr(module, MASK, None)
        if not isinstance(mask, torch.Tensor):
            continue
        module.weight.masked_fill_(~mask.bool(), 0.0)
        for name in MASK_BUFFERS:
            if hasattr(module, name):
                delattr(module, name)
    return model


def split_masked_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A model state dict (a checkpoint's ``"model"``) -> the plain state, on
    the CPU: each masked weight ``+0.0`` where its mask is off and the mask
    buffers dropped; and ``{module name: bool mask}``. What
    :func:`strip_masks` and :func:`masks_of` give for a live model."""
    masks = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        if name == MASK:
            masks[module] = value.detach().to("cpu", torch.bool)
    clean = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        if name in MASK_BUFFERS:
            continue
        value = value.detach().cpu()
        if name == "weight" and module in masks:
            value = torch.where(masks[module], value, torch.zeros((), dtype=value.dtype))  # +0.0 where pruned
        clean[key] = value
    return clean, masks


def reset_network(model: nn.Module) -> None:
    """Reset every neuron state of ``model``: SpikingJelly's modules (their
    ``reset()``) and snnTorch's neurons (``snntorch.utils.reset``). A model
    without spiking neurons is left as it is."""
    snn_torch = False
    for m in model.modules():
        origin = type(m).__module__
        if origin.startswith("spikingjelly") and callable(getattr(m, "reset", None)):
            m.reset()
        elif origin.startswith("snntorch"):
            snn_torch = True
    if snn_torch:
        from snntorch import utils

        utils.reset(model)


def neuron_types() -> tuple[type, ...]:
    """The spiking neuron classes of the installed frameworks."""
    types = []
    try:
        from spikingjelly.activation_based.neuron import BaseNode

        types.append(BaseNode)
    except Exception:  # pragma: no cover - spikingjelly is a dependency
        pass
    try:
        from snntorch import SpikingNeuron

        types.append(SpikingNeuron)
    except Exception:  # pragma: no cover
        pass
    return tuple(types)


def _spike_count(output) -> tuple[float, int]:
    """(spikes, neuron-steps) of one forward call's output."""
    spikes = output[0] if isinstance(output, tuple) else output  # snnTorch: (spikes, membrane)
    return float(spikes.detach().sum()), spikes.numel()


class FiringRateProbes:
    """Counts the spikes of every spiking neuron layer of ``model`` while it
    runs, until :meth:`remove`. ``counts``: {layer: [spikes, neuron-steps]};
    :meth:`rates`: spikes per neuron per step."""

    def __init__(self, model: nn.Module):
        from spikingjelly.activation_based.monitor import OutputMonitor

        types = neuron_types()
        # OutputMonitor with no types watches modules of the model's own type: here, none.
        self.monitor = OutputMonitor(model, instance=types, function_on_output=_spike_count) if types else None

    @property
    def counts(self) -> dict[str, list[float]]:
        if self.monitor is None:
            return {}
        return {name: _totals(self.monitor[name]) for name in self.monitor.monitored_layers}

    def remove(self) -> None:
        if self.monitor is not None:
            self.monitor.remove_hooks()

    def rates(self) -> dict[str, float]:
        return firing_rates(self.counts)


def _totals(records: list[tuple[float, int]]) -> list[float]:
    spikes, steps = 0.0, 0.0
    for s, n in records:  # summed in call order, as the spikes were counted
        spikes += s
        steps += n
    return [spikes, steps]


def firing_rates(counts: dict[str, list[float]]) -> dict[str, float]:
    """Spikes per neuron per step of each layer that ran, from :attr:`FiringRateProbes.counts`."""
    return {name: spikes / steps for name, (spikes, steps) in counts.items() if steps}
