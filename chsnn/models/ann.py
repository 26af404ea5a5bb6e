"""Non-spiking (ANN) models and their base class.

Forward convention (every ANN model): ``x`` is ``(N, *input_shape)`` and the
forward returns logits ``(N, n_classes)``. ANN models register with
``spiking=False``, so ``build_model`` stores ``time_steps=None``.

``mlp``: the MLP of the Cannistraci-Hebb training (CHT) paper,

    Flatten -> [Linear(., H) -> ReLU (-> Dropout)] x depth -> Linear(H, n_classes)

with ``H = round(1568 * width)``: 784-1568-1568-1568-10 on MNIST with the
defaults (``width=1.0``, ``depth=3``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chsnn.models.base import check_input_shape, check_positive_int, check_real
from chsnn.models.registry import register_model

MLP_HIDDEN = 1568  # the CHT paper's hidden width


class AnnModel(nn.Module):
    """Base class of the non-spiking models: checks the input shape
    ``(N, *input_shape)`` and leaves the rest to :meth:`run`."""

    spiking = False

    def __init__(self, input_shape, n_classes: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.n_classes = int(n_classes)
        self.time_steps = None
        self.default_engine_options: dict = {}

    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        check_input_shape(self, x, ("N",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)``."""
        self.check_input(x)
        return self.run(x)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, n_classes={self.n_classes}"


def check_width(value) -> float:
    return check_real("width", value, low=0.0, why=" (a multiplier of the layer widths)")


class MLP(AnnModel):
    """Modules: ``flatten``, ``hidden`` (``Linear, ReLU[, Dropout]`` per
    layer) and the output layer ``head`` (registered last)."""

    def __init__(self, input_shape, n_classes, hidden: int, depth: int, dropout: float):
        super().__init__(input_shape, n_classes)
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        size = math.prod(self.input_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(size, n_classes)

    def run(self, x):
        return self.head(self.hidden(self.flatten(x)))


@register_model(
    "mlp",
    spiking=False,
    description="ANN MLP of the CHT paper: Flatten -> [Linear -> ReLU] x depth -> Linear, hidden width round(1568 * width)",
)
def mlp(input_shape, n_classes, time_steps, *, width=1.0, depth=3, dropout=0.0):
    """Non-spiking MLP (input ``(N, *input_shape)``).

    Options: ``width`` (> 0, default 1.0: hidden width ``round(1568 * width)``),
    ``depth`` (number of hidden layers, default 3), ``dropout`` ([0, 1),
    default 0, after every hidden ReLU).
    """
    width = check_width(width)
    depth = check_positive_int("depth", depth)
    dropout = check_real("dropout", dropout, low=0.0, high=1.0, low_open=False)
    hidden = round(MLP_HIDDEN * width)
    if hidden < 1:
        raise ValueError(f"option width={width!r} leaves no hidden unit (round(1568 * width) = {hidden})")
    model = MLP(input_shape, n_classes, hidden, depth, dropout)
    model.options = dict(width=width, depth=depth, dropout=dropout)
    model.hidden_width = hidden
    return model
