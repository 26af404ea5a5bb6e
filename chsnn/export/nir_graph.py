"""The ``nir`` export: a chsnn spiking model as a NIR graph (:func:`to_nir`).

Which models map, and how each layer maps, are two small registries looked
up by class (the nearest registered base class wins): :data:`MODEL_MAPPERS`
(model class -> the function laying out its nodes) and :func:`layer_mappers`
(layer class -> the function adding its node). Supporting another model or
layer is one more entry.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chsnn.contracts import neuron_types
from chsnn.export.layers import ExportError, neuron_parameters
from chsnn.rundir import LoadedRun, model_spec

NIR_DT = 1e-4  # seconds per time step in the NIR graphs (SpikingJelly's and most NIR tools' default)
NIR_MODELS = "snn-mlp (spikingjelly and snntorch backends), snn-cnn with pool: avg"
# Why the models without a mapper have none (by model name).
UNSUPPORTED = {
    "spikformer": "spiking self-attention (spike-matrix products, reshapes, residual sums) has no NIR nodes",
    "mlp": "it is a non-spiking ReLU network and NIR has no ReLU node",
    "vgg16": "it is a non-spiking ReLU network and NIR has no ReLU node",
    "snn-vgg16": "its max pooling and BatchNorm layers are not expressed by this exporter",
}


def nir_module():
    """The ``nir`` package, or an ExportError saying how to get it."""
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - nir is a dependency
        raise ExportError("the nir format needs the nir package: pip install nir") from exc
    return nir


def unsupported(model: nn.Module, why: str) -> ExportError:
    name = getattr(model, "model_name", type(model).__name__)
    return ExportError(
        f"model {name!r} cannot be exported to NIR: {why}. NIR export supports {NIR_MODELS}; "
        "for this model use --format torch or --format sparse"
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _lookup(registry: dict, obj):
    """The entry of ``obj``'s class or its nearest registered base class, or None."""
    return next((registry[cls] for cls in type(obj).__mro__ if cls in registry), None)


# Nodes --------------------------------------------------------------------------------


def lif_node(params: dict, shape, dt: float, model: nn.Module):
    """A ``nir.LIF`` for a hard-reset LIF layer of ``shape`` (see the package docstring)."""
    nir = nir_module()
    if params.get("v_reset") is None:
        raise unsupported(model, "its neurons reset by subtraction, which NIR's LIF does not express")
    if params.get("type") not in ("LIFNode", "Leaky") or "tau" not in params:
        raise unsupported(model, f"neuron type {params.get('type')} has no NIR equivalent here")
    tau, v_reset = float(params["tau"]), float(params["v_reset"])
    decay_input = params.get("decay_input", True)  # snnTorch's Leaky is fed I / tau by chsnn: decay_input
    full = lambda v: np.full(tuple(shape), v, dtype=np.float64)  # noqa: E731  (float64: tau * dt / dt stays exact)
    return nir.LIF(
        tau=full(tau * dt),
        r=full(1.0 if decay_input else tau),
        v_leak=full(v_reset),
        v_threshold=full(params["v_threshold"]),
        v_reset=full(v_reset),
    )


def affine_node(linear: nn.Linear):
    nir = nir_module()
    if linear.bias is None:
        return nir.Linear(weight=_np(linear.weight))
    return nir.Affine(weight=_np(linear.weight), bias=_np(linear.bias))


class Chain:
    """The graph's nodes in forward order, and the shape flowing between them."""

    def __init__(self, model: nn.Module, dt: float):
        self.model, self.dt = model, dt
        self.shape = tuple(model.input_shape)
        self.nodes: list[tuple[str, object]] = []

    def add(self, name: str, node, shape=None) -> None:
        self.nodes.append((name.replace(".", "_"), node))
        if shape is not None:
            self.shape = tuple(shape)

    def flatten(self) -> None:
        self.add(
            "flatten",
            nir_module().Flatten(input_type={"input": np.array(self.shape)}, start_dim=0, end_dim=-1),
            (int(np.prod(self.shape)),),
        )

    def sequence(self, prefix: str, block: nn.Module) -> None:
        """The nodes of ``block``'s children, each mapped by its class."""
        children = list(block.named_children())
        i = 0
        while i < len(children):
            name, m = children[i]
            following = children[i + 1][1] if i + 1 < len(children) else None
            mapper = _lookup(layer_mappers(), m)
            if mapper is None:
                raise unsupported(self.model, f"layer {prefix}.{name} ({type(m).__name__}) has no NIR node")
            folded = mapper(self, f"{prefix}.{name}", m, following)
            i += 2 if folded else 1


# Layers: mapper(chain, name, layer, the layer after it) adds the layer's node; True: it
# folded the layer after it in too.


def _linear(chain: Chain, name: str, m: nn.Linear, following) -> bool:
    chain.add(name, affine_node(m), (m.out_features,))
    return False


def _neuron(chain: Chain, name: str, m: nn.Module, following) -> bool:
    chain.add(name, lif_node(neuron_parameters(m), chain.shape, chain.dt, chain.model))
    return False


def _identity_at_inference(chain: Chain, name: str, m: nn.Module, following) -> bool:
    return False  # dropout


