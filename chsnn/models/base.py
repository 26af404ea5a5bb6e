"""Shared pieces of the spiking models: the base class with the forward
convention, option checks, surrogate gradients and the neuron kernel backend.

Forward convention (every spiking model): ``x`` is time-major,
``(T, N, *input_shape)``; the forward resets every neuron state, runs the
``T`` steps and returns ``(N, n_classes)`` logits, the time average of the
output layer's outputs. The output layer is a plain linear readout with no
spiking neuron after it, so the logits are its mean input current over the
``T`` steps. States are reset again when the forward ends, so a model holds
no autograd graph between calls (it can be deep-copied or pickled) and
callers never reset anything themselves.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Iterable

import torch
from torch import nn

from chsnn.contracts import reset_network

SURROGATES = ("atan", "sigmoid")
NEURON_BACKENDS = ("auto", "torch", "cupy", "triton")

# Surrogate slopes shared by both frameworks so the two backends compute the
# same gradients: SpikingJelly's defaults, ATan(alpha=2) and Sigmoid(alpha=4).
_ATAN_ALPHA = 2.0
_SIGMOID_ALPHA = 4.0


# Option checks: every error names the option and what is allowed. --------------


def check_choice(option: str, value, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"option {option}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def check_positive_int(option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"option {option} must be a positive integer, got {value!r}")
    return int(value)


def check_int_list(option: str, value) -> list[int]:
    """A positive int or a non-empty sequence of positive ints, as a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"option {option} must be a positive integer or a list of positive integers, got {value!r}")
    sizes = list(value)
    if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sizes):
        raise ValueError(f"option {option} must be a positive integer or a non-empty list of positive integers, got {value!r}")
    return [int(v) for v in sizes]


def check_real(
    option: str, value, *, low: float, high: float = math.inf, low_open: bool = True, high_open: bool = True, why: str = ""
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high == math.inf or (value < high if high_open else value <= high))
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"option {option} must be a number {lo}{hi}{why}, got {value!r}")
    return float(value)


def check_neuron_options(tau, v_threshold, surrogate: str, dropout) -> tuple[float, float, str, float]:
    tau = check_real("tau", tau, low=1.0, why=" (the membrane potential decays by 1/tau per step)")
    v_threshold = check_real("v_threshold", v_threshold, low=0.0)
    surrogate = check_choice("surrogate", surrogate, SURROGATES)
    dropout = check_real("dropout", dropout, low=0.0, high=1.0, low_open=False)
    return tau, v_threshold, surrogate, dropout


def check_input_shape(model, x, leading: tuple[str, ...], what: str = "input") -> None:
    """``x`` must be ``(*leading, *model.input_shape)`` with a non-empty first
    dimension; the error names the expected layout."""
    n = len(leading)
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != n + len(model.input_shape)
        or tuple(x.shape[n:]) != model.input_shape
        or x.shape[0] == 0
    ):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dims = ", ".join((*leading, *map(str, model.input_shape)))
        raise ValueError(f"{type(model).__name__} expects {what} ({dims}) with {leading[0]} >= 1, got {shape}")


# Neuron kernels -----------------------------------------------------------------


@functools.cache
def lif_takes_backend() -> bool:
    """True for SpikingJelly releases whose ``LIFNode`` takes ``backend=``
    (up to 0.0.0.x); SpikingJelly 2 picks its CPU/CUDA/Triton kernels by
    itself from the tensor's device (``SJ_LIF_CUDA_IMPLEMENTATION``)."""
    from spikingjelly.activation_based import neuron

    return "backend" in inspect.signature(neuron.LIFNode.__init__).parameters


@functools.cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a broken CUDA install can raise anything on import
        return False
    return True


@functools.cache
def _lif_supported_backends() -> tuple[str, ...]:
    from spikingjelly.activation_based import neuron

    try:
        return tuple(neuron.LIFNode(step_mode="m").supported_backends)
    except Exception:
        return ("torch",)


def neuron_backend(device=None) -> str:
    """The SpikingJelly LIF kernel backend for ``device`` (default: CUDA when
    available, else CPU).

    ``"cupy"`` or ``"triton"`` (in that order) when the device is a CUDA GPU,
    the package imports and the installed SpikingJelly's ``LIFNode`` supports
    it; ``"auto"`` on a CUDA GPU with SpikingJelly 2, whose ``LIFNode`` has no
    ``backend`` argument and chooses its own CUDA/Triton kernels; otherwise
    ``"torch"``. Never fails: on CPU it is always ``"torch"``.
    """
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else torch.device(device)
    except (RuntimeError, TypeError):
        return "torch"
    if device.type != "cuda" or not torch.cuda.is_available():
        return "torch"
    try:
        if not lif_takes_backend():
            return "auto"
        supported = _lif_supported_backends()
    except Exception:
        return "torch"
    for name in ("cupy", "triton"):
        if name in supported and _importable(name):
            return name
    return "torch"


