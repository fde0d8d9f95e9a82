"""Soft-target cross entropy: the loss that goes with `apply_mix`'s targets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_k targets[k] * log_softmax(logits)[k].

    With targets lam * onehot(y_a) + (1 - lam) * onehot(y_b) this equals the official CutMix loss
    lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b), because CE is linear in the target.
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"targets: expected the logits' shape [B, K] = {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    # Computed in float32 even under bf16 autocast: log_softmax over 1000 classes loses digits.
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()
