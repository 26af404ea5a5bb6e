"""Synaptic operations and energy of a (sparse) network, against its dense twin.

    from chsnn.energy import account_energy, sops_ratio_explained

    result = account_energy(model, batches)          # batches: model inputs, (T, N, ...) for spiking models
    result["totals"]["energy_pj"], result["totals"]["dense_energy_pj"]

Definitions (CH-SPEC section 7):

* A layer whose input is spikes (every input value seen is 0 or 1) costs, per
  input event, one accumulate (AC) per *existing* outgoing synapse of that
  input; pruned synapses cost nothing. Any other input (frames, pixels,
  membrane currents) costs one multiply-accumulate (MAC) per existing synapse
  per input vector (per time step and, for convolutions, per output position).
* Energy at 45 nm: 0.9 pJ per AC and 4.6 pJ per MAC (Horowitz, ISSCC 2014).
* Every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (SpikingJelly's and
  snnTorch's layers subclass them) is counted, the dense output layer
  included. A layer with a bool ``weight_mask`` buffer (put there by
  :class:`chsnn.sparse.SparseEngine`) has the synapses its mask keeps; a
  layer without one is dense. The dense baseline is the same layer fully
  connected fed the same inputs.

Counting, summed over time steps and averaged over samples:

* Linear, spikes: ``sum_x count_x * fanout_x`` with ``count_x`` the events of
  input feature ``x`` and ``fanout_x = mask[:, x].sum()``. Analog:
  ``n_vectors * links``.
* Conv, spikes: ``sum(conv(x, mask))`` with the mask as 0/1 weights and the
  layer's stride, padding, dilation and groups: each input event counted once
  per existing weight that touches it at each output position, borders and
  strides exact. Analog: ``sum(conv(ones, mask))``, every multiply-accumulate
  actually done on existing weights (zero padding excluded).

Bias additions and neuron updates are not counted (the spec counts synaptic
operations only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from chsnn.contracts import MASK  # the bool buffer of sparse layers

PJ_PER_AC = 0.9  # pJ per 32-bit float accumulate at 45 nm (Horowitz 2014)
PJ_PER_MAC = 4.6  # pJ per 32-bit float multiply-accumulate at 45 nm (Horowitz 2014)

__all__ = ["PJ_PER_AC", "PJ_PER_MAC", "account_energy", "sops_ratio_explained", "weight_layers"]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` with a weight tensor, in registration order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.append((name or "<model>", module))
    return found


def _mask(module: nn.Module) -> torch.Tensor:
    """The existing synapses: the module's ``weight_mask``, or all ones."""
    m = getattr(module, MASK, None)
    w = module.weight
    if isinstance(m, torch.Tensor):
        if tuple(m.shape) != tuple(w.shape):
            raise ValueError(f"{type(module).__name__}: {MASK} shape {tuple(m.shape)} differs from the weight's {tuple(w.shape)}")
        return m.to(dtype=torch.bool)
    return torch.ones(w.shape, dtype=torch.bool, device=w.device)


