"""``spikformer``: SpikingJelly 2's Spikformer under our forward convention.

The network is SpikingJelly's
:class:`spikingjelly.activation_based.model.spikformer.Spikformer` (built by
SpikingJelly, its own init and forward); the model adopts its three children
``patch_embed``, ``blocks`` and ``head`` so module names are SpikingJelly's
(``blocks.0.attn.qkv_conv_bn.0`` ...). Input ``(T, N, C, H, W)``; the forward
resets every neuron (:func:`chsnn.contracts.reset_network`) at the start and
the end and returns the time mean of SpikingJelly's ``(T, N, n_classes)``
output.

Patch stem: SpikingJelly supports ``patch_size`` 4 (the last two of its four
conv stages pool by 2) and 16 (all four pool). ``patch_size=None`` picks 4
for inputs smaller than 64 on a side (32x32 CIFAR: 8x8 = 64 tokens) and 16
from 64 up (128x128 event frames, DVS128 Gesture / CIFAR10-DVS: 8x8 tokens;
64x64: 4x4). The stem's pools are ``MaxPool2d(3, stride 2, padding 1)``, so
each side becomes ``ceil(side / 2)`` per pool and any size works.

Layers of one block ``i`` (all 1x1 ``nn.Conv1d`` with ``groups=1``, which the
sparse engine reads as ``(n_out, n_in)`` linear maps):

* ``blocks.i.attn.qkv_conv_bn.0``: fused q/k/v, weight ``(3 D, D, 1)``;
* ``blocks.i.attn.proj_conv_bn.0``: attention projection ``(D, D, 1)``;
* ``blocks.i.mlp.fc1.0`` ``(int(D * mlp_ratio), D, 1)`` and ``blocks.i.mlp.fc2.0``.

(In a single-process model the q/k/v layer is a plain ``nn.Conv1d``;
SpikingJelly swaps in its ``_HeadShardQKVConv1d`` only under tensor
parallelism.)

q/k/v row layout (``head_groups``). ``SpikingSelfAttention.forward`` reshapes
the q/k/v output ``(T, N, 3 D, L)`` to ``(T, N, 3, num_heads, head_dim, L)``
and ``_ssa_kernel_torch`` splits ``qkv.flatten(2, 3).chunk(3, dim=2)`` into
q, k, v; so output row ``r = s * D + h * head_dim + j`` is element ``j`` of
head ``h`` of ``s`` = 0 (q), 1 (k), 2 (v): all q rows first (head by head),
then all k rows, then all v rows. SpikingJelly's tensor-parallel code uses
the same layout (``_HeadShardQKVConv1d.output_indices`` takes rows
``offset + start .. offset + end`` for ``offset`` in ``0, D, 2 D``).
``head_groups[name]`` lists the ``3 * num_heads`` groups in the order
q head 0 .. q head H-1, k head 0 .., v head 0 ..; group ``s * H + h`` is
``range(s * D + h * head_dim, s * D + (h + 1) * head_dim)``.

``default_engine_options``: ``exclude`` the conv stem and positional
encoding (``patch_embed.*``), so only the q/k/v, projection and MLP layers
are sparse (the classifier ``head`` is the engine's dense output layer), and
``chain`` removal only inside each MLP (``fc1 -> fc2``; the attention and
the residual paths are not chains).
"""

from __future__ import annotations

from chsnn.models.base import SpikingJellyModel, check_positive_int, check_real
from chsnn.models.registry import register_model

PATCH_SIZES = (4, 16)


def auto_patch_size(input_shape) -> int:
    return 4 if min(input_shape[1:]) < 64 else 16


