"""The model zoo: spiking networks by name.

    from chsnn.models import build_model, MODELS

    model = build_model("snn-mlp", input_shape=(2, 24, 24), n_classes=10, time_steps=8)
    logits = model(x)          # x: (T, N, 2, 24, 24) -> logits (N, 10)

Spiking models take time-major input ``(T, N, *input_shape)``, reset their
neuron states at the start of every forward and return the output layer's
outputs averaged over the ``T`` steps (the readout is a plain linear layer, so
the logits are its mean input current). ``model.forward_steps(x)`` gives the
per-step outputs ``(T, N, n_classes)``. Non-spiking models (``mlp``,
``vgg16``) take ``(N, *input_shape)`` and return logits ``(N, n_classes)``.

Every model has ``spiking``, ``time_steps``, ``input_shape``, ``n_classes``,
``model_name`` and ``options``, plus ``default_engine_options`` (a dict the
trainer merges under the user's sparse-engine options, e.g. spikformer's
``exclude``/``chain``; ``{}`` for most models) and ``head_groups`` (layer
name -> lists of output-row indices the engine keeps non-empty, e.g. one per
attention head and q/k/v; ``{}`` for most models). ``build_model`` sets both
to ``{}`` when a builder leaves them out. New models register with
:func:`register_model`.
"""

from chsnn.models import ann as _ann  # noqa: E402,F401

# Importing the model modules registers them.
from chsnn.models import cnn as _cnn  # noqa: E402,F401
from chsnn.models import mlp as _mlp  # noqa: E402,F401
from chsnn.models import spikformer as _spikformer  # noqa: E402,F401
from chsnn.models import vgg as _vgg  # noqa: E402,F401
from chsnn.models.base import SpikingJellyModel, SpikingModel, neuron_backend
from chsnn.models.registry import MODELS, build_model, model_defaults, register_model

__all__ = ["MODELS", "build_model", "register_model", "model_defaults", "neuron_backend", "SpikingModel", "SpikingJellyModel"]
