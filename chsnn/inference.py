"""Sparse CPU inference of a trained spiking MLP.

A network trained by the sparse engine keeps its pruned weights as zeros in
dense matrices, so a dense forward pays for every one of them. At 95-99%
sparsity most of that work multiplies zeros. :func:`to_sparse_inference`
turns a trained ``snn-mlp`` (SpikingJelly backend) into a
:class:`SparseSpikingMLP` whose sparse layers keep only their links and whose
outputs equal the dense masked model's, up to float rounding (the sums run in
another order)::

    from chsnn.rundir import load_run
    from chsnn.inference import to_sparse_inference

    run = load_run("runs/snn-mlp_ndigits_chsnn_s0.95_seed0")
    fast = to_sparse_inference(run.model, run.masks)      # method="torch"
    logits = fast(x)                                        # x: (T, N, *input_shape)

Methods for the product of a layer's input ``X`` (``T * N`` rows) with its
sparse weight ``W`` (``out x in``):

``torch``  (default) ``W`` as a ``torch.sparse_csr_tensor``, ``addmm(b, W, X^T)``
    (MKL's sparse-times-dense where torch has it): cost in proportion to the
    links, ``nnz(W) * T * N``.
``scipy``  ``W`` as a ``scipy.sparse.csr_matrix``, the same product in SciPy
    (single-threaded); on par with ``torch`` on one thread.
``spikes`` the event-driven product: the hidden layers' inputs are binary
    spikes, so ``X W^T`` is, for each row, the sum of the rows of ``W^T`` of the
    inputs that spiked: one ``embedding_bag(mode="sum")`` over the spike
    indices (with the input values as weights where they are not binary, i.e.
    the first layer). Cost in proportion to the spikes times the fan-out,
    ``nnz(X) * out``: it exploits the sparsity of the activity, not of the
    weights, and wins where the firing rate is low and the weights are dense.

Products of a binary spike matrix in CSR with the CSR weights (sparse times
sparse), and a scatter-add per (spike, link) pair, were measured too and were
slower than all three on CPU: building the sparse spike matrix and the sparse
result costs more than the multiplications saved. ``scripts/bench_sparse_inference.py``
times the methods against the dense masked model over densities 0.5 to 0.01
and reports the break-even density.

The neurons are :class:`InferenceLIF` layers built from the trained
model's SpikingJelly ``LIFNode`` parameters: the same arithmetic as
SpikingJelly's CPU kernel, written for inference (no autograd state, no
per-step lists to stack, which costs as much as the sparse products at 99%
sparsity). Dropout is left out (inference).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chsnn.contracts import EXPORT_MASKS, masks_of

METHODS = ("torch", "scipy", "spikes")


def _csr_warning_filter():
    import warnings

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held sparse (see the module docstring for
    ``method``). ``binary_input``: the inputs are 0/1 spikes (``spikes``
    then needs no per-entry weights). Takes ``(..., in)``, returns ``(..., out)``."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        method: str = "torch",
        binary_input: bool = False,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown sparse inference method {method!r}; choose one of: {', '.join(METHODS)}")
        weight = weight.detach()
        if mask is not None:
            weight = torch.where(mask.to(weight.device, torch.bool), weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        self.method = method
        self.binary_input = binary_input
        self.out_features, self.in_features = weight.shape
        self.nnz = int(mask.sum()) if mask is not None else int((weight != 0).sum())
        self.bias = None if bias is None else bias.detach().clone()
        _csr_warning_filter()
        if method == "torch":
            # The CSR structure is the mask (a kept link whose weight is 0 stays a link).
            keep = mask.to(weight.device, torch.bool) if mask is not None else weight != 0
            rows, cols = keep.nonzero(as_tuple=True)  # row-major: CSR order
            crow = torch.zeros(self.out_features + 1, dtype=torch.int64, device=weight.device)
            crow[1:] = torch.cumsum(keep.sum(1), 0)
            self.weight = torch.sparse_csr_tensor(crow, cols, weight[rows, cols], weight.shape, check_invariants=True)
            self._bias_col = None if self.bias is None else self.bias.unsqueeze(1)
        elif method == "scipy":
            import scipy.sparse as sp

            w = weight.cpu().numpy()
            if mask is not None:
                rows, cols = mask.cpu().numpy().nonzero()
                self.weight = sp.csr_matrix((w[rows, cols], (rows, cols)), shape=w.shape)
            else:
                self.weight = sp.csr_matrix(w)
            self._bias_np = None if self.bias is None else self.bias.cpu().numpy()
        else:  # spikes: the rows of W^T, gathered per input event
            self.weight = weight.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.method == "torch":
            if self._bias_col is not None:
                y = torch.addmm(self._bias_col, self.weight, x2.t()).t()
            else:
                y = torch.mm(self.weight, x2.t()).t()
        elif self.method == "scipy":
            y_np = (self.weight @ x2.detach().cpu().numpy().T).T
            if self._bias_np is not None:
                y_np = y_np + self._bias_np
            y = torch.from_numpy(np.ascontiguousarray(y_np, dtype=y_np.dtype)).to(x.device)
        else:
            rows, cols = x2.nonzero(as_tuple=True)
            counts = torch.bincount(rows, minlength=x2.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            per_sample = None if self.binary_input else x2[rows, cols]
            y = F.embedding_bag(cols, self.weight, offsets, mode="sum", per_sample_weights=per_sample)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, density={density:.4f}, method={self.method}"
        )


class DenseLinear(nn.Module):
    """A dense layer of the inference model (``F.linear``, as the trained model)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class InferenceLIF(nn.Module):
    """A SpikingJelly ``LIFNode``'s forward for inference: the same
    arithmetic as SpikingJelly's CPU kernel (so the same spikes, bit for bit,
    in float32), with no autograd bookkeeping or stacking of per-step lists.
    Input and output ``(T, ...)``; states start at ``v_reset`` every call."""

    def __init__(self, tau: float, decay_input: bool = True, v_threshold: float = 1.0, v_reset: float | None = 0.0):
        super().__init__()
        self.tau, self.decay_input, self.v_threshold, self.v_reset = float(tau), bool(decay_input), float(v_threshold), v_reset

    @classmethod
    def from_node(cls, node: nn.Module) -> InferenceLIF:
        return cls(node.tau, getattr(node, "decay_input", True), node.v_threshold, node.v_reset)

    def reset(self) -> None:  # stateless between calls
        pass

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        reset = 0.0 if self.v_reset is None else float(self.v_reset)
        out = torch.empty_like(x_seq)
        v = torch.full_like(x_seq[0], reset)
        for t in range(x_seq.shape[0]):
            # SpikingJelly: h = v + (x - (v - v_reset)) / tau  (decay_input), or v - (v - v_reset) / tau + x
            leak = v - reset if reset != 0.0 else v  # v - 0.0 == v exactly
            if self.decay_input:
                h = (x_seq[t] - leak).div_(self.tau).add_(v)
            else:
                h = v - leak / self.tau + x_seq[t]
            spike = h >= self.v_threshold
            out[t] = spike
            if self.v_reset is None:  # soft reset: h - spike * threshold
                v = h - spike.to(h.dtype) * self.v_threshold
            else:
                v = h.masked_fill_(spike, reset)
        return out

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


