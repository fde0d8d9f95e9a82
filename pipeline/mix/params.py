"""The random choices of one mixed batch, and their check against the batch they are applied to.

`MixParams` is what the sampler draws and what a test writes by hand; `resolve_mix` checks it
against one batch and packs it into one row per sample (`rows.ResolvedMix`), the form both
backends consume. The checks run in numpy: a few vectorized operations per field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .rows import LAM_COLUMN, MODE_CODES, MODES, PARTNER_COLUMN, USES_BOX, USES_PARTNER, Box, ResolvedMix

# How far a given cutmix lambda may sit from the box area before it is called inconsistent.
LAMBDA_TOLERANCE = 1e-5

__all__ = ["MODES", "MODE_CODES", "MixParams", "ResolvedMix", "box_lambda", "drawn_params", "image_holes",
           "resolve_holes", "resolve_mix"]


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
    # A MixSampler draw carries its packed rows, and those of its Cutout holes (valid by
    # construction), which resolve_mix returns unchecked for the grid they were drawn on, and
    # resolve_holes with that draw's rows. Not arguments: hand-written params, and a draw changed
    # with dataclasses.replace, are checked; so is a draw whose tensors were changed in place (it
    # was used as drawn, unchecked, while its fields showed the change).
    _drawn: Optional[ResolvedMix] = field(default=None, init=False, repr=False, compare=False)
    _drawn_holes: Optional[ResolvedMix] = field(default=None, init=False, repr=False, compare=False)


def _as_drawn(params: MixParams) -> bool:
    """Whether `params` carries its draw's packed rows, its tensors as they were drawn: new tensors
    (version 0) that no in-place op has touched (each bumps the version counter, which views of a
    tensor share; writes through ``.numpy()`` or ``.data`` do not, and are not seen). About 0.3 us:
    issue 11 counts the host's time per step."""
    return params._drawn is not None and not (_version(params.lam) or _version(params.boxes)
                                              or _version(params.partner) or _version(params.cutout_boxes))


def _version(value) -> int:
    if not isinstance(value, Tensor):
        return 0
    # A draw made under torch.inference_mode: its tensors keep no counter (reading it raises), so
    # they are taken for changed and checked.
    return 1 if value.is_inference() else value._version


def drawn_params(resolved: ResolvedMix, *, holes: Optional[ResolvedMix] = None, **fields) -> MixParams:
    """MixParams(**fields) for a draw whose packed forms (`resolved`; `holes` of its
    cutout_boxes, if any) the sampler built itself."""
    params = MixParams(**fields)
    object.__setattr__(params, "_drawn", resolved)
    object.__setattr__(params, "_drawn_holes", holes)
    return params


def resolve_mix(params: MixParams, *, batch_size: int, height: int, width: int) -> ResolvedMix:
    """Check `params` against a batch of `batch_size` images of `height` x `width`; pack it.

    Raises ValueError naming the offending field (mode, lam, boxes, partner). `layer` and
    `cutout_boxes` are not part of it (the callers that mix layers or cut holes handle them).
    """
    drawn = params._drawn
    if not _as_drawn(params):
        return _resolve(params, batch_size=batch_size, height=height, width=width)
    if (len(drawn.rows), drawn.height, drawn.width) == (batch_size, height, width):
        return drawn
    try:
        return _resolve(params, batch_size=batch_size, height=height, width=width)
    except ValueError as error:  # what is wrong is the draw's shape, not the field that says so
        if params.layer is not None:  # drawn on the grid the sampler was told for that layer
            raise ValueError(f"params: drawn on a {drawn.height}x{drawn.width} grid for layer {params.layer!r}, "
                             f"whose output here is {height}x{width}: give MixSampler layer_shapes="
                             f"{{{params.layer!r}: ({height}, {width})}} (pipeline.mix.feature.layer_shapes "
                             f"measures them) ({error})") from None
        raise ValueError(f"params: drawn for {len(drawn.rows)} images of {drawn.height}x{drawn.width}, applied to "
                         f"{batch_size} of {height}x{width}: draw them with MixSampler.sample(batch_size="
                         f"{batch_size}, height={height}, width={width}) ({error})") from None


def _resolve(params: MixParams, *, batch_size: int, height: int, width: int) -> ResolvedMix:
    """``resolve_mix`` of params that are not a draw for this batch shape: every field checked."""
    if isinstance(params.mode, str) and np.ndim(params.lam) == 0 and (params.boxes is None
                                                                      or np.shape(params.boxes) == (4,)):
        if params.partner is None:  # nothing per sample: one packing per (mode, lam, box, batch shape)
            lam = None if params.lam is None else float(host_array(params.lam))
            box = None if params.boxes is None else tuple(host_array(params.boxes).tolist())
            return _resolve_constant(params.mode, lam, box, batch_size=batch_size, height=height, width=width)
        return _resolve_batch_wide(params, batch_size=batch_size, height=height, width=width)
    codes = _resolve_modes(params.mode, batch_size=batch_size)
    boxes = _resolve_boxes(params.boxes, needed=USES_BOX.take(codes), batch_size=batch_size, height=height, width=width)
    partner = _resolve_partner(params.partner, needed=USES_PARTNER.take(codes), batch_size=batch_size)
    lam = _resolve_lam(params.lam, codes=codes, boxes=boxes, height=height, width=width)
    return ResolvedMix.pack(codes=codes, boxes=boxes, partner=partner, lam=lam, height=height, width=width)


