"""What the export formats share: the error they raise, the layers of a
model in forward order, and the parameters of its spiking neurons."""

from __future__ import annotations

import torch
from torch import nn


class ExportError(ValueError):
    """An export that cannot be made (the CLI prints it as ``chsnn export: error: ...``)."""


def example_input(model: nn.Module, batch: int = 1, time_steps: int = 1) -> torch.Tensor:
    shape = tuple(model.input_shape)
    lead = (time_steps, batch) if getattr(model, "spiking", False) else (batch,)
    p = next(iter(model.parameters()), None)
    return torch.zeros(*lead, *shape, dtype=p.dtype if p is not None else torch.float32)


def forward_order(model: nn.Module) -> list[str]:
    """Names of the layers (leaf modules and spiking neuron layers) in the
    order one forward pass calls them (those it never calls follow in
    registration order)."""
    # Layers: leaf modules, and spiking neurons as a whole (their surrogate-gradient child is not a layer).
    neurons = [name for name, m in model.named_modules() if name and neuron_parameters(m) is not None]
    leaves = [
        (name, m)
        for name, m in model.named_modules()
        if name and (name in neurons or not any(True for _ in m.children())) and not any(name.startswith(n + ".") for n in neurons)
    ]
    seen: list[str] = []
    handles = []

    def hook(name):
        def fn(module, args, out):
            if name not in seen:
                seen.append(name)

        return fn

    for name, m in leaves:
        handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example_input(model))
    except Exception:  # noqa: BLE001 - order is a nicety; registration order is the fallback
        seen.clear()
    finally:
        for h in handles:
            h.remove()
    return seen + [name for name, _ in leaves if name not in seen]


def neuron_parameters(module: nn.Module) -> dict | None:
    """The parameters of a spiking neuron layer, or None for other modules."""
    try:
        from spikingjelly.activation_based import neuron as sj_neuron
    except Exception:  # pragma: no cover - spikingjelly is a dependency
        sj_neuron = None
    if sj_neuron is not None and isinstance(module, sj_neuron.BaseNode):
        out = {"framework": "spikingjelly", "type": type(module).__name__}
        for key in ("tau", "decay_input", "v_threshold", "v_reset", "detach_reset"):
            if hasattr(module, key):
                value = getattr(module, key)
                out[key] = float(value) if isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool) else value
        return out
    try:
        from snntorch import SpikingNeuron
    except Exception:  # pragma: no cover
        SpikingNeuron = None
    if SpikingNeuron is not None and isinstance(module, SpikingNeuron):
        out = {"framework": "snntorch", "type": type(module).__name__, "reset_mechanism": getattr(module, "reset_mechanism", None)}
        beta = getattr(module, "beta", None)
        if beta is not None:
            beta = float(torch.as_tensor(beta).reshape(-1)[0])
            out["beta"] = beta
            if beta < 1:
                out["tau"] = 1.0 / (1.0 - beta)
        threshold = getattr(module, "threshold", None)
        if threshold is not None:
            out["v_threshold"] = float(torch.as_tensor(threshold).reshape(-1)[0])
        if out["reset_mechanism"] == "zero":
            out["v_reset"] = 0.0
        return out
    return None