class _Tally:
    """What one layer saw over all its calls."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        self.kind = "linear" if isinstance(module, nn.Linear) else "conv"
        self.binary = True  # every input value so far 0 or 1
        self.input_sum = 0.0  # sum of all input values (firing rate numerator)
        self.input_numel = 0
        self.spike_ops = 0.0  # ops on existing synapses if the input is spikes
        self.dense_spike_ops = 0.0
        self.vector_ops = 0.0  # ops on existing synapses if every input value is used (MACs)
        self.dense_vector_ops = 0.0

    # The counts -----------------------------------------------------------------

    def add(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: expected a tensor input, got {type(x).__name__}")
        x = x.detach()
        if self.binary:
            self.binary = bool(((x == 0) | (x == 1)).all())
        self.input_sum += float(x.sum(dtype=torch.float64))
        self.input_numel += x.numel()
        mask = _mask(self.module)
        if self.kind == "linear":
            self._add_linear(x, mask)
        else:
            self._add_conv(x, mask)

    def _add_linear(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        n_out, n_in = mask.shape
        if x.shape[-1] != n_in:
            raise ValueError(f"{self.name}: input has {x.shape[-1]} features, the layer takes {n_in}")
        n_vectors = x.numel() // n_in if n_in else 0
        links = float(mask.sum())
        self.vector_ops += n_vectors * links
        self.dense_vector_ops += float(n_vectors) * n_out * n_in
        if self.binary:
            count = x.reshape(-1, n_in).sum(0, dtype=torch.float64)  # events per input feature
            fanout = mask.sum(0, dtype=torch.float64)  # existing outgoing synapses per input feature
            self.spike_ops += float((count * fanout).sum())
            self.dense_spike_ops += float(count.sum()) * n_out

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> float:
        """sum(conv(x, weight)) with the layer's geometry, in exact integer-valued float64."""
        m = self.module
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        padding = m.padding
        if m.padding_mode != "zeros":
            x = F.pad(x, m._reversed_padding_repeatable_indices, mode=m.padding_mode)
            padding = 0
        out = conv(x, weight, None, m.stride, padding, m.dilation, m.groups)
        # Every output value is an integer (0/1 inputs times 0/1 weights); rounding
        # removes any error of a transform-based kernel (Winograd, FFT) on GPUs.
        return float(out.round().sum(dtype=torch.float64))

    def _add_conv(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        m = self.module
        spatial = mask.dim() - 2  # 1 for Conv1d, 2 for Conv2d
        c_in = mask.shape[1] * m.groups
        if x.dim() == spatial + 1:  # unbatched (C, *spatial)
            x = x.unsqueeze(0)
        elif x.dim() > spatial + 2:  # (T, N, C, *spatial) or more leading dims
            x = x.reshape(-1, *x.shape[-(spatial + 1) :])
        if x.dim() != spatial + 2 or x.shape[1] != c_in:
            raise ValueError(f"{self.name}: cannot read input of shape {tuple(x.shape)} for a conv with {c_in} input channels")
        n_images = x.shape[0]
        x = x.float()
        w = mask.float()
        groups = m.groups
        n_out = mask.shape[0]
        # The dense kernel as one all-ones output channel per group, times the outputs per group.
        ones_w = torch.ones((groups, *mask.shape[1:]), dtype=torch.float32, device=mask.device)
        per_group = n_out // groups
        one = torch.ones((1, *x.shape[1:]), dtype=torch.float32, device=x.device)
        self.vector_ops += n_images * self._conv(one, w)
        self.dense_vector_ops += n_images * per_group * self._conv(one, ones_w)
        if self.binary:
            self.spike_ops += self._conv(x, w)
            self.dense_spike_ops += per_group * self._conv(x, ones_w)

    # The report -----------------------------------------------------------------

    def report(self, n_samples: int, pj_per_ac: float, pj_per_mac: float) -> dict:
        mask = _mask(self.module)
        w = self.module.weight
        links = int(mask.sum())
        if self.kind == "linear":
            active_in = int(mask.any(0).sum())
            active_out = int(mask.any(1).sum())
        else:
            # per output channel / per input channel (within its group) with any weight
            active_out = int(mask.flatten(1).any(1).sum())
            groups = self.module.groups
            per_group = mask.shape[0] // groups
            g = mask.reshape(groups, per_group, mask.shape[1], -1).any(-1).any(1)  # (groups, in_per_group)
            active_in = int(g.sum())
        spikes = self.binary
        if spikes:
            sops, dense_sops, macs, dense_macs = self.spike_ops, self.dense_spike_ops, 0.0, 0.0
        else:
            sops, dense_sops, macs, dense_macs = 0.0, 0.0, self.vector_ops, self.dense_vector_ops
        sops, dense_sops, macs, dense_macs = (v / n_samples for v in (sops, dense_sops, macs, dense_macs))
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": [int(s) for s in w.shape],
            "links": links,
            "density": links / w.numel() if w.numel() else 0.0,
            "active_in": active_in,
            "active_out": active_out,
            "input": "spikes" if spikes else "analog",
            "firing_rate": (self.input_sum / self.input_numel if self.input_numel else 0.0) if spikes else None,
            "sops": sops,
            "macs": macs,
            "energy_pj": sops * pj_per_ac + macs * pj_per_mac,
            "dense_sops": dense_sops,
            "dense_macs": dense_macs,
            "dense_energy_pj": dense_sops * pj_per_ac + dense_macs * pj_per_mac,
        }


