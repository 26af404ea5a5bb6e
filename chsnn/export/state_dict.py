"""The ``torch`` export: the masked model's plain state dict, and a JSON
spec beside it that rebuilds the model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from chsnn.rundir import LoadedRun, build_from_spec

TORCH_FORMAT = "chsnn-torch-state-dict"


def save_torch(run: LoadedRun, path: Path) -> dict:
    """The plain masked state dict, and its sidecar spec ``path.with_suffix('.json')``."""
    state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
    torch.save(state, path)
    sidecar = path.with_suffix(".json")
    meta = {"format": TORCH_FORMAT, **run.spec, "checkpoint": str(run.checkpoint), "masked_layers": densities(run.masks)}
    sidecar.write_text(json.dumps(meta, indent=2))
    return {"sidecar": str(sidecar)}


def densities(masks: dict) -> dict[str, float]:
    """{layer: the fraction of its links kept}."""
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
