"""A run's optimizer, learning-rate schedule and precision, from its config."""

from __future__ import annotations

import torch
from torch import nn

from chsnn.config import PRECISIONS
from chsnn.sparse import ConfigError

# lr_schedule: linear, the CHT reference's: down to 1% of lr over the first 90% of training.
LINEAR_LR_FLOOR, LINEAR_LR_SPAN = 0.01, 0.9


def make_optimizer(cfg: dict, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = model.parameters()
    # Fused kernels: faster, and on CPU they avoid unfused Adam's slow sqrt of
    # the zero second moments at pruned positions (see BENCHMARKS.md).
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], **fused)
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], **fused)


def make_lr_scheduler(cfg: dict, optimizer: torch.optim.Optimizer, total_steps: int):
    """The config's schedule over ``total_steps`` optimizer steps, or None (constant)."""
    schedule, total = cfg["lr_schedule"], max(1, total_steps)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if schedule == "linear":
        span = max(1, round(LINEAR_LR_SPAN * total))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - (1.0 - LINEAR_LR_FLOOR) * min(step, span) / span)
    return None


def check_precision(precision: str, device: torch.device) -> None:
    """The precision is known and the device can run it, or a ConfigError saying what to use."""
    if precision not in PRECISIONS:
        raise ConfigError(f"config precision={precision!r} is not allowed; valid precisions are {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision fp16 needs a CUDA device (it trains with a GradScaler, CUDA only); "
            f"the device is {device}: use precision bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: the GPU {torch.cuda.get_device_name(device)} does not support bfloat16; use fp16 or fp32")