def resolve_holes(params: MixParams, resolved: ResolvedMix, *, batch_size: int, height: int,
                  width: int) -> ResolvedMix:
    """`params.cutout_boxes` checked and packed as rows of the cutout mode (on the image grid) that
    carry the partner and lambda of `resolved`, the mixing after the holes (`resolve_mix(params)`):
    so one kernel pass cuts the holes and writes the final targets (a cutout row reads no partner
    pixel; its partner and lambda serve the targets only)."""
    drawn = params._drawn_holes
    if drawn is not None and resolved is params._drawn and _as_drawn(params):
        return drawn
    holes = resolve_mix(MixParams(mode="cutout", boxes=params.cutout_boxes), batch_size=batch_size, height=height,
                        width=width)
    rows = holes.rows.copy()
    rows[:, PARTNER_COLUMN] = resolved.rows[:, PARTNER_COLUMN]
    rows[:, LAM_COLUMN] = resolved.rows[:, LAM_COLUMN]
    return ResolvedMix(codes=holes.codes, rows=rows, height=height, width=width)


def image_holes(params: MixParams) -> MixParams:
    """The Cutout holes of a feature-level draw (Cutout + Manifold Mixup) as params of the cutout
    mode, for the images while the layer is mixed; mode none without holes. A sampler's draw keeps
    its packed hole rows (they carry the mixing's partner and lambda, for targets the caller
    replaces; a cutout row reads no partner pixel), so they are neither checked nor copied again."""
    if params.cutout_boxes is None:
        return MixParams(mode="none")
    if params._drawn_holes is None or not _as_drawn(params):
        return MixParams(mode="cutout", boxes=params.cutout_boxes)
    return drawn_params(params._drawn_holes, mode="cutout", boxes=params.cutout_boxes)


@functools.lru_cache(maxsize=64)
def _resolve_constant(mode: str, lam: Optional[float], box: Optional[tuple], *, batch_size: int, height: int,
                      width: int) -> ResolvedMix:
    """`_resolve_batch_wide` of params without a partner (training's image part of the feature-level
    modes: mode "none" every step), kept with its copies on the devices."""
    return _resolve_batch_wide(MixParams(mode=mode, lam=lam, boxes=box), batch_size=batch_size, height=height,
                               width=width)


def _resolve_batch_wide(params: MixParams, *, batch_size: int, height: int, width: int) -> ResolvedMix:
    """resolve_mix for one mode, lambda and box for the whole batch: the checks run on that one
    row (a value out of range is reported once, not once per sample), which is then packed for all."""
    codes = _resolve_modes(params.mode, batch_size=1)
    box = _resolve_boxes(params.boxes, needed=USES_BOX.take(codes), batch_size=1, height=height, width=width)
    partner = _resolve_partner(params.partner, needed=USES_PARTNER.take(codes), batch_size=batch_size)
    lam = _resolve_lam(params.lam, codes=codes, boxes=box, height=height, width=width)
    return ResolvedMix.pack_uniform(code=int(codes[0]), box=tuple(box[0].tolist()), lam=float(lam[0]), partner=partner,
                                    height=height, width=width)


def box_lambda(boxes: Union[Tensor, np.ndarray], *, height: int, width: int) -> Tensor:
    """1 - box area / image area for integer boxes [N, 4] (y1, y2, x1, x2): the official lambda."""
    return torch.from_numpy(area_lambda(host_array(boxes), height=height, width=width))


def area_lambda(boxes: np.ndarray, *, height, width) -> np.ndarray:
    """`box_lambda` on numpy boxes: float64 [N]. `height` and `width` are ints, or int arrays [N]
    (one grid per box: the sampler's feature-level draws)."""
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return 1.0 - area / (np.asarray(height, dtype=np.int64) * width)  # true division: the exact float64 quotient


