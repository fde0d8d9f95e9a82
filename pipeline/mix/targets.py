"""Soft targets of a mixed batch: label-smoothed one-hots of a sample and its partner, weighted."""

from __future__ import annotations

import torch
from torch import Tensor

from . import staging
from .rows import ResolvedMix, device_lam, device_partner


def smoothing_values(*, num_classes: int, label_smoothing: float) -> tuple[float, float]:
    """(off, on) values of a smoothed one-hot, timm's convention: off = s/K, on = 1 - s + s/K."""
    off_value = label_smoothing / num_classes
    return off_value, 1.0 - label_smoothing + off_value


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on ``device`` without the host waiting for the GPU: a copy from
    pageable memory waits for the stream; this one goes through reused pinned memory (staging)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return staging.to_device(tensor.numpy(), device)
    return tensor.to(device)


def soft_targets(
    labels: Tensor, *, partner: Tensor, lam: Tensor, num_classes: int, label_smoothing: float
) -> Tensor:
    """float32 [B, K]: lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y[partner]))."""
    off_value, on_value = smoothing_values(num_classes=num_classes, label_smoothing=label_smoothing)
    labels = labels.to(torch.int64)
    own = torch.full((len(labels), num_classes), off_value, dtype=torch.float32, device=labels.device)
    own.scatter_(1, labels[:, None], on_value)
    lam = to_device(lam.to(torch.float32), labels.device)[:, None]
    return own * lam + own[to_device(partner, labels.device)] * (1.0 - lam)


def mix_targets(labels: Tensor, resolved: ResolvedMix, *, num_classes: int, label_smoothing: float) -> Tensor:
    """`soft_targets` of a resolved mix, from its rows on the labels' device (copied there once)."""
    rows = resolved.on_device(labels.device)
    return soft_targets(labels, partner=device_partner(rows), lam=device_lam(rows), num_classes=num_classes,
                        label_smoothing=label_smoothing)