class SparseSpikingMLP(nn.Module):
    """The inference form of a SpikingJelly ``snn-mlp``: ``(linear, LIF)``
    pairs and the readout, input ``(T, N, *input_shape)``, logits the time
    mean of the readout (``forward_steps`` gives the per-step outputs)."""

    spiking = True

    def __init__(self, linears: list[nn.Module], neurons: list[nn.Module], head: nn.Module, input_shape, n_classes: int, time_steps=None):
        super().__init__()
        self.linears = nn.ModuleList(linears)
        self.neurons = nn.ModuleList(neurons)
        self.head = head
        self.input_shape = tuple(input_shape)
        self.n_classes = int(n_classes)
        self.time_steps = time_steps

    def reset_states(self) -> None:
        for n in self.neurons:
            n.reset()

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 + len(self.input_shape) or tuple(x.shape[2:]) != self.input_shape:
            dims = ", ".join(("T", "N", *map(str, self.input_shape)))
            raise ValueError(f"SparseSpikingMLP expects time-major input ({dims}), got {tuple(x.shape)}")
        self.reset_states()
        try:
            h = x.flatten(2)
            for linear, neuron in zip(self.linears, self.neurons):
                h = neuron(linear(h))
            return self.head(h)
        finally:
            self.reset_states()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)