class SpikformerModel(SpikingJellyModel):
    """SpikingJelly's Spikformer: modules ``patch_embed``, ``blocks`` and the
    readout ``head``, plus ``head_groups`` and ``default_engine_options``
    (see the module docstring)."""

    def __init__(self, input_shape, n_classes, time_steps, embed_dims, num_heads, depths, mlp_ratio, patch_size):
        super().__init__(input_shape, n_classes, time_steps, "auto")
        from spikingjelly.activation_based.model.spikformer import Spikformer

        c, h, w = self.input_shape
        net = Spikformer(
            T=time_steps or 1,  # unused: the forward always gets (T, N, C, H, W)
            in_channels=c,
            img_size_h=h,
            img_size_w=w,
            patch_size=patch_size,
            num_classes=n_classes,
            embed_dims=embed_dims,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            depths=depths,
        )
        self._forward_features = type(net).forward_features  # SpikingJelly's, run on our adopted children
        for name, child in net.named_children():  # patch_embed, blocks, head (head last: the dense output)
            self.add_module(name, child)
        self.embed_dims, self.num_heads, self.depths, self.patch_size = embed_dims, num_heads, depths, patch_size
        self.head_dim = embed_dims // num_heads
        self.grid_size = tuple(self.patch_embed.grid_size)
        self.head_groups = {f"blocks.{i}.attn.qkv_conv_bn.0": qkv_head_groups(embed_dims, num_heads) for i in range(depths)}
        self.default_engine_options = {
            "exclude": ["patch_embed.*"],
            "chain": [[f"blocks.{i}.mlp.fc1.0", f"blocks.{i}.mlp.fc2.0"] for i in range(depths)],
        }
        self.finish()

    def run(self, x):
        return self.head(self._forward_features(self, x))  # (T, N, n_classes)


def qkv_head_groups(dim: int, num_heads: int) -> list[list[int]]:
    """Row groups of a fused q/k/v layer: ``3 * num_heads`` lists of
    ``dim // num_heads`` rows, q heads first, then k, then v."""
    head_dim = dim // num_heads
    return [list(range(s * dim + h * head_dim, s * dim + (h + 1) * head_dim)) for s in range(3) for h in range(num_heads)]


@register_model(
    "spikformer",
    description="Spikformer (SpikingJelly 2): spiking conv patch stem -> [spiking self-attention + MLP] blocks -> Linear readout",
)
def spikformer(input_shape, n_classes, time_steps, *, embed_dims=256, num_heads=8, depths=2, mlp_ratio=4.0, patch_size=None):
    """Spikformer for (C, H, W) inputs (input ``(T, N, C, H, W)``).

    Options: ``embed_dims`` (token width D, default 256; a multiple of
    ``num_heads`` and at least 8, the stem's first stage has D // 8
    channels), ``num_heads`` (8), ``depths`` (number of blocks, 2),
    ``mlp_ratio`` (MLP hidden width ``int(D * mlp_ratio)``, 4.0),
    ``patch_size`` (4 or 16; None picks 4 below 64x64 inputs, else 16).
    """
    if len(input_shape) != 3:
        raise ValueError(f"spikformer needs input_shape (channels, height, width), got {tuple(input_shape)}")
    embed_dims = check_positive_int("embed_dims", embed_dims)
    num_heads = check_positive_int("num_heads", num_heads)
    depths = check_positive_int("depths", depths)
    mlp_ratio = check_real("mlp_ratio", mlp_ratio, low=0.0)
    if embed_dims < 8:
        raise ValueError(
            f"option embed_dims must be at least 8 (the patch stem's first stage has embed_dims // 8 channels), got {embed_dims}"
        )
    if embed_dims % num_heads:
        raise ValueError(f"option num_heads={num_heads} must divide embed_dims={embed_dims}")
    if int(embed_dims * mlp_ratio) < 1:
        raise ValueError(f"option mlp_ratio={mlp_ratio!r} leaves the MLP no hidden unit (int(embed_dims * mlp_ratio) = 0)")
    if patch_size is None:
        patch_size = auto_patch_size(input_shape)
    elif isinstance(patch_size, bool) or patch_size not in PATCH_SIZES:
        raise ValueError(f"option patch_size={patch_size!r} is not allowed; choose None (auto) or one of: 4, 16")
    model = SpikformerModel(input_shape, n_classes, time_steps, embed_dims, num_heads, depths, mlp_ratio, int(patch_size))
    model.options = dict(embed_dims=embed_dims, num_heads=num_heads, depths=depths, mlp_ratio=mlp_ratio, patch_size=int(patch_size))
    return model