def _input(batch):
    """The model input: the batch itself, or ``x`` of an ``(x, y, ...)`` loader item."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return batch


def _device(model: nn.Module):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def account_energy(
    model: nn.Module,
    batches: Iterable,
    pj_per_ac: float = PJ_PER_AC,
    pj_per_mac: float = PJ_PER_MAC,
    on_output: Callable | None = None,
) -> dict:
    """SOPs, MACs and energy per sample of every weight layer of ``model``
    over ``batches``, and of the same layers fully connected (see the module
    docstring). Returns a JSON-serialisable dict (keys in :mod:`chsnn.energy`'s
    docs: ``n_samples``, ``time_steps``, ``pj_per_ac``, ``pj_per_mac``,
    ``layers``, ``totals``).

    ``batches``: model inputs, time-major ``(T, N, ...)`` for spiking models
    (``model.spiking``), ``(N, ...)`` otherwise; an ``(x, y, ...)`` item is read
    as ``x``. Tensors are moved to the model's device. The model runs in eval
    mode under ``torch.no_grad()``; every module's mode is restored and the
    hooks removed afterwards, also on error. ``on_output(batch, output)``, if
    given, sees every batch with the model's output (so one pass can also
    score accuracy).
    """
    pj_per_ac, pj_per_mac = float(pj_per_ac), float(pj_per_mac)
    for label, v in (("pj_per_ac", pj_per_ac), ("pj_per_mac", pj_per_mac)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {v!r}")
    spiking = bool(getattr(model, "spiking", False))
    batch_dim = 1 if spiking else 0
    device = _device(model)
    layers = weight_layers(model)
    tallies: dict[int, _Tally] = {}
    order: list[_Tally] = []  # forward order of the first calls

    def hook_for(name, module):
        def hook(mod, args):
            tally = tallies.get(id(mod))
            if tally is None:
                tally = tallies[id(mod)] = _Tally(name, mod)
                order.append(tally)
            if not args:
                raise ValueError(f"{name}: called without a positional input")
            tally.add(args[0])

        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = []
    n_samples = 0
    steps: set[int] = set()
    try:
        for name, module in layers:
            handles.append(module.register_forward_pre_hook(hook_for(name, module)))
        model.eval()
        with torch.no_grad():
            for batch in batches:
                x = _input(batch)
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"account_energy: a batch must be a tensor (or (x, y, ...) with a tensor x), got {type(x).__name__}")
                if x.dim() <= batch_dim:
                    raise ValueError(f"account_energy: input of shape {tuple(x.shape)} has no batch dimension {batch_dim}")
                if device is not None:
                    x = x.to(device)
                n_samples += int(x.shape[batch_dim])
                if spiking:
                    steps.add(int(x.shape[0]))
                out = model(x)
                if on_output is not None:
                    on_output(batch, out)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    if n_samples == 0:
        raise ValueError("account_energy: no samples in batches (empty iterable or batch size 0)")
    reports = [t.report(n_samples, pj_per_ac, pj_per_mac) for t in order]
    keys = ("sops", "macs", "energy_pj", "dense_sops", "dense_macs", "dense_energy_pj")
    totals = {k: float(sum(r[k] for r in reports)) for k in keys}
    if spiking:
        time_steps = steps.pop() if len(steps) == 1 else None
    else:
        time_steps = None
    return {
        "n_samples": n_samples,
        "time_steps": time_steps,
        "pj_per_ac": pj_per_ac,
        "pj_per_mac": pj_per_mac,
        "layers": reports,
        "totals": totals,
    }


def _ratio(a: float, b: float):
    return a / b if b else None


def sops_ratio_explained(sparse_result: dict, dense_result: dict) -> dict:
    """Why the sparse network's SOPs are what they are, against a dense one.

    Over the layers with spiking input in both results (matched by name):
    ``sops_ratio`` (total SOPs, sparse / dense), ``density_ratio`` (total
    links, sparse / dense), ``firing_rate_ratio`` (mean input firing rate
    weighted by each layer's dense synapse count, sparse / dense) and
    ``predicted_ratio = density_ratio * firing_rate_ratio``, and ``coupling`` =
    sops_ratio / predicted_ratio (1 when firing and fan-out are independent;
    above 1 when the neurons that fire keep more links). A ratio with a zero
    denominator is None. ``layers`` lists the names used.
    """
    dense_by_name = {layer["name"]: layer for layer in dense_result["layers"]}
    pairs = [
        (s, dense_by_name[s["name"]])
        for s in sparse_result["layers"]
        if s["input"] == "spikes" and s["name"] in dense_by_name and dense_by_name[s["name"]]["input"] == "spikes"
    ]

    def weighted_rate(layers):
        weights = [math.prod(layer["shape"]) for layer in layers]
        total = sum(weights)
        return sum(w * layer["firing_rate"] for w, layer in zip(weights, layers)) / total if total else 0.0

    sparse_layers = [s for s, _ in pairs]
    dense_layers = [d for _, d in pairs]
    sops_ratio = _ratio(sum(s["sops"] for s in sparse_layers), sum(d["sops"] for d in dense_layers))
    density_ratio = _ratio(sum(s["links"] for s in sparse_layers), sum(d["links"] for d in dense_layers))
    firing_rate_ratio = _ratio(weighted_rate(sparse_layers), weighted_rate(dense_layers))
    predicted = density_ratio * firing_rate_ratio if density_ratio is not None and firing_rate_ratio is not None else None
    return {
        "sops_ratio": sops_ratio,
        "density_ratio": density_ratio,
        "firing_rate_ratio": firing_rate_ratio,
        "predicted_ratio": predicted,
        # SOPs / (density x firing rate): above 1 when the neurons that fire carry
        # more than their share of the links (links concentrated on active neurons).
        "coupling": _ratio(sops_ratio, predicted) if sops_ratio is not None and predicted is not None else None,
        "layers": [s["name"] for s in sparse_layers],
    }
