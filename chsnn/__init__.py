"""chsnn: Cannistraci-Hebb dynamic sparse training for spiking and ordinary
neural networks in PyTorch."""

from chsnn.linkpred import METHODS, MODELS, ch_scores, ch_scores_batched, count_l3_paths

__version__ = "0.1.0"

__all__ = ["MODELS", "METHODS", "ch_scores", "ch_scores_batched", "count_l3_paths", "__version__"]
