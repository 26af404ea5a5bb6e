"""NIR graphs back into PyTorch: :class:`NIRNetwork` runs a graph with
SpikingJelly multi-step layers, each node built by the function that
:func:`node_builders` registers for its NIR class."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from chsnn.contracts import reset_network
from chsnn.export.layers import ExportError
from chsnn.export.nir_graph import NIR_DT, nir_module


class NIRNetwork(nn.Module):
    """A NIR graph run in PyTorch with SpikingJelly multi-step layers.

    Input ``(T, N, *input_shape)``; every node processes the whole sequence
    (the graph must be acyclic); a node's input is the sum of its
    predecessors' outputs. ``forward`` returns the output node's values
    averaged over ``T`` (the ``readout: mean`` convention of chsnn's
    graphs), ``forward_steps`` the per-step values ``(T, N, ...)``.
    Modules are named after the graph's nodes (``self.layers``).
    """

    spiking = True

    def __init__(self, graph, dt: float | None = None):
        super().__init__()
        from graphlib import CycleError, TopologicalSorter

        nir = nir_module()
        metadata = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (getattr(graph, "metadata", None) or {}).items()}
        self.metadata = metadata
        self.dt = float(dt if dt is not None else metadata.get("dt", NIR_DT))
        inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
        outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(
                f"NIR graphs with one Input and one Output node are supported; this one has inputs {inputs} and outputs {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(int(s) for s in np.asarray(graph.nodes[self.input_name].input_type["input"]).reshape(-1))
        self.n_classes = int(np.prod(np.asarray(graph.nodes[self.output_name].output_type["output"])))
        self.time_steps = int(metadata.get("time_steps") or 0) or None
        self.predecessors: dict[str, list[str]] = {k: [] for k in graph.nodes}
        for a, b in graph.edges:
            self.predecessors[b].append(a)
        try:
            self.order = list(TopologicalSorter(self.predecessors).static_order())
        except CycleError as exc:
            raise ExportError("recurrent NIR graphs (cycles) are not supported by chsnn's NIR importer") from exc
        self.layers = nn.ModuleDict()
        self.keys: dict[str, str] = {}
        for name in self.order:
            module = self.module_for(graph.nodes[name], name)
            if module is not None:
                key = name.replace(".", "_")
                self.layers[key] = module
                self.keys[name] = key
        from spikingjelly.activation_based import functional

        functional.set_step_mode(self, "m")

    def module_for(self, node, name: str) -> nn.Module | None:
        """The layer of a NIR node (None for the graph's Input and Output)."""
        nir = nir_module()
        if isinstance(node, (nir.Input, nir.Output)) or type(node).__name__ == "Identity":
            return None
        build = next((b for cls, b in node_builders().items() if isinstance(node, cls)), None)
        if build is None:
            raise ExportError(
                f"NIR node {name} of type {type(node).__name__} is not supported; "
                "supported: Affine, Linear, Flatten, LIF, IF, Conv2d, AvgPool2d"
            )
        return build(node, name, self.dt)

    def reset_states(self) -> None:
        reset_network(self)

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        self.reset_states()
        try:
            values: dict[str, torch.Tensor] = {}
            for name in self.order:
                preds = self.predecessors[name]
                if name == self.input_name:
                    h = x
                elif not preds:
                    continue  # a node nothing feeds: not on the input's path
                else:
                    h = values[preds[0]]
                    for p in preds[1:]:
                        h = h + values[p]
                key = self.keys.get(name)
                values[name] = self.layers[key](h) if key is not None else h
            return values[self.output_name]
        finally:
            self.reset_states()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)


# Node builders: build(node, its name, dt) -> a SpikingJelly multi-step layer.


def _linear(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import layer

    weight = torch.from_numpy(np.array(node.weight))
    bias = isinstance(node, nir_module().Affine)
    m = layer.Linear(weight.shape[1], weight.shape[0], bias=bias, step_mode="m")
    with torch.no_grad():
        m.weight.data = weight
        if bias:
            m.bias.data = torch.from_numpy(np.array(node.bias))
    return m


def _flatten(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import layer

    end = int(node.end_dim)
    return layer.Flatten(start_dim=int(node.start_dim) + 1, end_dim=end + 1 if end >= 0 else end, step_mode="m")


def _lif(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import neuron

    tau = _uniform(node.tau, name, "tau") / dt
    tau = float(f"{tau:.12g}")  # undo the float error of tau * dt / dt
    r = _uniform(node.r, name, "r")
    v_reset = _uniform(node.v_reset, name, "v_reset")
    if not math.isclose(_uniform(node.v_leak, name, "v_leak"), v_reset, rel_tol=1e-6, abs_tol=1e-12):
        raise ExportError(f"NIR node {name}: LIF with v_leak != v_reset is not supported")
    if math.isclose(r, 1.0, rel_tol=1e-6):
        decay_input = True
    elif math.isclose(r, tau, rel_tol=1e-6):
        decay_input = False
    else:
        raise ExportError(f"NIR node {name}: LIF resistance r={r} must be 1 or tau/dt={tau}")
    return neuron.LIFNode(
        tau=tau, decay_input=decay_input, v_threshold=_uniform(node.v_threshold, name, "v_threshold"), v_reset=v_reset, step_mode="m"
    )


def _if(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import neuron

    return neuron.IFNode(
        v_threshold=_uniform(node.v_threshold, name, "v_threshold"), v_reset=_uniform(node.v_reset, name, "v_reset"), step_mode="m"
    )


def _ints(v) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def _conv(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import layer

    weight = torch.from_numpy(np.array(node.weight))
    if int(np.asarray(node.groups)) != 1:
        raise ExportError(f"NIR node {name}: grouped convolutions are not supported")
    padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
    m = layer.Conv2d(
        weight.shape[1], weight.shape[0], kernel_size=tuple(weight.shape[2:]),
        stride=_ints(node.stride), padding=padding, dilation=_ints(node.dilation), bias=True, step_mode="m",
    )  # fmt: skip
    with torch.no_grad():
        m.weight.data = weight
        m.bias.data = torch.from_numpy(np.array(node.bias))
    return m


def _avg_pool(node, name: str, dt: float) -> nn.Module:
    from spikingjelly.activation_based import layer

    return layer.AvgPool2d(kernel_size=_ints(node.kernel_size), stride=_ints(node.stride), padding=_ints(node.padding), step_mode="m")


@functools.cache
def node_builders() -> dict[type, object]:
    """NIR node class -> builder (checked in this order: LIF before IF)."""
    nir = nir_module()
    return {
        nir.Affine: _linear,
        nir.Linear: _linear,
        nir.Flatten: _flatten,
        nir.LIF: _lif,
        nir.IF: _if,
        nir.Conv2d: _conv,
        nir.AvgPool2d: _avg_pool,
    }


def _uniform(value, node: str, what: str) -> float:
    arr = np.unique(np.asarray(value))
    if arr.size != 1:
        raise ExportError(f"NIR node {node}: per-neuron {what} values are not supported (chsnn's importer builds one LIF layer per node)")
    return float(arr[0])


def from_nir(graph_or_path, dt: float | None = None) -> NIRNetwork:
    """A runnable :class:`NIRNetwork` from a ``nir.NIRGraph`` or a ``.nir`` file."""
    graph = graph_or_path
    if not hasattr(graph, "nodes"):
        graph = nir_module().read(str(graph_or_path))
    return NIRNetwork(graph, dt=dt).eval()
