"""In-between-class samples: two validation images of different classes blended by Mixup or
pasted by CutMix at fixed weights, and how often the model's top predictions name the two classes.

Pairs are formed inside each batch (row j with row ``partner[j]``), so no rank needs another
rank's images; ``valid`` drops the pairs with a padding row or two images of the same class.
"""

from __future__ import annotations

import math

import torch

from .classify import top_classes

# Weight of image A (and of its label), from "all B" to "all A".
LAMBDAS = tuple(step / 10 for step in range(11))

# (top, left, box_h, box_w) in pixels; rows top .. top + box_h - 1, columns left .. left + box_w - 1.
Box = tuple[int, int, int, int]


def partner_order(batch_size: int, seed: int) -> torch.Tensor:
    """int64 [batch_size] on the CPU: row j is paired with row partner[j]. A seeded random single
    cycle through the batch, so no row is its own partner (batch_size >= 2) and the pairing is
    the same for every batch and rank."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    cycle = torch.randperm(batch_size, generator=generator)
    partner = torch.empty(batch_size, dtype=torch.int64)
    partner[cycle] = cycle.roll(-1)
    return partner


def mixup_pair(a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """lam * a + (1 - lam) * b (pixels of normalized images, any shape and device)."""
    return lam * a + (1 - lam) * b


def cutmix_box(lam: float, height: int, width: int, generator: torch.Generator) -> Box:
    """A box for CutMix at weight ``lam`` of image A: (top, left, box_h, box_w), placed uniformly
    at random fully inside the image by ``generator`` (a CPU torch.Generator).

    Its shape follows the image's: box_h is floor or ceil of sqrt(1 - lam) * height and box_w an
    integer nearest box_h * width / height (either one on a half); of these boxes the one whose
    area is nearest (1 - lam) * height * width is taken, the smallest (box_h, box_w) on a tie.
    Square images get square boxes. ``box_lambda`` gives the weight the box actually realizes."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: must lie in [0, 1], got {lam}")
    if height < 1 or width < 1:
        raise ValueError(f"height, width: must be >= 1, got {height} x {width}")
    target = (1.0 - lam) * height * width
    low = math.floor(math.sqrt(1.0 - lam) * height)
    # Integer test for "box_w is a nearest integer to box_h * width / height" (both on a half).
    candidates = [(abs(box_h * box_w - target), box_h, box_w)
                  for box_h in {min(low, height), min(low + 1, height)}
                  for box_w in {box_h * width // height, box_h * width // height + 1}
                  if box_w <= width and 2 * abs(box_w * height - box_h * width) <= height]
    _, box_h, box_w = min(candidates)
    # CPU generator and CPU tensors: reading the draw back waits on nothing.
    top = int(torch.randint(0, height - box_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - box_w + 1, (), generator=generator))
    return top, left, box_h, box_w


def cutmix_pair(a: torch.Tensor, b: torch.Tensor, box: Box) -> torch.Tensor:
    """A new tensor: ``a`` (..., H, W) with ``b``'s pixels inside ``box``; memory format kept."""
    top, left, box_h, box_w = box
    inside = (..., slice(top, top + box_h), slice(left, left + box_w))
    out = a.clone(memory_format=torch.preserve_format)
    out[inside] = b[inside]
    return out


def box_lambda(box: Box, height: int, width: int) -> float:
    """The exact weight of image A under ``box``: 1 - box area / image area."""
    _, _, box_h, box_w = box
    return 1.0 - box_h * box_w / (height * width)


def inbetween_counts(logits: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                     weight_a: float | torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """int64 [3] over the rows where ``valid``: (top-1 errors against the label of larger weight,
    rows whose top-2 predictions are exactly {label_a, label_b} in either order, rows counted).

    The larger-weight label is label_a where weight_a >= 0.5, so at an exact 0.5 it is label_a.
    ``weight_a`` is a float or a float tensor [B]. Masks, not boolean indexing (no device sync)."""
    top2 = top_classes(logits, 2)
    # A float is decided here: copying it to the device would wait for the device.
    if isinstance(weight_a, torch.Tensor):
        target = torch.where(weight_a >= 0.5, label_a, label_b)
    else:
        target = label_a if weight_a >= 0.5 else label_b
    errors = (top2[:, 0] != target) & valid
    pair = (((top2[:, 0] == label_a) & (top2[:, 1] == label_b)) | ((top2[:, 0] == label_b) & (top2[:, 1] == label_a)))
    return torch.stack([errors.sum(), (pair & valid).sum(), valid.sum()]).to(torch.int64)
