"""The ``sparse`` export: CSR arrays of the sparse layers in one ``.npz``
(see :func:`save_sparse`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chsnn.contracts import EXPORT_MASKS
from chsnn.export.layers import ExportError, forward_order, neuron_parameters
from chsnn.rundir import LoadedRun, build_from_spec

SPARSE_FORMAT = "chsnn-sparse"
SPARSE_VERSION = 1


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
    setattr(model, EXPORT_MASKS, masks)  # the CSR structure, for chsnn.inference
    return model
