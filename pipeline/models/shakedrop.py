"""ShakeDrop (Yamada, Iwamura, Akiba, Kise, "ShakeDrop Regularization for Deep Residual Learning",
IEEE Access 2019): a residual branch F(x) is multiplied by

    b + alpha - b*alpha   in the forward pass  (alpha ~ U[-1, 1])
    b + beta  - b*beta    in the backward pass (beta  ~ U[0, 1])
    E[b + alpha - b*alpha] = 1 - p_drop   in evaluation (E[alpha] = 0)

with b ~ Bernoulli(1 - p_drop). b, alpha and beta are drawn per sample.
The authors' Torch code (imenurok/ShakeDrop, ShakeDrop.lua) draws one b per mini-batch and alpha,
beta per element ("pixel level"); per sample needs no host sync to branch on b and keeps the
randomness of one sample independent of the rest of the batch.

``shake_drop`` is the functional core with the draws given (tests replay them); ``ShakeDrop`` draws
them from torch's generator of the input's device: one ``torch.rand((3, N))``, rows (b, alpha, beta).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _ShakeDropFunction(torch.autograd.Function):
    """``branch * forward_factor`` whose gradient is ``grad * backward_factor``."""

    @staticmethod
    def forward(ctx, branch: Tensor, forward_factor: Tensor, backward_factor: Tensor) -> Tensor:
        ctx.save_for_backward(backward_factor)
        return branch * forward_factor

    @staticmethod
    def backward(ctx, grad: Tensor):
        (backward_factor,) = ctx.saved_tensors
        return grad * backward_factor, None, None


def shake_drop(branch: Tensor, *, keep: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """The training-time ShakeDrop of ``branch`` (N, ...) with the per-sample draws given: ``keep``
    (N,) bool, the Bernoulli b; ``alpha`` (N,) in [-1, 1]; ``beta`` (N,) in [0, 1]."""
    count = branch.shape[0]
    for name, draw in (("keep", keep), ("alpha", alpha), ("beta", beta)):
        if draw.shape != (count,):
            raise ValueError(f"shake_drop: {name} must have shape ({count},) (one per sample), got {tuple(draw.shape)}")
    shape = (count,) + (1,) * (branch.ndim - 1)
    # b + alpha - b*alpha is 1 where b = 1 and alpha where b = 0: selected, so that a kept branch
    # is multiplied by exactly 1 (the sum would round).
    forward_factor = torch.where(keep, 1.0, alpha).to(branch.dtype).view(shape)
    backward_factor = torch.where(keep, 1.0, beta).to(branch.dtype).view(shape)
    return _ShakeDropFunction.apply(branch, forward_factor, backward_factor)


class ShakeDrop(nn.Module):
    """ShakeDrop of a residual branch with drop probability ``drop_prob`` (PyramidNet: the linear
    rule over depth, ``drop_prob = l / L * 0.5`` for unit l of L).

    ``drop_prob`` is a persistent buffer: the evaluation scaling (1 - drop_prob) is part of the
    weights, so weights exported with ShakeDrop do not load silently into a model built without it
    (or with another rate): a strict load names the missing or unexpected keys."""

    def __init__(self, drop_prob: float):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"ShakeDrop: drop_prob must be in [0, 1], got {drop_prob}")
        self.register_buffer("drop_prob", torch.tensor(float(drop_prob)))

    def forward(self, branch: Tensor) -> Tensor:
        keep_prob = 1.0 - self.drop_prob
        if not self.training:
            return branch * keep_prob.to(branch.dtype)
        uniform = torch.rand((3, branch.shape[0]), device=branch.device)
        return shake_drop(branch, keep=uniform[0] < keep_prob, alpha=uniform[1] * 2.0 - 1.0, beta=uniform[2])
