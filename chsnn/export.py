"""Deployment exports of a trained run: ``chsnn export RUN_DIR --format {torch,sparse,nir}``.

A run directory (``chsnn train``) keeps the weights and the engine's masks in
``best.pt`` / ``latest.pt``, next to optimizer and RNG state. ``export_run``
turns one of those checkpoints into a file meant for inference elsewhere:

``torch``  ``model-latest.pt``: a plain ``state_dict`` (``torch.save`` of an
    ordered dict of tensors, loadable with ``torch.load(..., weights_only=True)``)
    of the model with its masks applied, pruned weights exactly ``0.0`` and no
    engine buffers (``weight_mask``, ``weight_mask_f``). It loads with
    ``strict=True`` into a freshly built model of the same config::

        model = build_model(**spec); model.load_state_dict(torch.load(path, weights_only=True))

    A sidecar ``model-latest.json`` holds that ``spec`` (model name, options,
    input shape, classes, time steps) so :func:`load_export` can rebuild it.

``sparse`` ``model-latest.npz``: the compact form (see :func:`save_sparse` for
    the layout and why ``.npz``): per layer in forward order, CSR arrays
    (``indptr``, ``indices``, ``values``) for the weights the engine
    sparsified, dense arrays for the rest (output layer, biases, BatchNorm),
    shapes, and the neuron parameters (``tau``, ``v_threshold``, ``v_reset``...)
    of every spiking layer, plus everything needed to rebuild the model.

``nir``    ``model-latest.nir``: the Neuromorphic Intermediate Representation
    (an HDF5 file written by the ``nir`` package), for neuromorphic hardware
    and other simulators (Norse, snnTorch, Lava, Rockpool, SpikingJelly...).
    Supported: ``snn-mlp`` (both backends) and ``snn-cnn`` with
    ``pool: avg`` (BatchNorm folded into the convolutions). Models NIR cannot
    express (``spikformer``'s attention, max pooling, the ANN models' ReLU)
    fail naming the formats that work.

:func:`load_export` rebuilds a runnable model from any of the three files.
Spiking models take ``(T, N, *input_shape)`` and return the time-mean of the
readout, like the models of :mod:`chsnn.models`.

Conventions of the NIR graphs (those of SpikingJelly's ``nir_exchange``, so
the graphs read the same there): the time step ``dt`` is ``1e-4`` s (graph
metadata ``dt``); a SpikingJelly ``LIFNode(tau, decay_input=True,
v_reset=0)`` is ``nir.LIF(tau=tau * dt, r=1, v_leak=v_reset,
v_threshold, v_reset)``; ``Linear`` with a bias is ``nir.Affine``; the
readout is the last ``Affine`` (no neuron after it) and the logits are its
output averaged over the time steps (metadata ``readout: mean``). The graph
holds the weights dense, zeros included; NIR has no sparse weight type.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The run's model is rebuilt by chsnn.rundir (no Runner, data or engine); its
# names stay importable from here.
from chsnn.rundir import CHECKPOINT_HELP, LoadedRun, build_from_spec, load_run, model_spec, split_state  # noqa: F401

FORMATS = ("torch", "sparse", "nir")
SUFFIXES = {"torch": ".pt", "sparse": ".npz", "nir": ".nir"}
NIR_DT = 1e-4  # seconds per time step in the NIR graphs (SpikingJelly's and most NIR tools' default)
NIR_MODELS = "snn-mlp (spikingjelly and snntorch backends), snn-cnn with pool: avg"
SPARSE_FORMAT = "chsnn-sparse"
SPARSE_VERSION = 1
TORCH_FORMAT = "chsnn-torch-state-dict"


class ExportError(ValueError):
    """An export that cannot be made (the CLI prints it as ``chsnn export: error: ...``)."""


# Forward order ----------------------------------------------------------------------


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
        from snntorch._neurons import SpikingNeuron
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


# torch --------------------------------------------------------------------------------


def save_torch(run: LoadedRun, path: Path) -> dict:
    """The plain masked state dict, and its sidecar spec ``path.with_suffix('.json')``."""
    state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
    torch.save(state, path)
    sidecar = path.with_suffix(".json")
    meta = {"format": TORCH_FORMAT, **run.spec, "checkpoint": str(run.checkpoint), "masked_layers": _densities(run.masks)}
    sidecar.write_text(json.dumps(meta, indent=2))
    return {"sidecar": str(sidecar)}


def _densities(masks: dict) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}


def dense_state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (the dense baseline)."""
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buf)
    return buf.tell()


