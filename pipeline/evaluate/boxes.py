"""Ground-truth boxes from a sample's ``.json`` to the evaluated image: the validation transform
(shorter side resized, centre crop) applied to the boxes, as the loaders apply it to the pixels.

``python -m shards build`` stores ``boxes`` ([x0, y0, x1, y1], wsolevaluation's inclusive pixel
convention) in the pixels of the stored image, whose size is ``stored_size`` ([width, height]).
A box is scaled with the image and shifted by the crop, then clipped to the crop; a box wholly
outside the crop is dropped (and counted by the caller)."""

from __future__ import annotations

import numpy as np

from ..data import Augmentation
from ..data.host_resize import shorter_side_size


def val_geometry(width: int, height: int, *, augmentation: Augmentation) -> tuple[float, float, int, int]:
    """(scale_x, scale_y, left, top) of the validation transform of a ``width`` x ``height`` image:
    a source pixel coordinate x maps to ``x * scale_x - left`` in the evaluated image. The sizes
    and offsets are the loaders' own (``host_resize.shorter_side_size``: truncated longer side, as
    torchvision's Resize; the crop's corner at round((side - crop) / 2), as its CenterCrop)."""
    size = augmentation.image_size
    if augmentation.kind == "cifar":  # no resize: a centre crop (zero-padded when the image is smaller)
        new_height, new_width = height, width
    else:
        new_height, new_width = shorter_side_size(height, width, shorter=augmentation.val_resize)
    top, left = round((new_height - size) / 2), round((new_width - size) / 2)
    return new_width / width, new_height / height, left, top


def transform_boxes(record: dict, *, augmentation: Augmentation) -> tuple[np.ndarray, int]:
    """The boxes of one sample's ``.json`` record in evaluated-image pixels (float64 [m, 4], clipped
    to [0, image_size - 1]) and how many of its boxes fell wholly outside the crop (dropped). A
    record without ``boxes`` gives an empty array and 0."""
    boxes = np.asarray(record.get("boxes", []), dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return boxes, 0
    width, height = record.get("stored_size") or (record["width"], record["height"])
    scale_x, scale_y, left, top = val_geometry(int(width), int(height), augmentation=augmentation)
    moved = boxes * np.array([scale_x, scale_y, scale_x, scale_y]) - np.array([left, top, left, top])
    last = augmentation.image_size - 1
    inside = (moved[:, 2] >= 0) & (moved[:, 3] >= 0) & (moved[:, 0] <= last) & (moved[:, 1] <= last)
    return np.clip(moved[inside], 0, last), int((~inside).sum())
