"""The last geometric step of the DALI *CPU* backend, done in torch: resize each decoded crop to
``image_size`` (train, then the flip DALI drew) or the shorter side to ``val_resize`` and a centre
crop (val). Why not DALI's ``fn.resize``: on the CPU it costs about 0.8 ms per crop against
0.43 ms for Pillow and 0.15 ms for torch's uint8 antialiased bilinear kernel (one thread,
``python bench/bench_augment.py``); with it the all-DALI CPU graph was no faster than Pillow.
Torch's filter is Pillow's (within one grey level), so both backends resample alike. The GPU
path keeps DALI's resize, which is fast there."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import Augmentation


def resize_bilinear(image: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize (Pillow's and torchvision's filter) of one uint8 HWC image."""
    # A permuted HWC tensor is channels-last NCHW: torch's fast uint8 path, no float copy.
    resized = F.interpolate(image.permute(2, 0, 1)[None], size=(height, width), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0)


def shorter_side_size(height: int, width: int, *, shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``shorter`` and the aspect ratio kept; the longer
    side is truncated as torchvision's ``Resize`` does, so both backends cut the same window."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def finish_on_host(images, mirror: np.ndarray | None, *, training: bool, augmentation: Augmentation) -> torch.Tensor:
    """uint8 NHWC batch from DALI's decoded HWC images (a ``TensorListCPU`` or any sequence of
    arrays): train crops are resized to ``image_size`` and flipped where ``mirror`` is set; val
    images get the shorter side resized to ``val_resize`` and a centre crop."""
    size = augmentation.image_size
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8)
    for index in range(len(images)):
        # DALI keeps its output buffers until the next run: a view is enough, the resize copies.
        image = torch.from_numpy(np.asarray(images[index]))
        if training:
            resized = resize_bilinear(image, height=size, width=size)
            out[index] = resized.flip(1) if mirror is not None and mirror[index] else resized
        else:
            height, width = shorter_side_size(*image.shape[:2], shorter=augmentation.val_resize)
            resized = resize_bilinear(image, height=height, width=width)
            top, left = round((height - size) / 2), round((width - size) / 2)
            out[index] = resized[top:top + size, left:left + size]
    return out
