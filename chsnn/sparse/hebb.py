"""Hebb-SET: a Hebbian term added to the gradient step on active links.

``dw[i, j] = lambda(t) * a_pre[j] * (a_post[i] - mean(a_post[i]))`` (CH-SPEC
section 6), with ``a`` the batch-mean activations (spike rates for SNNs),
``mean`` an exponential average over about ``window`` recent steps and
``lambda(t) = lr * decay**t``. It needs the activations of every training
step, so it attaches forward hooks to the sparse linear layers while enabled.
"""

from __future__ import annotations

import torch

from chsnn.sparse.masking import mask_of
from chsnn.sparse.targets import LINEAR, SparseTarget


def _feature_mean(target: SparseTarget, x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.dim() >= 3 and isinstance(target.module, torch.nn.Conv2d):
        x = x.movedim(-3, -1)
    elif x.dim() >= 2 and isinstance(target.module, torch.nn.Conv1d):
        x = x.movedim(-2, -1)
    return x.reshape(-1, x.shape[-1]).to(torch.float64).mean(0)


class HebbRule:
    def __init__(
        self, targets: list[SparseTarget], successors: dict[str, SparseTarget], lr: float = 1e-3, decay: float = 0.999, window: int = 20
    ):
        self.targets = [t for t in targets if t.kind == LINEAR]
        self.successors = successors
        self.lr, self.decay, self.alpha = float(lr), float(decay), 2.0 / (int(window) + 1.0)
        self.pre: dict[str, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.mean_post: dict[str, torch.Tensor] = {}
        self.handles = []

    def attach(self) -> None:
        for t in self.targets:
            self.handles.append(t.module.register_forward_pre_hook(lambda m, a, t=t: self.pre.__setitem__(t.name, _feature_mean(t, a[0]))))
            self.handles.append(t.module.register_forward_hook(lambda m, a, y, t=t: self.out.__setitem__(t.name, _feature_mean(t, y))))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def apply(self, step: int) -> None:
        """Add the Hebbian term of the last forward to each active link."""
        rate = self.lr * self.decay**step
        for t in self.targets:
            if t.name not in self.pre:
                continue
            succ = self.successors.get(t.name)
            post = self.pre.get(succ.name) if succ is not None else None
            post = self.out[t.name] if post is None else post
            mean = self.mean_post.get(t.name, post)
            dw = rate * torch.outer(post - mean, self.pre[t.name])
            self.mean_post[t.name] = (1 - self.alpha) * mean + self.alpha * post
            w = t.weight
            w.add_((dw.to(w.dtype) * t.as_2d(mask_of(t))).view_as(w))
        self.pre.clear()
        self.out.clear()

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.mean_post.items()}

    def load_state_dict(self, state: dict, device) -> None:
        self.mean_post = {k: v.to(device) for k, v in state.items()}