def check_neuron_backend(value) -> str:
    """The ``neuron_backend`` option: "auto" (follow the input's device, see
    :func:`neuron_backend`), or force "torch", "cupy" or "triton" (SpikingJelly
    releases with a ``backend`` argument only; SpikingJelly 2 always chooses
    its kernels from the device, so there "torch" only matters on CPU)."""
    value = check_choice("neuron_backend", value, NEURON_BACKENDS)
    if value in ("cupy", "triton") and not lif_takes_backend():
        raise ValueError(
            f"option neuron_backend={value!r}: the installed SpikingJelly chooses its LIF kernels itself "
            "(set SJ_LIF_CUDA_IMPLEMENTATION=cuda|triton|torch before starting Python); use neuron_backend='auto' or 'torch'"
        )
    return value


def sj_surrogate(name: str):
    from spikingjelly.activation_based import surrogate

    return surrogate.ATan(alpha=_ATAN_ALPHA) if name == "atan" else surrogate.Sigmoid(alpha=_SIGMOID_ALPHA)


def snntorch_surrogate(name: str):
    from snntorch import surrogate

    # snnTorch's atan(alpha) and sigmoid(slope) have the same gradients as
    # SpikingJelly's ATan(alpha) and Sigmoid(alpha).
    return surrogate.atan(alpha=_ATAN_ALPHA) if name == "atan" else surrogate.sigmoid(slope=_SIGMOID_ALPHA)


def sj_lif(tau: float, v_threshold: float, surrogate: str) -> nn.Module:
    """A multi-step SpikingJelly LIF layer: hard reset to 0, input decayed by
    1/tau, reset detached from the graph."""
    from spikingjelly.activation_based import neuron

    return neuron.LIFNode(
        tau=float(tau),
        decay_input=True,
        v_threshold=float(v_threshold),
        v_reset=0.0,
        surrogate_function=sj_surrogate(surrogate),
        detach_reset=True,
        step_mode="m",
    )


# Models -------------------------------------------------------------------------


class SpikingModel(nn.Module):
    """Base class of the spiking models (see the module docstring for the
    forward convention). Subclasses implement :meth:`run`."""

    spiking = True

    def __init__(self, input_shape, n_classes: int, time_steps: int | None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.n_classes = int(n_classes)
        self.time_steps = time_steps

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """(T, N, n_classes) output-layer outputs, from freshly reset states."""
        raise NotImplementedError

    def reset_states(self) -> None:
        """Every neuron back at rest (:func:`chsnn.contracts.reset_network`)."""
        reset_network(self)

    def check_input(self, x: torch.Tensor) -> None:
        check_input_shape(self, x, ("T", "N"), "time-major input")

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer's outputs at every step, ``(T, N, n_classes)``."""
        self.check_input(x)
        self.reset_states()
        try:
            return self.run(x)
        finally:
            self.reset_states()  # drop the states (and the graph they hold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)``: the output layer's outputs averaged over time."""
        return self.forward_steps(x).mean(0)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, n_classes={self.n_classes}, time_steps={self.time_steps}"


class SpikingJellyModel(SpikingModel):
    """A model of SpikingJelly multi-step layers: resets its memory modules
    and keeps the LIF kernel backend matched to the input's device."""

    def __init__(self, input_shape, n_classes: int, time_steps: int | None, neuron_backend: str = "auto"):
        super().__init__(input_shape, n_classes, time_steps)
        self.neuron_backend_option = neuron_backend
        self.neuron_backend = "torch"  # the backend the LIF layers use now
        self._backend_device: str | None = None
        self._lif_takes_backend = lif_takes_backend()  # looked up once, outside any compiled region

    def finish(self) -> None:
        """Call at the end of ``__init__``: multi-step mode everywhere."""
        from spikingjelly.activation_based import functional

        functional.set_step_mode(self, "m")

    def sync_neuron_backend(self, device: torch.device) -> None:
        key = str(device)
        if key == self._backend_device:
            return
        if self._lif_takes_backend:
            from spikingjelly.activation_based import neuron

            choice = self.neuron_backend_option
            backend = neuron_backend(device) if choice == "auto" else choice
            for m in self.modules():
                if isinstance(m, neuron.BaseNode) and hasattr(m, "backend"):
                    m.backend = backend
        else:  # SpikingJelly 2 picks its kernels from the tensors' device itself
            backend = "torch" if device.type != "cuda" else "auto"
        self.neuron_backend = backend
        self._backend_device = key

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            self.sync_neuron_backend(x.device)
        return super().forward_steps(x)
