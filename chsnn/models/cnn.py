"""``snn-cnn``: a small VGG-like spiking CNN sized from the input shape.

    [Conv3x3(pad 1, no bias) -> BatchNorm -> LIF -> pool] x len(channels)
    -> Flatten -> Linear(hidden) -> LIF (-> Dropout) -> Linear(n_classes) readout

Default channels: ``[32, 64]`` for inputs smaller than 32x32, ``[32, 64, 128]``
from 32x32 up. Each block pools by 2 (max pooling by default, which keeps the
spikes binary); where halving at every block would leave the feature map
larger than 6x6 (e.g. 128x128 event frames), the first blocks pool by 4
instead, so the flattened features stay small (128x128 -> 32 -> 8 -> 4). A
side that is already 1 is not pooled. Every layer is a SpikingJelly
multi-step layer; see :mod:`chsnn.models.base` for the forward convention.
"""

from __future__ import annotations

import math

from torch import nn

from chsnn.models.base import (
    SpikingJellyModel,
    check_choice,
    check_int_list,
    check_neuron_backend,
    check_neuron_options,
    check_positive_int,
    sj_lif,
)
from chsnn.models.registry import register_model

POOLS = ("max", "avg")
MAX_SIDE = 6  # target side of the last feature map
DEFAULT_HIDDEN = 256


def default_channels(input_shape) -> list[int]:
    return [32, 64] if min(input_shape[1:]) < 32 else [32, 64, 128]


def pool_plan(size: int, n_blocks: int, max_side: int = MAX_SIDE) -> tuple[list[int], int]:
    """Pooling factor of each block along one side, and the final side.

    2 per block; 4 where even halving at every remaining block would end
    above ``max_side``; 1 once the side is 1."""
    factors = []
    for i in range(n_blocks):
        later = 2 ** (n_blocks - i - 1)
        if size >= 4 and size // 2 // later > max_side:
            k = 4
        elif size >= 2:
            k = 2
        else:
            k = 1
        factors.append(k)
        size //= k
    return factors, size


class SpikingCNN(SpikingJellyModel):
    """SpikingJelly multi-step CNN. Modules: ``features`` (the conv blocks),
    ``flatten``, ``fc``, ``fc_lif`` (``fc_dropout``) and the readout ``head``."""

    def __init__(
        self, input_shape, n_classes, time_steps, channels, hidden, tau, v_threshold, surrogate, pool, dropout, neuron_backend="auto"
    ):
        super().__init__(input_shape, n_classes, time_steps, neuron_backend)
        from spikingjelly.activation_based import layer

        c_in, height, width = self.input_shape
        plan_h, out_h = pool_plan(height, len(channels))
        plan_w, out_w = pool_plan(width, len(channels))
        pool_layer = layer.MaxPool2d if pool == "max" else layer.AvgPool2d
        blocks: list[nn.Module] = []
        for c_out, kh, kw in zip(channels, plan_h, plan_w):
            blocks += [
                layer.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False, step_mode="m"),
                layer.BatchNorm2d(c_out, step_mode="m"),
                sj_lif(tau, v_threshold, surrogate),
            ]
            if (kh, kw) != (1, 1):
                blocks.append(pool_layer(kernel_size=(kh, kw), stride=(kh, kw), step_mode="m"))
            c_in = c_out
        if max(out_h, out_w) > MAX_SIDE:  # inputs too large even for pooling by 4 everywhere
            blocks.append(layer.AdaptiveAvgPool2d((min(out_h, MAX_SIDE), min(out_w, MAX_SIDE)), step_mode="m"))
            out_h, out_w = min(out_h, MAX_SIDE), min(out_w, MAX_SIDE)
        self.features = nn.Sequential(*blocks)
        self.feature_shape = (c_in, out_h, out_w)
        self.flatten = layer.Flatten(step_mode="m")
        self.fc = layer.Linear(math.prod(self.feature_shape), hidden, step_mode="m")
        self.fc_lif = sj_lif(tau, v_threshold, surrogate)
        if dropout > 0:
            self.fc_dropout = layer.Dropout(dropout, step_mode="m")
        else:
            self.fc_dropout = nn.Identity()
        self.head = layer.Linear(hidden, n_classes, step_mode="m")  # registered last: the engine's dense output
        self.default_engine_options: dict = {}  # no exclusions or chains beyond the engine's defaults
        self.finish()

    def run(self, x):
        h = self.flatten(self.features(x))
        return self.head(self.fc_dropout(self.fc_lif(self.fc(h))))


@register_model(
    "snn-cnn", description="Spiking VGG-style CNN: [Conv3x3 -> BN -> LIF -> pool] blocks -> Linear -> LIF -> Linear readout (SpikingJelly)"
)
def snn_cnn(
    input_shape,
    n_classes,
    time_steps,
    *,
    channels=None,
    hidden=DEFAULT_HIDDEN,
    tau=2.0,
    v_threshold=1.0,
    surrogate="atan",
    pool="max",
    dropout=0.0,
    neuron_backend="auto",
):
    """Spiking CNN for (C, H, W) inputs.

    Options: ``channels`` (list of conv widths; default [32, 64], or
    [32, 64, 128] from 32x32 up), ``hidden`` (width of the Linear -> LIF
    layer, default 256), ``tau``, ``v_threshold``, ``surrogate`` (as in
    ``snn-mlp``), ``pool`` ("max" or "avg"), ``dropout`` (after the hidden
    LIF), ``neuron_backend`` (see :func:`chsnn.models.neuron_backend`).
    """
    if len(input_shape) != 3:
        raise ValueError(f"snn-cnn needs input_shape (channels, height, width), got {tuple(input_shape)}")
    channels = default_channels(input_shape) if channels is None else check_int_list("channels", channels)
    hidden = check_positive_int("hidden", hidden)
    tau, v_threshold, surrogate, dropout = check_neuron_options(tau, v_threshold, surrogate, dropout)
    pool = check_choice("pool", pool, POOLS)
    neuron_backend = check_neuron_backend(neuron_backend)
    model = SpikingCNN(input_shape, n_classes, time_steps, channels, hidden, tau, v_threshold, surrogate, pool, dropout, neuron_backend)
    model.options = dict(
        channels=channels,
        hidden=hidden,
        tau=tau,
        v_threshold=v_threshold,
        surrogate=surrogate,
        pool=pool,
        dropout=dropout,
        neuron_backend=neuron_backend,
    )
    return model
