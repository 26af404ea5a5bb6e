"""``snn-mlp``: Flatten -> [Linear -> LIF (-> Dropout)] x depth -> Linear readout.

Two implementations of the same network:

* ``backend="spikingjelly"`` (default): SpikingJelly ``layer.Linear`` /
  ``layer.Flatten`` / ``layer.Dropout`` and ``neuron.LIFNode`` in multi-step
  mode, all ``T`` steps in one call per layer.
* ``backend="snntorch"``: plain ``nn.Linear`` and ``snntorch.Leaky`` neurons
  (``init_hidden=True``), stepping through time in Python. It exists to show
  that the sparse engine does not depend on the spiking framework.

Both use the same neuron: LIF with time constant ``tau``, input decayed by
``1/tau`` (SpikingJelly's ``decay_input=True``), hard reset to 0, detached
reset, surrogate gradient ``atan`` (alpha 2) or ``sigmoid`` (alpha 4).
snnTorch's ``Leaky`` computes ``mem = beta * mem + I``, so it gets
``beta = 1 - 1/tau``, ``reset_mechanism="zero"`` and the current ``I``
scaled by ``1/tau``; with equal weights the two backends give the same outputs.
Dropout masks are drawn once per forward and shared by all time steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from chsnn.models.base import (
    SpikingJellyModel,
    SpikingModel,
    check_choice,
    check_int_list,
    check_neuron_backend,
    check_neuron_options,
    sj_lif,
    snntorch_surrogate,
)
from chsnn.models.registry import register_model

BACKENDS = ("spikingjelly", "snntorch")
DEFAULT_HIDDEN = (512, 512)


class SpikingMLP(SpikingJellyModel):
    """SpikingJelly multi-step MLP. Modules: ``flatten``, ``hidden``
    (``Linear, LIF[, Dropout]`` per layer) and the readout ``head``."""

    def __init__(self, input_shape, n_classes, time_steps, hidden, tau, v_threshold, surrogate, dropout, neuron_backend="auto"):
        super().__init__(input_shape, n_classes, time_steps, neuron_backend)
        from spikingjelly.activation_based import layer

        self.flatten = layer.Flatten(step_mode="m")
        layers: list[nn.Module] = []
        width = math.prod(self.input_shape)
        for size in hidden:
            layers += [layer.Linear(width, size, step_mode="m"), sj_lif(tau, v_threshold, surrogate)]
            if dropout > 0:
                layers.append(layer.Dropout(dropout, step_mode="m"))
            width = size
        self.hidden = nn.Sequential(*layers)
        self.head = layer.Linear(width, n_classes, step_mode="m")  # registered last: the engine's dense output
        self.finish()

    def run(self, x):
        return self.head(self.hidden(self.flatten(x)))


class SnnTorchMLP(SpikingModel):
    """The same MLP from ``nn.Linear`` and ``snntorch.Leaky``. Modules:
    ``fc0, lif0, fc1, lif1, ...`` (direct children, so
    ``snntorch.utils.reset(model)`` finds the neurons) and the readout ``head``."""

    def __init__(self, input_shape, n_classes, time_steps, hidden, tau, v_threshold, surrogate, dropout):
        super().__init__(input_shape, n_classes, time_steps)
        try:
            import snntorch
        except ImportError as e:  # pragma: no cover - snntorch is a dependency
            raise ImportError("snn-mlp with backend='snntorch' needs the snntorch package") from e
        self.tau = tau
        self.dropout = dropout
        self.depth = len(hidden)
        width = math.prod(self.input_shape)
        for i, size in enumerate(hidden):
            setattr(self, f"fc{i}", nn.Linear(width, size))
            leaky = snntorch.Leaky(
                beta=1.0 - 1.0 / tau,
                threshold=v_threshold,
                spike_grad=snntorch_surrogate(surrogate),
                init_hidden=True,
                reset_mechanism="zero",
            )
            setattr(self, f"lif{i}", leaky)
            width = size
        self.head = nn.Linear(width, n_classes)
        self.neuron_backend = "torch"

    def reset_states(self) -> None:
        # snnTorch's reset alone (what chsnn.contracts.reset_network ends
        # with): walking the modules after the neurons' in-forward state
        # writes would split a torch.compile graph.
        from snntorch import utils

        utils.reset(self)

    def run(self, x):
        layers = [(getattr(self, f"fc{i}"), getattr(self, f"lif{i}")) for i in range(self.depth)]
        masks = [None] * self.depth
        if self.training and self.dropout > 0:
            batch = x.shape[1]
            masks = [F.dropout(x.new_ones(batch, fc.out_features), self.dropout, training=True) for fc, _ in layers]
        outputs = []
        for t in range(x.shape[0]):
            h = x[t].flatten(1)
            for (fc, lif), mask in zip(layers, masks):
                current = fc(h) / self.tau
                h = lif(current).to(current.dtype)  # snnTorch's surrogates emit float32 spikes
                if mask is not None:
                    h = h * mask
            outputs.append(self.head(h))
        return torch.stack(outputs)


@register_model(
    "snn-mlp",
    description="Spiking MLP: Flatten -> [Linear -> LIF] x depth -> Linear readout (SpikingJelly, or snnTorch with backend='snntorch')",
)
def snn_mlp(
    input_shape,
    n_classes,
    time_steps,
    *,
    hidden=DEFAULT_HIDDEN,
    tau=2.0,
    v_threshold=1.0,
    surrogate="atan",
    dropout=0.0,
    backend="spikingjelly",
    neuron_backend="auto",
):
    """Spiking MLP.

    Options: ``hidden`` (int or list of hidden widths, default [512, 512]),
    ``tau`` (> 1, default 2.0), ``v_threshold`` (> 0, default 1.0),
    ``surrogate`` ("atan" or "sigmoid"), ``dropout`` ([0, 1), default 0),
    ``backend`` ("spikingjelly" or "snntorch"), ``neuron_backend`` (the
    SpikingJelly LIF kernels: "auto" follows the input's device, see
    :func:`chsnn.models.neuron_backend`; ignored by the snnTorch backend).
    """
    hidden = check_int_list("hidden", hidden)
    tau, v_threshold, surrogate, dropout = check_neuron_options(tau, v_threshold, surrogate, dropout)
    backend = check_choice("backend", backend, BACKENDS)
    neuron_backend = check_neuron_backend(neuron_backend)
    common = dict(hidden=hidden, tau=tau, v_threshold=v_threshold, surrogate=surrogate, dropout=dropout)
    if backend == "snntorch":
        model = SnnTorchMLP(input_shape, n_classes, time_steps, **common)
    else:
        model = SpikingMLP(input_shape, n_classes, time_steps, **common, neuron_backend=neuron_backend)
    model.options = dict(common, backend=backend, neuron_backend=neuron_backend)
    return model
