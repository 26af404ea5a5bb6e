"""Firing rates of a model's spiking neuron layers.

Built on SpikingJelly's :class:`~spikingjelly.activation_based.monitor.OutputMonitor`,
which hooks the output of every module of the given types. It watches
SpikingJelly neurons (``BaseNode``) and snnTorch neurons (``SpikingNeuron``)
alike: the only snnTorch-specific part is that an snnTorch neuron may return
``(spikes, membrane)``, of which the spikes are counted.
"""

from __future__ import annotations

from torch import nn


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