def _model_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = masks_of(model)
    if not masks:
        masks = dict(getattr(model, EXPORT_MASKS, {}) or {})
    return masks


def to_sparse_inference(
    model: nn.Module, masks: dict[str, torch.Tensor] | None = None, method: str = "torch", max_density: float = 1.0
) -> SparseSpikingMLP:
    """The sparse inference form of a trained SpikingJelly ``snn-mlp``.

    Args:
        model: a ``chsnn.models`` ``snn-mlp`` with ``backend: spikingjelly``
            (e.g. ``chsnn.rundir.load_model(run_dir)``, or
            ``load_export(file)`` of a torch or sparse export).
        masks: ``{module name: bool mask}`` of the sparse layers (default:
            the model's ``weight_mask`` buffers if an engine is attached, else
            ``model.export_masks`` from a sparse export, else every hidden
            layer with the pattern of its non-zero weights).
        method: ``torch``, ``scipy`` or ``spikes`` (module docstring).
        max_density: layers denser than this stay dense (``F.linear``); the
            benchmark's break-even density is a good value on a given CPU.

    The readout stays dense unless it has a mask. Outputs equal the dense
    model's to float rounding.
    """
    from chsnn.models.mlp import SpikingMLP

    if not isinstance(model, SpikingMLP):
        name = getattr(model, "model_name", type(model).__name__)
        backend = (getattr(model, "options", {}) or {}).get("backend")
        hint = " (this one has backend: snntorch)" if backend == "snntorch" else ""
        raise ValueError(f"sparse inference supports the SpikingJelly snn-mlp; got {name!r}{hint}")
    if method not in METHODS:
        raise ValueError(f"unknown sparse inference method {method!r}; choose one of: {', '.join(METHODS)}")
    masks = _model_masks(model) if masks is None else masks
    linears, neurons = [], []
    prefix_binary = False  # the first layer sees the (possibly analog) input
    for name, m in model.hidden.named_children():
        full = f"hidden.{name}"
        if isinstance(m, nn.Linear):
            mask = masks.get(full)
            if mask is None and not masks:
                mask = m.weight.detach() != 0
            density = float(mask.float().mean()) if mask is not None else 1.0
            if mask is not None and density <= max_density:
                linears.append(SparseLinear(m.weight, m.bias, mask, method=method, binary_input=prefix_binary))
            else:
                linears.append(DenseLinear(m.weight if mask is None else m.weight * mask, m.bias))
        elif isinstance(m, nn.Dropout):
            continue
        elif hasattr(m, "reset") and hasattr(m, "v_threshold") and hasattr(m, "tau"):
            neurons.append(InferenceLIF.from_node(m))
            prefix_binary = True
        else:
            raise ValueError(f"sparse inference: unexpected layer {full} ({type(m).__name__}) in the snn-mlp")
    head_mask = masks.get("head")
    if head_mask is not None and float(head_mask.float().mean()) <= max_density:
        head = SparseLinear(model.head.weight, model.head.bias, head_mask, method=method, binary_input=True)
    else:
        head = DenseLinear(model.head.weight, model.head.bias)
    fast = SparseSpikingMLP(linears, neurons, head, model.input_shape, model.n_classes, model.time_steps)
    return fast.eval()


def break_even(densities, dense_ms, sparse_ms) -> float | None:
    """The density at which sparse becomes faster than dense: the highest
    density whose time ratio crosses 1, interpolated on log-density between
    the measured densities; ``None`` if sparse is never faster, the highest
    density measured if it is always faster."""
    pts = sorted(zip(densities, dense_ms, sparse_ms), reverse=True)  # densest first
    ratios = [s / d for _, d, s in pts]
    if all(r >= 1 for r in ratios):
        return None
    if ratios[0] < 1:
        return pts[0][0]
    for (d0, _, _), r0, (d1, _, _), r1 in zip(pts, ratios, pts[1:], ratios[1:]):
        if r0 >= 1 > r1:
            t = (r0 - 1) / (r0 - r1)
            return math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))
    return None  # pragma: no cover
