"""uint8 NHWC -> normalized float NCHW on the batch's device, for the backends that do not
normalize inside their own graph (torch, synthetic) when ``normalize=True`` is asked for."""

from __future__ import annotations

import torch

from .augment import IMAGENET_MEAN, IMAGENET_STD


def to_normalized_nchw(images: torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` with ImageNet statistics, as float32 NCHW."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC images with 3 channels, got {images.dtype} {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() - mean) / std