def load_torch(path) -> nn.Module:
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{path} is a plain state dict; rebuilding it needs its spec {sidecar.name} beside it "
            "(or build the model yourself and call model.load_state_dict(torch.load(path, weights_only=True)))"
        )
    spec = json.loads(sidecar.read_text())
    model = build_from_spec(spec)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


# sparse -------------------------------------------------------------------------------


def _csr(weight2d: np.ndarray, mask2d: np.ndarray, index_dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = mask2d.sum(1)
    indptr = np.zeros(mask2d.shape[0] + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    rows, cols = np.nonzero(mask2d)  # row-major order: CSR order
    return indptr, cols.astype(index_dtype), weight2d[rows, cols]


def save_sparse(run: LoadedRun, path: Path) -> dict:
    """Write the compact form of ``run``'s model to ``path`` (an ``.npz``).

    Why ``.npz``: it is a zip of ``.npy`` arrays, read by NumPy (and SciPy's
    ``csr_matrix((values, indices, indptr))``) with no PyTorch, no pickle
    (``np.load(path, allow_pickle=False)`` works) and no custom parser, in any
    language with a zip and ``.npy`` reader; CSR arrays are the exact layout
    of ``scipy.sparse.csr_matrix`` and ``torch.sparse_csr_tensor``. Stored
    uncompressed, so the size is what the sparsity buys (about ``density *
    (value bytes + 4)`` per dense entry with int32 indices), and arrays load
    without inflating.

    Layout: ``__meta__`` is a JSON string with ``format`` ("chsnn-sparse"),
    ``version``, the model spec (``model``, ``options``, ``input_shape``,
    ``n_classes``, ``time_steps``, ``spiking``) and ``layers``: the leaf
    modules in forward order, each ``{"name", "type", "tensors": {param:
    {"layout": "csr"|"dense", "shape", "dtype", ["csr_shape", "nnz"]}},
    ["neuron": {tau, v_threshold, v_reset, decay_input, ...}]}``. Arrays are
    ``{module}.{param}`` for dense tensors and ``{module}.{param}.indptr``,
    ``.indices``, ``.values`` for CSR weights (``csr_shape`` is ``(out,
    in * kh * kw)``: the weight viewed as rows of output units; the CSR
    structure is the engine's mask, so a kept link whose weight is 0 is kept).
    """
    model, masks = run.model, run.masks
    state = model.state_dict()
    modules = dict(model.named_modules())
    owned: dict[str, list[str]] = {}
    for key in state:
        module, _, name = key.rpartition(".")
        owned.setdefault(module, []).append(name)
    order = forward_order(model)
    order += [m for m in owned if m not in order]  # tensors of non-leaf modules (rare)
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for name in order:
        module = modules.get(name)
        entry: dict = {"name": name, "type": type(module).__name__ if module is not None else None, "tensors": {}}
        params = neuron_parameters(module) if module is not None else None
        if params is not None:
            entry["neuron"] = params
        for pname in owned.get(name, []):
            key = f"{name}.{pname}" if name else pname
            tensor = state[key].detach().cpu()
            value = tensor.numpy()
            info = {"shape": list(value.shape), "dtype": str(value.dtype)}
            if pname == "weight" and name in masks:
                w2 = value.reshape(value.shape[0], -1)
                m2 = masks[name].numpy().reshape(w2.shape)
                nnz = int(m2.sum())
                index_dtype = np.int32 if max(w2.shape[1], nnz) < 2**31 else np.int64
                indptr, indices, values = _csr(w2, m2, index_dtype)
                arrays[f"{key}.indptr"], arrays[f"{key}.indices"], arrays[f"{key}.values"] = indptr, indices, values
                info.update(layout="csr", csr_shape=list(w2.shape), nnz=nnz, density=nnz / max(1, m2.size))
            else:
                arrays[key] = value
                info["layout"] = "dense"
            entry["tensors"][pname] = info
        if entry["tensors"] or params is not None or module is not None:
            layers.append(entry)
    meta = {"format": SPARSE_FORMAT, "version": SPARSE_VERSION, **run.spec, "checkpoint": str(run.checkpoint), "layers": layers}
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return {"layers": len(layers), "nnz": sum(t.get("nnz", 0) for layer in layers for t in layer["tensors"].values())}


def read_sparse(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a sparse export, no pickle."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "__meta__" not in arrays:
        raise ExportError(f"{path} is not a chsnn sparse export (no __meta__ entry)")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("format") != SPARSE_FORMAT or meta.get("version") != SPARSE_VERSION:
        raise ExportError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not {SPARSE_FORMAT} {SPARSE_VERSION}")
    return meta, arrays


def sparse_state(meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(dense state dict, {module: bool mask}) from a sparse export's arrays."""
    state, masks = {}, {}
    for layer in meta["layers"]:
        name = layer["name"]
        for pname, info in layer["tensors"].items():
            key = f"{name}.{pname}" if name else pname
            if info["layout"] == "dense":
                state[key] = torch.from_numpy(np.array(arrays[key]))
                continue
            indptr, indices, values = arrays[f"{key}.indptr"], arrays[f"{key}.indices"], arrays[f"{key}.values"]
            n_out, n_in = info["csr_shape"]
            rows = np.repeat(np.arange(n_out), np.diff(indptr))
            dense = np.zeros((n_out, n_in), dtype=values.dtype)
            mask = np.zeros((n_out, n_in), dtype=bool)
            dense[rows, indices] = values
            mask[rows, indices] = True
            state[key] = torch.from_numpy(dense.reshape(info["shape"]))
            masks[name] = torch.from_numpy(mask.reshape(info["shape"]))
    return state, masks


def load_sparse(path) -> nn.Module:
    meta, arrays = read_sparse(path)
    state, masks = sparse_state(meta, arrays)
    model = build_from_spec(meta)
    model.load_state_dict(state, strict=True)
    model.export_masks = masks  # the CSR structure, for chsnn.inference
    return model


# NIR ----------------------------------------------------------------------------------


def _nir():
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - nir is a dependency
        raise ExportError("the nir format needs the nir package: pip install nir") from exc
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _unsupported_nir(model: nn.Module, why: str) -> ExportError:
    name = getattr(model, "model_name", type(model).__name__)
    return ExportError(f"model {name!r} cannot be exported to NIR: {why}. NIR export supports {NIR_MODELS}; for this model use --format torch or --format sparse")


def _lif_node(params: dict, shape, dt: float, model: nn.Module):
    nir = _nir()
    if params.get("v_reset") is None:
        raise _unsupported_nir(model, "its neurons reset by subtraction, which NIR's LIF does not express")
    if params.get("type") not in ("LIFNode", "Leaky") or "tau" not in params:
        raise _unsupported_nir(model, f"neuron type {params.get('type')} has no NIR equivalent here")
    tau, v_reset = float(params["tau"]), float(params["v_reset"])
    decay_input = params.get("decay_input", True)  # snnTorch's Leaky is fed I / tau by chsnn: decay_input
    full = lambda v: np.full(tuple(shape), v, dtype=np.float64)  # noqa: E731  (float64: tau * dt / dt stays exact)
    return nir.LIF(tau=full(tau * dt), r=full(1.0 if decay_input else tau), v_leak=full(v_reset), v_threshold=full(params["v_threshold"]), v_reset=full(v_reset))


def _affine(linear: nn.Linear):
    nir = _nir()
    if linear.bias is None:
        return nir.Linear(weight=_np(linear.weight))
    return nir.Affine(weight=_np(linear.weight), bias=_np(linear.bias))


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def to_nir(model: nn.Module, dt: float = NIR_DT):
    """The NIR graph of a chsnn spiking model (eval-mode semantics: dropout
    is left out, BatchNorm uses its running statistics and is folded into the
    convolution before it). Arrays keep the model's dtype."""
    from chsnn.models.cnn import SpikingCNN
    from chsnn.models.mlp import SnnTorchMLP, SpikingMLP

    nir = _nir()
    nodes: list[tuple[str, object]] = []
    shape = tuple(model.input_shape)

    def add(name, node):
        nodes.append((name.replace(".", "_"), node))

    if isinstance(model, SpikingMLP):
        add("flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
        for name, m in model.hidden.named_children():
            if isinstance(m, nn.Linear):
                add(f"hidden.{name}", _affine(m))
                width = m.out_features
            elif (params := neuron_parameters(m)) is not None:
                add(f"hidden.{name}", _lif_node(params, (width,), dt, model))
            elif isinstance(m, nn.Dropout):
                continue  # identity at inference
            else:
                raise _unsupported_nir(model, f"layer hidden.{name} ({type(m).__name__}) has no NIR node")
        add("head", _affine(model.head))
    elif isinstance(model, SnnTorchMLP):
        add("flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
        for i in range(model.depth):
            fc = getattr(model, f"fc{i}")
            add(f"fc{i}", _affine(fc))
            params = neuron_parameters(getattr(model, f"lif{i}"))
            if params.get("reset_mechanism") != "zero" or abs(params["tau"] - model.tau) > 1e-6 * model.tau:
                raise _unsupported_nir(model, f"lif{i} is not the hard-reset LIF with beta = 1 - 1/tau that chsnn builds")
            add(f"lif{i}", _lif_node({**params, "decay_input": True, "tau": model.tau}, (fc.out_features,), dt, model))
        add("head", _affine(model.head))
    elif isinstance(model, SpikingCNN):
        c, h, w = shape
        children = list(model.features.named_children())
        i = 0
        while i < len(children):
            name, m = children[i]
            kind = type(m).__name__
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise _unsupported_nir(model, f"features.{name} is a grouped or non-zero-padded convolution")
                weight = m.weight.detach()
                bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels, dtype=weight.dtype)
                if i + 1 < len(children) and isinstance(children[i + 1][1], nn.BatchNorm2d):
                    bn = children[i + 1][1]
                    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                    weight = weight * scale.view(-1, 1, 1, 1)
                    bias = (bias - bn.running_mean) * scale + bn.bias.detach()
                    i += 1
                kh, kw = m.kernel_size
                (sh, sw), (ph, pw), (dh, dw) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
                add(f"features.{name}", nir.Conv2d(input_shape=(h, w), weight=_np(weight), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=1, bias=_np(bias)))
                c, h, w = m.out_channels, _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
            elif (params := neuron_parameters(m)) is not None:
                add(f"features.{name}", _lif_node(params, (c, h, w), dt, model))
            elif kind == "AvgPool2d":
                if m.ceil_mode or m.divisor_override is not None or (any(_pair(m.padding)) and not m.count_include_pad):
                    raise _unsupported_nir(model, f"features.{name}: this AvgPool2d configuration has no NIR node")
                (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
                add(f"features.{name}", nir.AvgPool2d(kernel_size=np.array([kh, kw]), stride=np.array([sh, sw]), padding=np.array([ph, pw])))
                h, w = _conv_out(h, kh, sh, ph), _conv_out(w, kw, sw, pw)
            elif kind == "MaxPool2d":
                raise _unsupported_nir(model, "NIR has no max pooling (train the snn-cnn with model_options.pool=avg for a NIR-exportable network)")
            else:
                raise _unsupported_nir(model, f"layer features.{name} ({kind}) has no NIR node")
            i += 1
        add("flatten", nir.Flatten(input_type={"input": np.array((c, h, w))}, start_dim=0, end_dim=-1))
        add("fc", _affine(model.fc))
        add("fc_lif", _lif_node(neuron_parameters(model.fc_lif), (model.fc.out_features,), dt, model))
        add("head", _affine(model.head))
    else:
        why = {
            "spikformer": "spiking self-attention (spike-matrix products, reshapes, residual sums) has no NIR nodes",
            "mlp": "it is a non-spiking ReLU network and NIR has no ReLU node",
            "vgg16": "it is a non-spiking ReLU network and NIR has no ReLU node",
            "snn-vgg16": "its max pooling and BatchNorm layers are not expressed by this exporter",
        }.get(getattr(model, "model_name", ""), "no NIR mapping is defined for this model class")
        raise _unsupported_nir(model, why)

    graph_nodes = {"input": nir.Input(input_type={"input": np.array(shape)})}
    graph_nodes.update(dict(nodes))
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
    _nir().write(str(path), graph)
    return {"nodes": list(graph.nodes)}


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

        nir = _nir()
        metadata = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (getattr(graph, "metadata", None) or {}).items()}
        self.metadata = metadata
        self.dt = float(dt if dt is not None else metadata.get("dt", NIR_DT))
        inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
        outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(f"NIR graphs with one Input and one Output node are supported; this one has inputs {inputs} and outputs {outputs}")
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
            module = self._module(graph.nodes[name], name)
            if module is not None:
                key = name.replace(".", "_")
                self.layers[key] = module
                self.keys[name] = key
        from spikingjelly.activation_based import functional

        functional.set_step_mode(self, "m")

    def _module(self, node, name: str):
        nir = _nir()
        from spikingjelly.activation_based import layer, neuron

        if isinstance(node, (nir.Input, nir.Output)) or type(node).__name__ == "Identity":
            return None
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = torch.from_numpy(np.array(node.weight))
            bias = isinstance(node, nir.Affine)
            m = layer.Linear(weight.shape[1], weight.shape[0], bias=bias, step_mode="m")
            with torch.no_grad():
                m.weight.data = weight
                if bias:
                    m.bias.data = torch.from_numpy(np.array(node.bias))
            return m
        if isinstance(node, nir.Flatten):
            end = int(node.end_dim)
            return layer.Flatten(start_dim=int(node.start_dim) + 1, end_dim=end + 1 if end >= 0 else end, step_mode="m")
        if isinstance(node, nir.LIF):
            tau = _uniform(node.tau, name, "tau") / self.dt
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
            return neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=_uniform(node.v_threshold, name, "v_threshold"), v_reset=v_reset, step_mode="m")
        if isinstance(node, nir.IF):
            return neuron.IFNode(v_threshold=_uniform(node.v_threshold, name, "v_threshold"), v_reset=_uniform(node.v_reset, name, "v_reset"), step_mode="m")
        if isinstance(node, nir.Conv2d):
            weight = torch.from_numpy(np.array(node.weight))
            if int(np.asarray(node.groups)) != 1:
                raise ExportError(f"NIR node {name}: grouped convolutions are not supported")
            padding = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in np.asarray(node.padding).reshape(-1))
            m = layer.Conv2d(
                weight.shape[1], weight.shape[0], kernel_size=tuple(weight.shape[2:]),
                stride=tuple(int(s) for s in np.asarray(node.stride).reshape(-1)), padding=padding,
                dilation=tuple(int(d) for d in np.asarray(node.dilation).reshape(-1)), bias=True, step_mode="m",
            )
            with torch.no_grad():
                m.weight.data = weight
                m.bias.data = torch.from_numpy(np.array(node.bias))
            return m
        if isinstance(node, nir.AvgPool2d):
            as_tuple = lambda v: tuple(int(x) for x in np.asarray(v).reshape(-1))  # noqa: E731
            return layer.AvgPool2d(kernel_size=as_tuple(node.kernel_size), stride=as_tuple(node.stride), padding=as_tuple(node.padding), step_mode="m")
        raise ExportError(f"NIR node {name} of type {type(node).__name__} is not supported; supported: Affine, Linear, Flatten, LIF, IF, Conv2d, AvgPool2d")

    def reset_states(self) -> None:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)

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


def _uniform(value, node: str, what: str) -> float:
    arr = np.unique(np.asarray(value))
    if arr.size != 1:
        raise ExportError(f"NIR node {node}: per-neuron {what} values are not supported (chsnn's importer builds one LIF layer per node)")
    return float(arr[0])


def from_nir(graph_or_path, dt: float | None = None) -> NIRNetwork:
    """A runnable :class:`NIRNetwork` from a ``nir.NIRGraph`` or a ``.nir`` file."""
    graph = graph_or_path
    if not hasattr(graph, "nodes"):
        graph = _nir().read(str(graph_or_path))
    return NIRNetwork(graph, dt=dt).eval()


# Entry points -------------------------------------------------------------------------


_WRITERS = {"torch": save_torch, "sparse": save_sparse, "nir": save_nir}


def default_export_path(run_dir, fmt: str, checkpoint: str) -> Path:
    """``run_dir/export/model-CHECKPOINT.SUFFIX`` (``checkpoint``: latest or best)."""
    return Path(run_dir) / "export" / f"model-{checkpoint}{SUFFIXES[fmt]}"


def export_run(run_dir, fmt: str, out=None, checkpoint: str | None = None) -> dict:
    """Export a run's checkpoint; returns what was written.

    Args:
        run_dir: a ``chsnn train`` run directory.
        fmt: ``torch``, ``sparse`` or ``nir`` (see the module docstring).
        out: the file to write, or a directory to put it in (default
            ``run_dir/export/model-{checkpoint}{.pt,.npz,.nir}``).
        checkpoint: ``latest`` or ``best``; default: the run directory's
            default, latest, the final model (see :class:`chsnn.rundir.RunDir`).

    Returns ``{"format", "path", "bytes", "dense_bytes", "ratio", "model",
    "checkpoint", "sparsity", ...}``: ``bytes`` is the written file's size,
    ``dense_bytes`` that of the dense ``torch.save(state_dict)`` of the same
    model, ``ratio`` their quotient.

    Raises:
        FileNotFoundError: no such run directory or checkpoint.
        ExportError (a ValueError): unknown format or checkpoint, or a model
            the format cannot express (NIR).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run = load_run(run_dir, checkpoint)
    if fmt == "nir":
        to_nir(run.model)  # fail on unsupported models before writing anything
    default_path = default_export_path(run_dir, fmt, run.checkpoint.stem)
    if out is None:
        path = default_path
    else:
        path = Path(out)
        if path.is_dir() or str(out).endswith(("/", "\\")):
            path = path / default_path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = _WRITERS[fmt](run, path)
    size, dense = path.stat().st_size, dense_state_bytes(run.model)
    links = sum(int(m.sum()) for m in run.masks.values())
    total = sum(m.numel() for m in run.masks.values())
    result = {
        "format": fmt,
        "path": str(path),
        "bytes": size,
        "dense_bytes": dense,
        "ratio": size / dense if dense else None,
        "model": run.spec["model"],
        "checkpoint": run.checkpoint.name,
        "run_dir": str(run_dir),
        "sparsity": 1 - links / total if total else 0.0,
        "sparse_layers": len(run.masks),
        **extra,
    }
    return result


def _zip_has(path: Path, name: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return name in z.namelist()


def load_export(path, fmt: str | None = None) -> nn.Module:
    """Rebuild a runnable model (eval mode) from an export file.

    ``fmt`` defaults to the file's kind: an ``.npz`` with a ``__meta__``
    entry is sparse, an HDF5 file (``.nir``) NIR, otherwise a torch state
    dict (needing its ``.json`` spec beside it). torch and sparse files give the ``chsnn.models`` model the
    run trained (``load_sparse`` also sets ``model.export_masks``, the CSR
    structure); NIR files give a :class:`NIRNetwork`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export file {path} does not exist")
    if fmt is None:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89HDF\r\n\x1a\n"):
            fmt = "nir"
        elif zipfile.is_zipfile(path) and _zip_has(path, "__meta__.npy"):
            fmt = "sparse"  # (a torch.save file is a zip too, without that entry)
        else:
            fmt = "torch"
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "torch":
        return load_torch(path)
    if fmt == "sparse":
        return load_sparse(path)
    return from_nir(path)


# Command line -------------------------------------------------------------------------


def add_export_command(sub) -> None:
    """Register ``chsnn export`` on the ``chsnn`` subparsers."""
    p = sub.add_parser("export", help="export a run's trained network: masked torch state dict, compact CSR file, or NIR graph")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `chsnn train`")
    p.add_argument("--format", dest="format", required=True, metavar="{torch,sparse,nir}",
                   help="torch: masked state dict (.pt + .json spec); sparse: CSR .npz; nir: Neuromorphic Intermediate Representation (.nir)")
    p.add_argument("--out", help="file or directory to write (default: RUN_DIR/export/model-CHECKPOINT.{pt,npz,nir})")
    p.add_argument("--checkpoint", metavar="{latest,best}", help=CHECKPOINT_HELP)
    p.set_defaults(func=_export_command)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _export_command(args) -> int:
    if args.format not in FORMATS:  # checked here (not by argparse choices) so the message names the allowed formats
        raise ExportError(f"unknown export format {args.format!r}; choose one of: {', '.join(FORMATS)}")
    result = export_run(args.run_dir, args.format, out=args.out, checkpoint=args.checkpoint)
    print(
        f"{result['path']}: {result['format']} export of {result['model']} ({result['checkpoint']}, sparsity {result['sparsity']:.4f}), "
        f"{result['bytes']} bytes ({_human(result['bytes'])}) vs {result['dense_bytes']} bytes dense state dict "
        f"({_human(result['dense_bytes'])}): x{result['ratio']:.3f}"
    )
    if result.get("sidecar"):
        print(f"{result['sidecar']}: the model spec that rebuilds it")
    return 0
