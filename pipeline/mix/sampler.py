"""MixSampler: draws MixParams with the official CutMix semantics (clovaai/CutMix-PyTorch).

Per batch (`per="batch"`, the paper) or per sample (`per="elem"`, timm): with probability `prob`
the batch (sample) is mixed; when both CutMix and Mixup are on, CutMix is chosen with
probability `switch_prob`; lam ~ Beta(alpha, alpha); the CutMix box has sides int(H * sqrt(1 - lam))
and int(W * sqrt(1 - lam)) around a uniform centre, clipped to the image, and lam is recomputed
from the clipped area. All randomness comes from one torch.Generator seeded from (seed, rank), so
every rank draws differently and every run repeats.

The generator draws, the arithmetic runs in numpy (a batch is a few hundred values: torch's
per-call cost would dominate), and each draw carries its packed rows (`rows.ResolvedMix`), so
`apply_mix` does not check again what the sampler made valid.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..seeds import generator_seed
from .params import MixParams, area_lambda, drawn_params, host_array
from .rows import MODE_CODES, MODES, NO_BOX, Box, ResolvedMix, own_rows

SAMPLER_MODES = ("cutmix", "mixup", "cutmix_or_mixup", "cutout", "none", "feature_cutmix", "manifold_mixup")
# Feature-level modes: the operation, done on the output of a layer drawn per batch from `layers`
# ("input" = the image, as the image-level mode): Feature CutMix (the CutMix paper's Table 3) and
# Manifold Mixup (Verma et al. 2019). The box is drawn on that layer's grid (`layer_shapes`).
FEATURE_MODES = {"feature_cutmix": "cutmix", "manifold_mixup": "mixup"}
INPUT_LAYER = "input"
# With `cutout_size`, these modes first cut a hole in every image (Cutout + Mixup, Cutout +
# Manifold Mixup: rows of the CutMix paper's CIFAR table), then mix.
WITH_CUTOUT = ("mixup", "manifold_mixup")
PER_CHOICES = ("batch", "elem")
PARTNER_CHOICES = ("permutation", "flip", "roll")
_MODE_NAMES = np.array(MODES, dtype=object)


class MixSampler:
    """Draws the mode, lambda, box and partner of each batch; hand the result to `apply_mix`."""

    def __init__(
        self,
        *,
        mode: str = "cutmix",
        cutmix_alpha: float = 1.0,
        mixup_alpha: float = 1.0,
        cutmix_minmax: Optional[Sequence[float]] = None,
        cutout_size: Optional[int] = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        per: str = "batch",
        partner: str = "permutation",
        seed: int = 0,
        rank: int = 0,
        layers: Sequence[str] = (INPUT_LAYER,),
        layer_shapes: Optional[dict[str, tuple[int, int]]] = None,
    ) -> None:
        _check_sampler_options(
            mode=mode, cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha, cutmix_minmax=cutmix_minmax,
            cutout_size=cutout_size, prob=prob, switch_prob=switch_prob, per=per, partner=partner,
        )  # fmt: skip
        _check_layers(mode=mode, per=per, layers=layers, layer_shapes=layer_shapes or {})
        self.layers = tuple(layers)
        self.layer_shapes = dict(layer_shapes or {})
        self.mode = mode
        self.cutmix_alpha = cutmix_alpha
        self.mixup_alpha = mixup_alpha
        self.cutmix_minmax = None if cutmix_minmax is None else (float(cutmix_minmax[0]), float(cutmix_minmax[1]))
        self.cutout_size = cutout_size
        self.prob = prob
        self.switch_prob = switch_prob
        self.per = per
        self.partner = partner
        self.generator = torch.Generator().manual_seed(generator_seed(seed=seed, rank=rank))
        # One-value buffers for the per-batch draws: drawing in place skips an allocation each.
        self._one_float = torch.empty(1, dtype=torch.float64)
        self._one_int = torch.empty(1, dtype=torch.int64)

    def sample(self, *, batch_size: int, height: int, width: int) -> MixParams:
        """Draw the parameters of one batch of `batch_size` images of `height` x `width`."""
        if self.mode not in ("cutout", "none") and batch_size < 2:
            raise ValueError(f"batch_size: {self.mode} needs a partner, so at least 2 samples; got {batch_size}")
        if self.partner == "flip" and self.mode != "none" and batch_size % 2:
            raise ValueError(
                f"batch_size: partner='flip' needs an even batch (the middle sample would mix with itself); "
                f"got {batch_size}"
            )
        layer, image_height, image_width = None, height, width
        if self.mode in FEATURE_MODES:  # the layer first: the box is drawn on its grid
            layer = self.layers[self._integer_value(len(self.layers))]
            if layer == INPUT_LAYER:
                layer = None
            else:
                height, width = self.layer_shapes[layer]
        if self.per == "batch":
            drawn = self._draw_batch(height=height, width=width)
        else:
            drawn = self._draw_rows(batch_size, height=height, width=width)
        cutout_boxes = holes = None
        if self.cutout_size is not None and self.mode in WITH_CUTOUT:  # a hole in every image, mixed or not
            side = np.full(batch_size, self.cutout_size)
            cutout_boxes = draw_centred_boxes(side, side, height=image_height, width=image_width,
                                              generator=self.generator)
            holes = ResolvedMix.pack_uniform(code=MODE_CODES["cutout"], box=cutout_boxes.numpy(), lam=1.0,
                                             partner=own_rows(batch_size), height=image_height, width=image_width)
        partner = draw_partner(self.partner, batch_size=batch_size, generator=self.generator)
        return self._packed(drawn, partner, height=height, width=width, layer=layer, cutout_boxes=cutout_boxes,
                            holes=holes)

    def _packed(self, drawn: tuple, partner: Tensor, *, height: int, width: int, layer, cutout_boxes,
                holes) -> MixParams:
        """The draw as MixParams carrying its packed rows: what resolve_mix makes of it, without
        its checks. `drawn` is `_draw_batch`'s scalars or `_draw_rows`' arrays."""
        batch_size = len(partner)
        if self.per == "batch":
            code, batch_lam, box = drawn
            resolved = ResolvedMix.pack_uniform(code=code, box=box, lam=batch_lam, partner=partner.numpy(),
                                                height=height, width=width)
            mode, lam = MODES[code], torch.full((batch_size,), batch_lam, dtype=torch.float32)
            boxes = np.empty((batch_size, 4), dtype=np.int64)
            boxes[:] = box
        else:
            codes, lam, boxes = drawn
            resolved = ResolvedMix.pack(codes=codes, boxes=boxes, partner=partner.numpy(), lam=lam, height=height,
                                        width=width)
            mode, lam = tuple(_MODE_NAMES[codes]), torch.from_numpy(lam)
        return drawn_params(resolved, holes=holes, mode=mode, lam=lam, boxes=torch.from_numpy(boxes), partner=partner,
                            layer=layer, cutout_boxes=cutout_boxes)

    def _draw_batch(self, *, height: int, width: int) -> tuple[int, float, Box]:
        """The whole batch's mode code, lambda and box in Python scalars: the generator calls and
        float64 arithmetic of `_draw_rows` for one row, without numpy's per-call cost on one value."""
        code = MODE_CODES[FEATURE_MODES.get(self.mode, self.mode)] if self.mode != "cutmix_or_mixup" else None
        if code is None:
            code = MODE_CODES["cutmix" if self._uniform_value() < self.switch_prob else "mixup"]
        if not self._uniform_value() < self.prob:  # the prob gate, as in _draw_modes
            return MODE_CODES["none"], 1.0, NO_BOX
        if code == MODE_CODES["mixup"]:
            return code, self._beta(self.mixup_alpha), NO_BOX
        if code == MODE_CODES["cutout"]:
            return code, 1.0, self._centred_box(self.cutout_size, self.cutout_size, height=height, width=width)
        if code != MODE_CODES["cutmix"]:
            return code, 1.0, NO_BOX
        if self.cutmix_minmax is not None:
            box = tuple(draw_minmax_boxes(self.cutmix_minmax, count=1, height=height, width=width,
                                          generator=self.generator)[0].tolist())
        else:
            ratio = math.sqrt(1.0 - self._beta(self.cutmix_alpha))
            box = self._centred_box(int(height * ratio), int(width * ratio), height=height, width=width)
        y1, y2, x1, x2 = box
        return code, 1.0 - (y2 - y1) * (x2 - x1) / float(height * width), box  # area_lambda of one box

    def _uniform_value(self) -> float:
        """`_uniform(1)` as a Python float (the same generator call, in place)."""
        return self._one_float.uniform_(generator=self.generator).item()

    def _integer_value(self, high: int) -> int:
        """`torch.randint(high, (1,))` as a Python int (the same generator call, in place)."""
        return self._one_int.random_(0, high, generator=self.generator).item()

    def _beta(self, alpha: float) -> float:
        """`draw_beta` for one value, as a Python float (the same generator call and arithmetic)."""
        first, second = torch._standard_gamma(_gamma_concentration(float(alpha)), generator=self.generator).tolist()
        return first / (first + second)

    def _centred_box(self, cut_h: int, cut_w: int, *, height: int, width: int) -> Box:
        """`draw_centred_boxes` for one box, in Python ints (the same generator calls and arithmetic)."""
        centre_y, centre_x = self._integer_value(height), self._integer_value(width)
        return (max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height),
                max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width))

    def _draw_rows(self, count: int, *, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mode codes int64 [count], lambda float32 [count], boxes int64 [count, 4] (zeros without a box)."""
        codes = self._draw_modes(count)
        lam = np.ones(count)
        boxes = np.zeros((count, 4), dtype=np.int64)
        for name in ("cutmix", "mixup", "cutout"):
            rows = codes == MODE_CODES[name]
            drawn = int(np.count_nonzero(rows))
            if drawn == count:  # every row: no masked writes
                lam, boxes = self._draw_mode(name, count=drawn, height=height, width=width)
            elif drawn:
                lam[rows], boxes[rows] = self._draw_mode(name, count=drawn, height=height, width=width)
        return codes, lam.astype(np.float32), boxes

    def _draw_modes(self, count: int) -> np.ndarray:
        if self.mode == "cutmix_or_mixup":
            use_cutmix = _uniform(count, self.generator) < self.switch_prob
            codes = np.where(use_cutmix, MODE_CODES["cutmix"], MODE_CODES["mixup"])
        else:
            codes = np.full(count, MODE_CODES[FEATURE_MODES.get(self.mode, self.mode)])
        # The prob gate: an ungated batch (sample) passes through unchanged.
        gated = _uniform(count, self.generator) < self.prob
        return np.where(gated, codes, MODE_CODES["none"])

    def _draw_mode(self, name: str, *, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        if name == "mixup":
            lam = draw_beta(self.mixup_alpha, count=count, generator=self.generator).numpy()
            return lam, np.zeros((count, 4), dtype=np.int64)
        if name == "cutout":
            side = np.full(count, self.cutout_size)
            boxes = draw_centred_boxes(side, side, height=height, width=width, generator=self.generator)
            return np.ones(count), boxes.numpy()
        if self.cutmix_minmax is not None:
            boxes = draw_minmax_boxes(
                self.cutmix_minmax, count=count, height=height, width=width, generator=self.generator
            )
        else:
            boxes = draw_cutmix_boxes(
                draw_beta(self.cutmix_alpha, count=count, generator=self.generator),
                height=height, width=width, generator=self.generator,
            )  # fmt: skip
        # The official correction: the label weight is the area that was really kept.
        return area_lambda(boxes.numpy(), height=height, width=width), boxes.numpy()


def draw_beta(alpha: float, *, count: int, generator: torch.Generator) -> Tensor:
    """float64 [count] ~ Beta(alpha, alpha), drawn as G1 / (G1 + G2) from two Gamma(alpha) draws."""
    # torch.distributions.Beta cannot take a generator; torch._standard_gamma can.
    concentration = torch.from_numpy(np.full((2, count), float(alpha)))
    gamma = torch._standard_gamma(concentration, generator=generator).numpy()
    return torch.from_numpy(gamma[0] / (gamma[0] + gamma[1]))


def draw_cutmix_boxes(lam, *, height: int, width: int, generator: torch.Generator) -> Tensor:
    """int64 [N, 4] official CutMix boxes: sides int(H * sqrt(1 - lam)), uniform centre, clipped."""
    ratio = np.sqrt(1.0 - host_array(lam, dtype=np.float64))
    cut_h = (height * ratio).astype(np.int64)  # int() truncation, as the official code
    cut_w = (width * ratio).astype(np.int64)
    return draw_centred_boxes(cut_h, cut_w, height=height, width=width, generator=generator)


def draw_centred_boxes(cut_h, cut_w, *, height: int, width: int, generator: torch.Generator) -> Tensor:
    """int64 [N, 4]: centre uniform in [0, H) x [0, W); [c - cut // 2, c + cut // 2) clipped."""
    half_h, half_w = host_array(cut_h) // 2, host_array(cut_w) // 2
    centre_y = torch.randint(height, (len(half_h),), generator=generator).numpy()
    centre_x = torch.randint(width, (len(half_w),), generator=generator).numpy()
    boxes = np.empty((len(half_h), 4), dtype=np.int64)
    np.subtract(centre_y, half_h, out=boxes[:, 0])
    np.add(centre_y, half_h, out=boxes[:, 1])
    np.subtract(centre_x, half_w, out=boxes[:, 2])
    np.add(centre_x, half_w, out=boxes[:, 3])
    np.maximum(boxes, 0, out=boxes)
    np.minimum(boxes, (height, height, width, width), out=boxes)
    return torch.from_numpy(boxes)


def draw_minmax_boxes(
    minmax: tuple[float, float], *, count: int, height: int, width: int, generator: torch.Generator
) -> Tensor:
    """int64 [N, 4] timm's `cutmix_minmax` boxes: sides uniform in [min, max) of the image, never clipped."""
    low, high = minmax
    if int(height * low) >= int(height * high) or int(width * low) >= int(width * high):
        raise ValueError(f"cutmix_minmax: {minmax} leaves no box sizes to draw from on a {height}x{width} image")
    cut_h = torch.randint(int(height * low), int(height * high), (count,), generator=generator).numpy()
    cut_w = torch.randint(int(width * low), int(width * high), (count,), generator=generator).numpy()
    y1 = (_uniform(count, generator) * (height - cut_h + 1)).astype(np.int64)
    x1 = (_uniform(count, generator) * (width - cut_w + 1)).astype(np.int64)
    return torch.from_numpy(np.stack([y1, y1 + cut_h, x1, x1 + cut_w], axis=1))


def draw_partner(kind: str, *, batch_size: int, generator: torch.Generator) -> Tensor:
    """int64 [B]: a random permutation (the paper's code), flip (timm) or roll by one (torchvision)."""
    if kind == "permutation":
        return torch.randperm(batch_size, generator=generator)
    if kind == "flip":
        return torch.arange(batch_size - 1, -1, -1)
    # x.roll(1, 0)[i] == x[i - 1]
    return (torch.arange(batch_size) - 1) % max(batch_size, 1)


@functools.lru_cache(maxsize=8)
def _gamma_concentration(alpha: float) -> Tensor:
    """The (alpha, alpha) pair `MixSampler._beta` draws two Gamma variates from (never written to)."""
    return torch.full((2,), alpha, dtype=torch.float64)


def _uniform(count: int, generator: torch.Generator) -> np.ndarray:
    return torch.rand(count, generator=generator, dtype=torch.float64).numpy()


def _check_sampler_options(
    *, mode, cutmix_alpha, mixup_alpha, cutmix_minmax, cutout_size, prob, switch_prob, per, partner
) -> None:
    choices_of = {"mode": SAMPLER_MODES, "per": PER_CHOICES, "partner": PARTNER_CHOICES}
    for name, value in (("mode", mode), ("per", per), ("partner", partner)):
        choices = choices_of[name]
        if value not in choices:
            raise ValueError(f"{name}: must be one of {choices}, got {value!r}")
    if mode in ("cutmix", "cutmix_or_mixup", "feature_cutmix") and cutmix_minmax is None and not cutmix_alpha > 0:
        raise ValueError(f"cutmix_alpha: must be > 0 with mode={mode!r}, got {cutmix_alpha}")
    if mode in ("mixup", "cutmix_or_mixup", "manifold_mixup") and not mixup_alpha > 0:
        raise ValueError(f"mixup_alpha: must be > 0 with mode={mode!r}, got {mixup_alpha}")
    if cutmix_minmax is not None and not (len(cutmix_minmax) == 2 and 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1):
        raise ValueError(f"cutmix_minmax: need (min, max) with 0 < min < max <= 1, got {cutmix_minmax}")
    if mode == "cutout" and not (isinstance(cutout_size, int) and cutout_size > 0):
        raise ValueError(f"cutout_size: mode='cutout' needs a positive int box side in pixels, got {cutout_size!r}")
    if cutout_size is not None and mode not in ("cutout", *WITH_CUTOUT):
        raise ValueError(f"cutout_size: Cutout goes alone (mode='cutout') or before {list(WITH_CUTOUT)}, "
                         f"not with mode={mode!r}")
    if cutout_size is not None and mode in WITH_CUTOUT and per != "batch":
        raise ValueError(f"per: Cutout + {mode} mixes whole batches, so per='batch'; got {per!r}")
    for name, value in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: must lie in [0, 1], got {value}")


def _check_layers(*, mode: str, per: str, layers: Sequence[str], layer_shapes: dict) -> None:
    if mode not in FEATURE_MODES:
        return
    if per != "batch":
        raise ValueError(f"per: mode={mode!r} mixes one layer per batch, so per='batch'; got {per!r}")
    if not layers:
        raise ValueError(f"layers: mode={mode!r} needs at least one layer to mix at")
    missing = [name for name in layers if name != INPUT_LAYER and name not in layer_shapes]
    if missing:
        raise ValueError(f"layer_shapes: no (height, width) for layers {missing}")
