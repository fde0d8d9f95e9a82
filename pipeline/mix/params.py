"""The random choices of one mixed batch, and their check against the batch they are applied to.

`MixParams` is what the sampler draws and what a test writes by hand; `resolve_mix` checks it
against one batch and expands it to one row per sample, the form both backends consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

# Position in this tuple is the code the Triton kernel and the reference switch on.
MODES = ("none", "cutmix", "mixup", "cutout")
MODE_CODES = {name: code for code, name in enumerate(MODES)}

# Modes whose pixels come (partly) from a partner sample, and modes that use a box.
PARTNER_MODES = ("cutmix", "mixup")
BOX_MODES = ("cutmix", "cutout")

# How far a given cutmix lambda may sit from the box area before it is called inconsistent.
LAMBDA_TOLERANCE = 1e-5

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class MixParams:
    """The injectable randomness of one batch: which mode, which lambda, which box, which partner."""

    # One of MODES for the whole batch, or one per sample (timm's `elem` mode with switch_prob).
    mode: Union[str, Sequence[str]]
    # Weight of each sample's own label (and, for mixup, of its own pixels): a float for the
    # batch or a float tensor [B]. Cutmix: None means 1 - box_area / (H * W), the official
    # correction; a given value must equal it. Cutout and none: must be None or 1.
    lam: Union[float, Tensor, None] = None
    # (y1, y2, x1, x2), half-open, for the batch, or an integer tensor [B, 4]. Needed by cutmix
    # (pixels pasted from the partner) and cutout (pixels set to zero after normalization).
    boxes: Union[Box, Tensor, None] = None
    # Integer tensor [B]: sample i mixes with sample partner[i]. Needed by cutmix and mixup.
    partner: Union[Tensor, None] = None
    # Where the mixing happens: None for the image (apply_mix), or the name of a model layer whose
    # output is mixed (feature-level modes, pipeline.mix.feature); boxes are then on its grid.
    layer: Union[str, None] = None
    # Integer tensor [B, 4] or None: a Cutout hole cut in every image before the mode mixes them
    # (Cutout + Mixup); zeros after normalization, like the cutout mode.
    cutout_boxes: Union[Tensor, None] = None


@dataclass(frozen=True)
class ResolvedMix:
    """MixParams checked against one batch, one row per sample, on the CPU."""

    mode_codes: Tensor  # int64 [B], indices into MODES
    lam: Tensor  # float32 [B], weight of the own label (and own pixels in mixup)
    boxes: Tensor  # int64 [B, 4] (y1, y2, x1, x2); zeros where the mode has no box
    partner: Tensor  # int64 [B]; the sample itself where the mode has no partner

    def uniform_box(self, rows: Tensor) -> Union[Box, None]:
        """The box shared by all `rows` (per-batch mode), or None when they differ."""
        selected = self.boxes[rows]
        if len(selected) == 0 or not bool((selected == selected[0]).all()):
            return None
        return tuple(int(v) for v in selected[0])


def resolve_mix(params: MixParams, *, batch_size: int, height: int, width: int) -> ResolvedMix:
    """Check `params` against a batch of `batch_size` images of `height` x `width`.

    Raises ValueError naming the offending field (mode, lam, boxes, partner).
    """
    mode_codes = _resolve_modes(params.mode, batch_size=batch_size)
    uses_box = _rows_with(mode_codes, BOX_MODES)
    uses_partner = _rows_with(mode_codes, PARTNER_MODES)
    boxes = _resolve_boxes(params.boxes, needed=uses_box, batch_size=batch_size, height=height, width=width)
    partner = _resolve_partner(params.partner, needed=uses_partner, batch_size=batch_size)
    lam = _resolve_lam(params.lam, mode_codes=mode_codes, boxes=boxes, height=height, width=width)
    return ResolvedMix(mode_codes=mode_codes, lam=lam, boxes=boxes, partner=partner)


def box_lambda(boxes: Tensor, *, height: int, width: int) -> Tensor:
    """1 - box area / image area for integer boxes [N, 4] (y1, y2, x1, x2): the official lambda."""
    boxes = boxes.to(torch.float64)
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return 1.0 - area / float(height * width)


def _rows_with(mode_codes: Tensor, names: Sequence[str]) -> Tensor:
    wanted = torch.tensor([MODE_CODES[name] for name in names])
    return torch.isin(mode_codes, wanted)


def _resolve_modes(mode, *, batch_size: int) -> Tensor:
    names = [mode] * batch_size if isinstance(mode, str) else list(mode)
    if len(names) != batch_size:
        raise ValueError(f"mode: got {len(names)} per-sample modes for a batch of {batch_size}")
    unknown = sorted({str(name) for name in names if name not in MODE_CODES})
    if unknown:
        raise ValueError(f"mode: unknown {unknown}; expected one of {list(MODES)}")
    return torch.tensor([MODE_CODES[name] for name in names], dtype=torch.int64)


def _resolve_boxes(boxes, *, needed: Tensor, batch_size: int, height: int, width: int) -> Tensor:
    if boxes is None:
        if bool(needed.any()):
            raise ValueError("boxes: required by the cutmix and cutout modes, got None")
        return torch.zeros(batch_size, 4, dtype=torch.int64)
    boxes = torch.as_tensor(boxes).cpu()
    if boxes.dtype.is_floating_point or boxes.dtype == torch.bool:
        raise ValueError(f"boxes: must be integers (y1, y2, x1, x2), got dtype {boxes.dtype}")
    if boxes.shape == (4,):
        boxes = boxes.expand(batch_size, 4)
    if boxes.shape != (batch_size, 4):
        raise ValueError(f"boxes: expected shape (4,) or ({batch_size}, 4), got {tuple(boxes.shape)}")
    boxes = torch.where(needed[:, None], boxes.to(torch.int64), 0)
    y1, y2, x1, x2 = boxes.unbind(1)
    bad = ~((0 <= y1) & (y1 <= y2) & (y2 <= height) & (0 <= x1) & (x1 <= x2) & (x2 <= width))
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"boxes: row {row} (y1, y2, x1, x2) = {tuple(boxes[row].tolist())} is outside the "
            f"{height}x{width} image; need 0 <= y1 <= y2 <= {height} and 0 <= x1 <= x2 <= {width}"
        )
    return boxes.contiguous()


def _resolve_partner(partner, *, needed: Tensor, batch_size: int) -> Tensor:
    own = torch.arange(batch_size, dtype=torch.int64)
    if partner is None:
        if bool(needed.any()):
            raise ValueError("partner: required by the cutmix and mixup modes, got None")
        return own
    partner = torch.as_tensor(partner).cpu()
    if partner.dtype.is_floating_point or partner.dtype == torch.bool:
        raise ValueError(f"partner: must be an integer tensor, got dtype {partner.dtype}")
    if partner.shape != (batch_size,):
        raise ValueError(f"partner: expected shape ({batch_size},), got {tuple(partner.shape)}")
    partner = partner.to(torch.int64)
    if bool(((partner < 0) | (partner >= batch_size)).any()):
        raise ValueError(f"partner: indices must lie in [0, {batch_size}), got {partner.tolist()}")
    # Rows that take nothing from a partner read only themselves (keeps the kernel's reads exact).
    return torch.where(needed, partner, own).contiguous()


def _resolve_lam(lam, *, mode_codes: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    batch_size = len(mode_codes)
    area_lam = box_lambda(boxes, height=height, width=width)
    given = None if lam is None else _lam_tensor(lam, batch_size=batch_size)
    resolved = torch.ones(batch_size, dtype=torch.float64)
    is_cutmix = mode_codes == MODE_CODES["cutmix"]
    is_mixup = mode_codes == MODE_CODES["mixup"]
    if bool(is_mixup.any()):
        if given is None:
            raise ValueError("lam: required by the mixup mode, got None")
        resolved = torch.where(is_mixup, given, resolved)
    if given is not None:
        mismatch = is_cutmix & ((given - area_lam).abs() > LAMBDA_TOLERANCE)
        if bool(mismatch.any()):
            row = int(mismatch.nonzero()[0])
            raise ValueError(
                f"lam: row {row} is {float(given[row]):.6f} but its cutmix box leaves "
                f"{float(area_lam[row]):.6f} of the image; pass lam=None to use the box area"
            )
        fixed = ~(is_cutmix | is_mixup) & ((given - 1.0).abs() > LAMBDA_TOLERANCE)
        if bool(fixed.any()):
            row = int(fixed.nonzero()[0])
            raise ValueError(f"lam: row {row} is {float(given[row]):.6f}; cutout and none keep the label (lam=1)")
    resolved = torch.where(is_cutmix, area_lam, resolved)
    return resolved.to(torch.float32).contiguous()


def _lam_tensor(lam, *, batch_size: int) -> Tensor:
    lam = torch.as_tensor(lam, dtype=torch.float64).cpu()
    if lam.ndim == 0:
        lam = lam.expand(batch_size)
    if lam.shape != (batch_size,):
        raise ValueError(f"lam: expected a float or shape ({batch_size},), got {tuple(lam.shape)}")
    if not bool(((lam >= 0) & (lam <= 1)).all()):
        raise ValueError(f"lam: values must lie in [0, 1], got {lam.tolist()}")
    return lam
