"""FGSM (Goodfellow et al.): one signed-gradient step on the pixels, against the true label."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from ..mix.core import normalization_on
from .catalog import DEFAULT_EPSILON


def fgsm_pixels(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, *,
                epsilon: float = DEFAULT_EPSILON, mean: Sequence[float], std: Sequence[float],
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Adversarial pixels: clamp(pixels + epsilon * sign(d CE / d pixels), 0, 1) for float
    ``pixels`` [B, C, H, W] in [0, 1], the gradient taken through the normalization by
    ``mean``/``std`` (as ``normalize_batch``) and the model run under ``autocast()``.

    The loss is summed over the rows with label >= 0, so rows are independent and the padding
    rows (label -1) come back unchanged. ``model`` must be in eval mode (batch statistics would
    couple the rows); only the input's gradient is taken, so the parameters' ``.grad`` is left
    as it was."""
    if model.training:
        raise ValueError("model: must be in eval mode for FGSM (call model.eval() first)")
    if pixels.ndim != 4 or not pixels.dtype.is_floating_point:
        raise ValueError(f"pixels: expected float [B, C, H, W] in [0, 1], got {pixels.dtype} {tuple(pixels.shape)}")
    # Made on the device once per (device, mean, std): a copy per batch would make the host wait.
    scale, shift = normalization_on(pixels.device, mean=mean, std=std, from_uint8=False)
    scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
    valid = labels >= 0
    with torch.enable_grad():
        leaf = pixels.detach().requires_grad_(True)
        with autocast():
            logits = model(leaf * scale + shift)
        losses = torch.nn.functional.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
        (grad,) = torch.autograd.grad(torch.where(valid, losses, 0.0).sum(), [leaf])
    stepped = (pixels + epsilon * grad.sign()).clamp(0.0, 1.0)
    # The padding rows' gradient is already zero; the mask keeps them exact whatever the model does.
    return torch.where(valid.view(-1, 1, 1, 1), stepped, pixels)
