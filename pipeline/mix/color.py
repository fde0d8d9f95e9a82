"""Per-image colour maps, applied by the mix step: each image's colour change is one affine map of
its own pixels, and every pixel read from an image (its own place, or a partner's read by CutMix
or Mixup) goes through that image's map before it is mixed and normalized. The Triton kernel does
this in the same launch as the mix (three byte loads per value instead of one, no extra pass
over the batch); the PyTorch reference colours the whole batch first.

A map table is float32 ``[B, MAP_COLUMNS]`` on the batch's device, in [0, 1] pixel units:

    y_c = gain * x_c + grey_gain * grey(x) + offset_c,    grey(x) = 0.299 r + 0.587 g + 0.114 b

(columns: gain, grey gain, offset r, g, b). ``pipeline/data/color.py`` builds it from the
recipe's ColorJitter and lighting draws, whose composition has exactly this form."""

from __future__ import annotations

import torch
from torch import Tensor

GREY = (0.299, 0.587, 0.114)  # the official code's Grayscale weights (ITU-R 601 luma)
GAIN, GREY_GAIN = 0, 1
OFFSET = slice(2, 5)
MAP_COLUMNS = 5


def identity_maps(batch_size: int, *, device: torch.device | str) -> Tensor:
    """The table of maps that change nothing (gain 1, the rest 0)."""
    maps = torch.zeros(batch_size, MAP_COLUMNS, device=device)
    maps[:, GAIN] = 1.0
    return maps


def check_maps(maps: Tensor, *, batch_size: int, channels: int, device: torch.device) -> None:
    """ValueError unless ``maps`` is a float32 [batch_size, MAP_COLUMNS] table on ``device`` for RGB images."""
    if not isinstance(maps, Tensor):
        raise ValueError(f"color: expected a tensor of colour maps, got {type(maps).__name__}")
    if maps.dtype != torch.float32 or maps.shape != (batch_size, MAP_COLUMNS):
        raise ValueError(f"color: expected float32 [{batch_size}, {MAP_COLUMNS}] (gain, grey gain, offset r, g, b "
                         f"per image), got {maps.dtype} {tuple(maps.shape)}")
    if maps.device != device:
        raise ValueError(f"color: on {maps.device}, but the images are on {device}")
    if channels != len(GREY):
        raise ValueError(f"color: colour maps are for RGB images (3 channels), got {channels} channels")


def maps_in_units(maps: Tensor, *, value_range: float) -> Tensor:
    """The table for pixels in [0, value_range] (uint8: 255): the map is linear but for its offset,
    which scales with the units. Contiguous, as the kernel indexes it."""
    if value_range == 1.0:
        return maps.contiguous()
    scaled = maps.clone(memory_format=torch.contiguous_format)
    scaled[:, OFFSET] *= value_range
    return scaled


def apply_maps(images: Tensor, maps: Tensor) -> Tensor:
    """float32 images [B, 3, H, W] (any strides, the units of ``maps``) -> each through its map,
    float32 in the same memory format. The grey weights are Python numbers: a constant tensor
    would be a host-to-device copy, which waits for the GPU."""
    x = images.float()
    batch = x.shape[0]
    grey = x[:, 0:1] * GREY[0] + x[:, 1:2] * GREY[1] + x[:, 2:3] * GREY[2]
    gain, grey_gain = (maps[:, column].view(batch, 1, 1, 1) for column in (GAIN, GREY_GAIN))
    return gain * x + grey_gain * grey + maps[:, OFFSET].reshape(batch, 3, 1, 1)
