"""Occlusion robustness: a centred square hidden ("hole") or the only part left visible ("keep"),
set to 0 after normalization, which is the dataset's mean colour."""

from __future__ import annotations

import torch

MODES = ("hole", "keep")


def occlusion_sides(image_size: int, steps: int = 9) -> list[int]:
    """``steps`` integer square sides evenly spaced from 0 to ``image_size`` inclusive:
    round(i * image_size / (steps - 1)), halves rounded up (224 px, 9 steps: 0, 28, ..., 224)."""
    if image_size < 1:
        raise ValueError(f"image_size: must be >= 1, got {image_size}")
    if not 2 <= steps <= image_size + 1:
        raise ValueError(f"steps: need 2 <= steps <= image_size + 1 = {image_size + 1} distinct sides, got {steps}")
    # Integer arithmetic: no float rounding decides a side.
    return [(2 * i * image_size + steps - 1) // (2 * (steps - 1)) for i in range(steps)]


def occlude(inputs: torch.Tensor, side: int, *, mode: str) -> torch.Tensor:
    """A new tensor like ``inputs`` (normalized float [B, C, H, W], any device, memory format
    kept): "hole" zeroes the centred ``side`` x ``side`` square, "keep" zeroes everything outside
    it. The square's top-left pixel is ((H - side) // 2, (W - side) // 2), so for an odd margin
    the extra row/column of margin is below/right of the square. Side 0: "hole" leaves the image
    unchanged, "keep" zeroes all of it; side H = W: the reverse."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if inputs.ndim != 4:
        raise ValueError(f"inputs: expected [B, C, H, W], got shape {tuple(inputs.shape)}")
    height, width = inputs.shape[2], inputs.shape[3]
    if not 0 <= side <= min(height, width):
        raise ValueError(f"side: must lie in [0, {min(height, width)}] for {height}x{width} images, got {side}")
    top, left = (height - side) // 2, (width - side) // 2
    square = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
    # Slices with Python ints: no mask is built from device data, so nothing waits on the device.
    if mode == "hole":
        out = inputs.clone(memory_format=torch.preserve_format)
        out[square] = 0
    else:
        out = torch.zeros_like(inputs, memory_format=torch.preserve_format)
        out[square] = inputs[square]
    return out
