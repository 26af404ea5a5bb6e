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

The package: :mod:`.state_dict` (torch), :mod:`.csr` (sparse),
:mod:`.nir_graph` (to NIR, a registry per model and layer class) and
:mod:`.nir_network` (from NIR), :mod:`.layers` (what they share); the run's
model comes from :func:`chsnn.rundir.load_run`. Every public name stays
importable from ``chsnn.export``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from torch import nn

from chsnn.contracts import split_masked_state
from chsnn.export.csr import SPARSE_FORMAT, SPARSE_VERSION, load_sparse, read_sparse, save_sparse, sparse_state
from chsnn.export.layers import ExportError, example_input, forward_order, neuron_parameters
from chsnn.export.nir_graph import NIR_DT, NIR_MODELS, affine_node, layer_mappers, lif_node, model_mappers, save_nir, to_nir
from chsnn.export.nir_network import NIRNetwork, from_nir, node_builders
from chsnn.export.state_dict import TORCH_FORMAT, dense_state_bytes, densities, load_torch, save_torch

# The run's model is rebuilt by chsnn.rundir (no Runner, data or engine); its
# names stay importable from here.
from chsnn.rundir import CHECKPOINT_HELP, LoadedRun, build_from_spec, load_run, model_spec

FORMATS = ("torch", "sparse", "nir")
SUFFIXES = {"torch": ".pt", "sparse": ".npz", "nir": ".nir"}

__all__ = [
    "CHECKPOINT_HELP", "FORMATS", "LOADERS", "NIR_DT", "NIR_MODELS", "SPARSE_FORMAT", "SPARSE_VERSION", "SUFFIXES", "TORCH_FORMAT",
    "WRITERS", "ExportError", "LoadedRun", "NIRNetwork", "add_export_command", "affine_node", "build_from_spec",
    "default_export_path", "dense_state_bytes", "densities", "example_input", "export_run", "forward_order", "from_nir",
    "layer_mappers", "lif_node", "load_export", "load_run", "load_sparse", "load_torch", "model_mappers", "model_spec",
    "neuron_parameters", "node_builders", "read_sparse", "save_nir", "save_sparse", "save_torch", "sparse_state",
    "split_masked_state", "to_nir",
]  # fmt: skip


# Entry points -------------------------------------------------------------------------


WRITERS = {"torch": save_torch, "sparse": save_sparse, "nir": save_nir}
LOADERS = {"torch": load_torch, "sparse": load_sparse, "nir": from_nir}


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
    extra = WRITERS[fmt](run, path)
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
    return LOADERS[fmt](path)


# Command line -------------------------------------------------------------------------


def add_export_command(sub) -> None:
    """Register ``chsnn export`` on the ``chsnn`` subparsers."""
    p = sub.add_parser("export", help="export a run's trained network: masked torch state dict, compact CSR file, or NIR graph")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `chsnn train`")
    p.add_argument(
        "--format",
        dest="format",
        required=True,
        metavar="{torch,sparse,nir}",
        help="torch: masked state dict (.pt + .json spec); sparse: CSR .npz; nir: Neuromorphic Intermediate Representation (.nir)",
    )
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
