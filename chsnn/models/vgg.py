"""``vgg16`` (ANN) and ``snn-vgg16`` (spiking): VGG16 with batch norm.

    [Conv3x3(pad 1, no bias) -> BatchNorm -> ReLU | LIF] per number, MaxPool(2) per "M"
    64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M
    -> (AdaptiveAvgPool 1x1) -> Flatten -> Linear(512 * width, n_classes)

Sized for 32x32 inputs (CIFAR): five poolings leave a 1x1 map and the
classifier is one ``Linear(512, n_classes)``. Larger inputs get an adaptive
average pooling to 1x1 before the classifier; a side that is already 1 is not
pooled (so inputs down to 1x1 work). ``width`` scales every conv's channels
(``max(1, round(c * width))``), e.g. ``width=0.125`` for CPU smoke tests. All
convs have ``groups=1``, so the sparse engine reads them as CHT-Conv kernel
masks; the classifier is the dense output layer.

``vgg16`` takes ``(N, C, H, W)``. ``snn-vgg16`` uses SpikingJelly multi-step
layers and LIF neurons and follows the spiking forward convention of
:mod:`chsnn.models.base` (input ``(T, N, C, H, W)``, states reset, logits the
time mean of the readout). In training mode batch norm needs more than one
value per channel, so the ANN needs ``N >= 2`` once the map is 1x1.
"""

from __future__ import annotations

from torch import nn

from chsnn.models.ann import AnnModel, check_width
from chsnn.models.base import SpikingJellyModel, check_neuron_backend, check_neuron_options, sj_lif
from chsnn.models.registry import register_model

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_plan(input_shape, width: float, config=VGG16):
    """Channels per conv and the pooling kernel per "M", and the final map side.

    Returns ``(items, channels_out, (h, w))`` where ``items`` lists
    ``("conv", c_out)`` and ``("pool", (kh, kw))`` (pools with ``(1, 1)`` are
    dropped)."""
    if len(input_shape) != 3:
        raise ValueError(f"VGG needs input_shape (channels, height, width), got {tuple(input_shape)}")
    _, h, w = input_shape
    items, c = [], None
    for v in config:
        if v == "M":
            kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            if (kh, kw) != (1, 1):
                items.append(("pool", (kh, kw)))
            h, w = h // kh, w // kw
        else:
            c = max(1, round(v * width))
            items.append(("conv", c))
    return items, c, (h, w)


class VGG(AnnModel):
    """Modules: ``features`` (conv/BN/ReLU/pool), ``pool`` (adaptive average
    pooling to 1x1, or identity for 32x32 inputs), ``flatten`` and the output
    layer ``head``."""

    def __init__(self, input_shape, n_classes, width: float):
        super().__init__(input_shape, n_classes)
        items, c_last, side = vgg_plan(self.input_shape, width)
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for kind, value in items:
            if kind == "conv":
                layers += [nn.Conv2d(c_in, value, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(value), nn.ReLU(inplace=True)]
                c_in = value
            else:
                layers.append(nn.MaxPool2d(kernel_size=value, stride=value))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if side != (1, 1) else nn.Identity()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_last, n_classes)
        self.feature_shape = (c_last, *side)

    def run(self, x):
        return self.head(self.flatten(self.pool(self.features(x))))


class SpikingVGG(SpikingJellyModel):
    """Multi-step SpikingJelly VGG16: ``features`` (Conv/BN/LIF/pool),
    ``pool``, ``flatten`` and the readout ``head``."""

    def __init__(self, input_shape, n_classes, time_steps, width, tau, v_threshold, surrogate, neuron_backend="auto"):
        super().__init__(input_shape, n_classes, time_steps, neuron_backend)
        from spikingjelly.activation_based import layer

        items, c_last, side = vgg_plan(self.input_shape, width)
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for kind, value in items:
            if kind == "conv":
                layers += [
                    layer.Conv2d(c_in, value, kernel_size=3, padding=1, bias=False, step_mode="m"),
                    layer.BatchNorm2d(value, step_mode="m"),
                    sj_lif(tau, v_threshold, surrogate),
                ]
                c_in = value
            else:
                layers.append(layer.MaxPool2d(kernel_size=value, stride=value, step_mode="m"))
        self.features = nn.Sequential(*layers)
        self.pool = layer.AdaptiveAvgPool2d(1, step_mode="m") if side != (1, 1) else nn.Identity()
        self.flatten = layer.Flatten(step_mode="m")
        self.head = layer.Linear(c_last, n_classes, step_mode="m")  # registered last: the dense output
        self.feature_shape = (c_last, *side)
        self.default_engine_options: dict = {}
        self.finish()

    def run(self, x):
        return self.head(self.flatten(self.pool(self.features(x))))


@register_model(
    "vgg16", spiking=False, description="ANN VGG16 with batch norm (3x3 convs, 5 max pools) -> Linear classifier; channels scaled by width"
)
def vgg16(input_shape, n_classes, time_steps, *, width=1.0):
    """Non-spiking VGG16-BN for (C, H, W) inputs (input ``(N, C, H, W)``).

    Options: ``width`` (> 0, default 1.0): channel multiplier.
    """
    if len(input_shape) != 3:
        raise ValueError(f"vgg16 needs input_shape (channels, height, width), got {tuple(input_shape)}")
    width = check_width(width)
    model = VGG(input_shape, n_classes, width)
    model.options = dict(width=width)
    return model


@register_model(
    "snn-vgg16",
    description="Spiking VGG16: [Conv3x3 -> BN -> LIF] x 13 with 5 max pools -> Linear readout (SpikingJelly); channels scaled by width",
)
def snn_vgg16(input_shape, n_classes, time_steps, *, width=1.0, tau=2.0, v_threshold=1.0, surrogate="atan", neuron_backend="auto"):
    """Spiking VGG16-BN for (C, H, W) inputs (input ``(T, N, C, H, W)``).

    Options: ``width`` (> 0, default 1.0): channel multiplier; ``tau``,
    ``v_threshold``, ``surrogate`` and ``neuron_backend`` as in ``snn-cnn``.
    """
    if len(input_shape) != 3:
        raise ValueError(f"snn-vgg16 needs input_shape (channels, height, width), got {tuple(input_shape)}")
    width = check_width(width)
    tau, v_threshold, surrogate, _ = check_neuron_options(tau, v_threshold, surrogate, 0.0)
    neuron_backend = check_neuron_backend(neuron_backend)
    model = SpikingVGG(input_shape, n_classes, time_steps, width, tau, v_threshold, surrogate, neuron_backend)
    model.options = dict(width=width, tau=tau, v_threshold=v_threshold, surrogate=surrogate, neuron_backend=neuron_backend)
    return model