def _conv(chain: Chain, name: str, m: nn.Conv2d, following) -> bool:
    """A ``nir.Conv2d``, with a BatchNorm right after it folded in (eval-mode statistics)."""
    if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise unsupported(chain.model, f"{name} is a grouped or non-zero-padded convolution")
    weight = m.weight.detach()
    bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels, dtype=weight.dtype)
    fold = isinstance(following, nn.BatchNorm2d)
    if fold:
        scale = following.weight.detach() / torch.sqrt(following.running_var + following.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = (bias - following.running_mean) * scale + following.bias.detach()
    _, h, w = chain.shape
    kh, kw = m.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    node = nir_module().Conv2d(
        input_shape=(h, w), weight=_np(weight), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=1, bias=_np(bias)
    )
    chain.add(name, node, (m.out_channels, _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)))
    return fold


def _avg_pool(chain: Chain, name: str, m: nn.AvgPool2d, following) -> bool:
    if m.ceil_mode or m.divisor_override is not None or (any(_pair(m.padding)) and not m.count_include_pad):
        raise unsupported(chain.model, f"{name}: this AvgPool2d configuration has no NIR node")
    c, h, w = chain.shape
    (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    node = nir_module().AvgPool2d(kernel_size=np.array([kh, kw]), stride=np.array([sh, sw]), padding=np.array([ph, pw]))
    chain.add(name, node, (c, _conv_out(h, kh, sh, ph), _conv_out(w, kw, sw, pw)))
    return False


def _max_pool(chain: Chain, name: str, m: nn.MaxPool2d, following) -> bool:
    raise unsupported(chain.model, "NIR has no max pooling (train the snn-cnn with model_options.pool=avg for a NIR-exportable network)")


@functools.cache
def layer_mappers() -> dict[type, object]:
    """Layer class -> mapper (SpikingJelly's layers subclass torch's)."""
    mappers = {nn.Linear: _linear, nn.Dropout: _identity_at_inference, nn.Conv2d: _conv, nn.AvgPool2d: _avg_pool, nn.MaxPool2d: _max_pool}
    mappers.update(dict.fromkeys(neuron_types(), _neuron))
    return mappers


# Models: mapper(chain) lays out the whole model.


def _spiking_mlp(chain: Chain) -> None:
    model = chain.model
    chain.flatten()
    chain.sequence("hidden", model.hidden)
    chain.add("head", affine_node(model.head))


def _snntorch_mlp(chain: Chain) -> None:
    model = chain.model
    chain.flatten()
    for i in range(model.depth):
        fc = getattr(model, f"fc{i}")
        chain.add(f"fc{i}", affine_node(fc), (fc.out_features,))
        params = neuron_parameters(getattr(model, f"lif{i}"))
        if params.get("reset_mechanism") != "zero" or abs(params["tau"] - model.tau) > 1e-6 * model.tau:
            raise unsupported(model, f"lif{i} is not the hard-reset LIF with beta = 1 - 1/tau that chsnn builds")
        chain.add(f"lif{i}", lif_node({**params, "decay_input": True, "tau": model.tau}, chain.shape, chain.dt, model))
    chain.add("head", affine_node(model.head))


def _spiking_cnn(chain: Chain) -> None:
    model = chain.model
    chain.sequence("features", model.features)
    chain.flatten()
    chain.add("fc", affine_node(model.fc), (model.fc.out_features,))
    chain.add("fc_lif", lif_node(neuron_parameters(model.fc_lif), chain.shape, chain.dt, model))
    chain.add("head", affine_node(model.head))


@functools.cache
def model_mappers() -> dict[type, object]:
    """Model class -> mapper."""
    from chsnn.models.cnn import SpikingCNN
    from chsnn.models.mlp import SnnTorchMLP, SpikingMLP

    return {SpikingMLP: _spiking_mlp, SnnTorchMLP: _snntorch_mlp, SpikingCNN: _spiking_cnn}


# The graph --------------------------------------------------------------------------------


def to_nir(model: nn.Module, dt: float = NIR_DT):
    """The NIR graph of a chsnn spiking model (eval-mode semantics: dropout
    is left out, BatchNorm uses its running statistics and is folded into the
    convolution before it). Arrays keep the model's dtype."""
    nir = nir_module()
    mapper = _lookup(model_mappers(), model)
    if mapper is None:
        raise unsupported(model, UNSUPPORTED.get(getattr(model, "model_name", ""), "no NIR mapping is defined for this model class"))
    chain = Chain(model, dt)
    mapper(chain)
    graph_nodes = {"input": nir.Input(input_type={"input": np.array(tuple(model.input_shape))})}
    graph_nodes.update(dict(chain.nodes))
    graph_nodes["output"] = nir.Output(output_type={"output": np.array([model.n_classes])})
    names = list(graph_nodes)
    edges = list(zip(names[:-1], names[1:]))
    metadata = {
        "producer": "chsnn",
        "dt": float(dt),
        "readout": "mean",  # logits = time-mean of the output node
        "time_steps": int(model.time_steps or 0),
        "chsnn_spec": json.dumps(model_spec(model)),
    }
    return nir.NIRGraph(nodes=graph_nodes, edges=edges, metadata=metadata)


def save_nir(run: LoadedRun, path: Path) -> dict:
    graph = to_nir(run.model)
    nir_module().write(str(path), graph)
    return {"nodes": list(graph.nodes)}