def host_array(value, dtype=None) -> np.ndarray:
    """A tensor (any device; a CUDA one is waited for), sequence or number as a numpy array."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # numpy has no bfloat16
    return np.asarray(value, dtype=dtype)


def _resolve_modes(mode, *, batch_size: int) -> np.ndarray:
    if isinstance(mode, str):
        if mode not in MODE_CODES:
            raise ValueError(f"mode: unknown {[mode]}; expected one of {list(MODES)}")
        return np.full(batch_size, MODE_CODES[mode], dtype=np.int64)
    names = list(mode)
    if len(names) != batch_size:
        raise ValueError(f"mode: got {len(names)} per-sample modes for a batch of {batch_size}")
    unknown = sorted({str(name) for name in names if name not in MODE_CODES})
    if unknown:
        raise ValueError(f"mode: unknown {unknown}; expected one of {list(MODES)}")
    return np.array([MODE_CODES[name] for name in names], dtype=np.int64)


def _resolve_boxes(boxes, *, needed: np.ndarray, batch_size: int, height: int, width: int) -> np.ndarray:
    if boxes is None:
        if needed.any():
            raise ValueError("boxes: required by the cutmix and cutout modes, got None")
        return np.zeros((batch_size, 4), dtype=np.int64)
    boxes = host_array(boxes)
    if boxes.dtype.kind not in "iu":
        raise ValueError(f"boxes: must be integers (y1, y2, x1, x2), got dtype {boxes.dtype}")
    if boxes.shape == (4,):
        boxes = boxes[None, :]  # broadcast by np.where below
    elif boxes.shape != (batch_size, 4):
        raise ValueError(f"boxes: expected shape (4,) or ({batch_size}, 4), got {tuple(boxes.shape)}")
    boxes = np.where(needed[:, None], boxes.astype(np.int64), 0)
    y1, y2, x1, x2 = boxes.T
    bad = ~((0 <= y1) & (y1 <= y2) & (y2 <= height) & (0 <= x1) & (x1 <= x2) & (x2 <= width))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"boxes: row {row} (y1, y2, x1, x2) = {tuple(boxes[row].tolist())} is outside the "
            f"{height}x{width} image; need 0 <= y1 <= y2 <= {height} and 0 <= x1 <= x2 <= {width}"
        )
    return boxes


def _resolve_partner(partner, *, needed: np.ndarray, batch_size: int) -> np.ndarray:
    if partner is None:
        if needed.any():
            raise ValueError("partner: required by the cutmix and mixup modes, got None")
        return np.arange(batch_size)
    partner = host_array(partner)
    if partner.dtype.kind not in "iu":
        raise ValueError(f"partner: must be an integer tensor, got dtype {partner.dtype}")
    if partner.shape != (batch_size,):
        raise ValueError(f"partner: expected shape ({batch_size},), got {tuple(partner.shape)}")
    if batch_size and (partner.min() < 0 or partner.max() >= batch_size):
        raise ValueError(f"partner: indices must lie in [0, {batch_size}), got {partner.tolist()}")
    return partner  # ResolvedMix.pack points the rows that need no partner at themselves


def _resolve_lam(lam, *, codes: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    batch_size = len(codes)
    area_lam = area_lambda(boxes, height=height, width=width)
    given = None if lam is None else _lam_array(lam, batch_size=batch_size)
    resolved = np.ones(batch_size)
    is_cutmix = codes == MODE_CODES["cutmix"]
    is_mixup = codes == MODE_CODES["mixup"]
    if is_mixup.any():
        if given is None:
            raise ValueError("lam: required by the mixup mode, got None")
        resolved = np.where(is_mixup, given, resolved)
    if given is not None:
        mismatch = is_cutmix & (np.abs(given - area_lam) > LAMBDA_TOLERANCE)
        if mismatch.any():
            row = int(np.flatnonzero(mismatch)[0])
            raise _lam_mismatch(row, float(given[row]), float(area_lam[row]))
        fixed = ~(is_cutmix | is_mixup) & (np.abs(given - 1.0) > LAMBDA_TOLERANCE)
        if fixed.any():
            row = int(np.flatnonzero(fixed)[0])
            raise _lam_not_one(row, float(given[row]))
    return np.where(is_cutmix, area_lam, resolved).astype(np.float32)


def _lam_mismatch(row: int, given: float, area_lam: float) -> ValueError:
    return ValueError(f"lam: row {row} is {given:.6f} but its cutmix box leaves {area_lam:.6f} of the image; "
                      "pass lam=None to use the box area")


def _lam_not_one(row: int, given: float) -> ValueError:
    return ValueError(f"lam: row {row} is {given:.6f}; cutout and none keep the label (lam=1)")


def _lam_array(lam, *, batch_size: int) -> np.ndarray:
    lam = host_array(lam, dtype=np.float64)
    if lam.ndim == 0:
        lam = np.broadcast_to(lam, (batch_size,))
    if lam.shape != (batch_size,):
        raise ValueError(f"lam: expected a float or shape ({batch_size},), got {tuple(lam.shape)}")
    if not ((lam >= 0) & (lam <= 1)).all():
        raise ValueError(f"lam: values must lie in [0, 1], got {lam.tolist()}")
    return lam
