"""MixSampler: draws MixParams with the official CutMix semantics (clovaai/CutMix-PyTorch).

Per batch (`per="batch"`, the paper) or per sample (`per="elem"`, timm): with probability `prob`
the batch (sample) is mixed; when both CutMix and Mixup are on, CutMix is chosen with
probability `switch_prob`; lam ~ Beta(alpha, alpha); the CutMix box has sides int(H * sqrt(1 - lam))
and int(W * sqrt(1 - lam)) around a uniform centre, clipped to the image, and lam is recomputed
from the clipped area. All randomness comes from one torch.Generator seeded from (seed, rank), so
every rank draws differently and every run repeats.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..seeds import generator_seed
from .params import MixParams, box_lambda

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
            layer = self.layers[int(torch.randint(len(self.layers), (1,), generator=self.generator))]
            if layer == INPUT_LAYER:
                layer = None
            else:
                height, width = self.layer_shapes[layer]
        draws = 1 if self.per == "batch" else batch_size
        modes = self._draw_modes(draws)
        lam = torch.ones(draws, dtype=torch.float64)
        boxes = torch.zeros(draws, 4, dtype=torch.int64)
        for name in ("cutmix", "mixup", "cutout"):
            rows = torch.from_numpy(modes == name)
            if bool(rows.any()):
                lam[rows], boxes[rows] = self._draw_mode(name, count=int(rows.sum()), height=height, width=width)
        if self.per == "batch":
            mode = str(modes[0])
            lam, boxes = lam.expand(batch_size), boxes.expand(batch_size, 4)
        else:
            mode = tuple(str(name) for name in modes)
        cutout_boxes = None
        if self.cutout_size is not None and self.mode in WITH_CUTOUT:  # a hole in every image, mixed or not
            side = torch.full((batch_size,), self.cutout_size, dtype=torch.int64)
            cutout_boxes = draw_centred_boxes(side, side, height=image_height, width=image_width,
                                              generator=self.generator)
        return MixParams(
            mode=mode,
            lam=lam.to(torch.float32).contiguous(),
            boxes=boxes.contiguous(),
            partner=draw_partner(self.partner, batch_size=batch_size, generator=self.generator),
            layer=layer,
            cutout_boxes=cutout_boxes,
        )

    def _draw_modes(self, count: int) -> np.ndarray:
        if self.mode == "cutmix_or_mixup":
            use_cutmix = _uniform(count, self.generator) < self.switch_prob
            modes = np.where(use_cutmix.numpy(), "cutmix", "mixup")
        else:
            modes = np.full(count, FEATURE_MODES.get(self.mode, self.mode))
        # The prob gate: an ungated batch (sample) passes through unchanged.
        gated = (_uniform(count, self.generator) < self.prob).numpy()
        return np.where(gated, modes, "none")

    def _draw_mode(self, name: str, *, count: int, height: int, width: int) -> tuple[Tensor, Tensor]:
        if name == "mixup":
            lam = draw_beta(self.mixup_alpha, count=count, generator=self.generator)
            return lam, torch.zeros(count, 4, dtype=torch.int64)
        if name == "cutout":
            side = torch.full((count,), self.cutout_size, dtype=torch.int64)
            boxes = draw_centred_boxes(side, side, height=height, width=width, generator=self.generator)
            return torch.ones(count, dtype=torch.float64), boxes
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
        return box_lambda(boxes, height=height, width=width), boxes


def draw_beta(alpha: float, *, count: int, generator: torch.Generator) -> Tensor:
    """float64 [count] ~ Beta(alpha, alpha), drawn as G1 / (G1 + G2) from two Gamma(alpha) draws."""
    # torch.distributions.Beta cannot take a generator; torch._standard_gamma can.
    concentration = torch.full((2, count), float(alpha), dtype=torch.float64)
    gamma = torch._standard_gamma(concentration, generator=generator)
    return gamma[0] / (gamma[0] + gamma[1])


def draw_cutmix_boxes(lam: Tensor, *, height: int, width: int, generator: torch.Generator) -> Tensor:
    """int64 [N, 4] official CutMix boxes: sides int(H * sqrt(1 - lam)), uniform centre, clipped."""
    ratio = torch.sqrt(1.0 - lam.to(torch.float64))
    cut_h = (height * ratio).to(torch.int64)  # int() truncation, as the official code
    cut_w = (width * ratio).to(torch.int64)
    return draw_centred_boxes(cut_h, cut_w, height=height, width=width, generator=generator)


def draw_centred_boxes(
    cut_h: Tensor, cut_w: Tensor, *, height: int, width: int, generator: torch.Generator
) -> Tensor:
    """int64 [N, 4]: centre uniform in [0, H) x [0, W); [c - cut // 2, c + cut // 2) clipped."""
    count = len(cut_h)
    centre_y = torch.randint(height, (count,), generator=generator)
    centre_x = torch.randint(width, (count,), generator=generator)
    y1 = (centre_y - cut_h // 2).clamp(0, height)
    y2 = (centre_y + cut_h // 2).clamp(0, height)
    x1 = (centre_x - cut_w // 2).clamp(0, width)
    x2 = (centre_x + cut_w // 2).clamp(0, width)
    return torch.stack([y1, y2, x1, x2], dim=1)


def draw_minmax_boxes(
    minmax: tuple[float, float], *, count: int, height: int, width: int, generator: torch.Generator
) -> Tensor:
    """int64 [N, 4] timm's `cutmix_minmax` boxes: sides uniform in [min, max) of the image, never clipped."""
    low, high = minmax
    if int(height * low) >= int(height * high) or int(width * low) >= int(width * high):
        raise ValueError(f"cutmix_minmax: {minmax} leaves no box sizes to draw from on a {height}x{width} image")
    cut_h = torch.randint(int(height * low), int(height * high), (count,), generator=generator)
    cut_w = torch.randint(int(width * low), int(width * high), (count,), generator=generator)
    y1 = (torch.rand(count, generator=generator, dtype=torch.float64) * (height - cut_h + 1)).to(torch.int64)
    x1 = (torch.rand(count, generator=generator, dtype=torch.float64) * (width - cut_w + 1)).to(torch.int64)
    return torch.stack([y1, y1 + cut_h, x1, x1 + cut_w], dim=1)


def draw_partner(kind: str, *, batch_size: int, generator: torch.Generator) -> Tensor:
    """int64 [B]: a random permutation (the paper's code), flip (timm) or roll by one (torchvision)."""
    if kind == "permutation":
        return torch.randperm(batch_size, generator=generator)
    if kind == "flip":
        return torch.arange(batch_size - 1, -1, -1)
    # x.roll(1, 0)[i] == x[i - 1]
    return (torch.arange(batch_size) - 1) % max(batch_size, 1)


def _uniform(count: int, generator: torch.Generator) -> Tensor:
    return torch.rand(count, generator=generator, dtype=torch.float64)


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
