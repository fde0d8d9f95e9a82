"""MixSampler: draws MixParams with the official CutMix semantics (clovaai/CutMix-PyTorch).

Per batch (`per="batch"`, the paper) or per sample (`per="elem"`, timm): with probability `prob`
the batch (sample) is mixed; when both CutMix and Mixup are on, CutMix is chosen with
probability `switch_prob`; lam ~ Beta(alpha, alpha); the CutMix box has sides int(H * sqrt(1 - lam))
and int(W * sqrt(1 - lam)) around a uniform centre, clipped to the image, and lam is recomputed
from the clipped area. All randomness comes from one numpy Generator (PCG64) seeded from
(seed, rank), so every rank draws differently and every run repeats.

Speed (issue 11: the host side of a training step must cost microseconds). A step needs ~40
small array operations, and numpy's cost per call (~1 us) is most of it, whatever the length.
So the sampler draws LOOKAHEAD steps of one batch shape at once (the same ~40 calls on arrays
LOOKAHEAD times longer) and hands them out one by one; a call with another shape drops what is
left and draws anew. Draws are therefore a function of (seed, rank, the sequence of shapes asked
for), as before; LOOKAHEAD is part of that function, so it is a constant. numpy rather than a
torch.Generator: torch's per-call cost is 2-3x numpy's and its Gamma sampler 7x slower at alpha 1.
Each draw carries its packed rows (`rows.ResolvedMix`), so `apply_mix` does not check again what
the sampler made valid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional, Sequence

import numpy as np
import torch

from ..seeds import generator_seed
from .choices import (FEATURE_MODES, INPUT_LAYER, PARTNER_CHOICES, PER_CHOICES, SAMPLER_MODES, WITH_CUTOUT,
                      unused_mode_option)
from .params import MixParams, area_lambda, drawn_params
from .rows import (LAM_COLUMN, MODE_CODES, MODES, PARTNER_COLUMN, ROW_COLUMNS, USES_PARTNER, RowBlock, pack_rows,
                   same_codes)

# Steps drawn at once (see the module docstring). 16: numpy's per-call cost is then ~1/16 of a
# step's, and a block of per-sample draws at batch 256 stays a few hundred microseconds.
LOOKAHEAD = 16
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
        for name, value in (("seed", seed), ("rank", rank)):
            # None would draw from the OS's entropy: a run that never repeats.
            if not _is_integer(value) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        _check_sampler_options(
            mode=mode, cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha, cutmix_minmax=cutmix_minmax,
            cutout_size=cutout_size, prob=prob, switch_prob=switch_prob, per=per, partner=partner,
        )  # fmt: skip
        _check_layers(mode=mode, per=per, layers=layers, layer_shapes=layer_shapes or {},
                      cutmix_minmax=cutmix_minmax)
        # As the config and the preview CLI: mixup_alpha=0.2 with mode="cutmix" would change nothing.
        unused = unused_mode_option(mode, said=f"mode={mode!r}", cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha,
                                    switch_prob=switch_prob, prob=prob, per=per, partner=partner)
        if unused is not None:
            raise ValueError(f"{unused[0]}: {unused[1]}")
        self.layers = tuple(layers)
        self.layer_shapes = dict(layer_shapes or {})
        self.mode = mode
        self.cutmix_alpha = float(cutmix_alpha)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_minmax = None if cutmix_minmax is None else (float(cutmix_minmax[0]), float(cutmix_minmax[1]))
        self.cutout_size = cutout_size
        self.prob = prob
        self.switch_prob = switch_prob
        self.per = per
        self.partner = partner
        self.generator = np.random.default_rng(generator_seed(seed=seed, rank=rank))
        self._block: Optional[_Block] = None
        self._next = 0  # the block's next step

    def sample(self, *, batch_size: int, height: int, width: int) -> MixParams:
        """Draw the parameters of one batch of `batch_size` images of `height` x `width`."""
        block = self._block
        if block is None or self._next == LOOKAHEAD or block.shape != (batch_size, height, width):
            for name, value, least in (("batch_size", batch_size, 0), ("height", height, 1), ("width", width, 1)):
                if not _is_integer(value) or value < least:
                    raise ValueError(f"{name}: must be an integer >= {least} (the batch's shape), got {value!r}")
            self._check_batch(batch_size)
            block = self._block = self._draw_block(batch_size, height=height, width=width)
            self._next = 0
        step, self._next = self._next, self._next + 1
        return block.params(step)

    def _check_batch(self, batch_size: int) -> None:
        if self.mode not in ("cutout", "none") and batch_size < 2:
            raise ValueError(f"batch_size: {self.mode} needs a partner, so at least 2 samples; got {batch_size}")
        if self.partner == "flip" and self.mode != "none" and batch_size % 2:
            raise ValueError(
                f"batch_size: partner='flip' needs an even batch (the middle sample would mix with itself); "
                f"got {batch_size}"
            )

    def _draw_block(self, batch_size: int, *, height: int, width: int) -> _Block:
        """LOOKAHEAD steps of batches of `batch_size` images of `height` x `width`, packed."""
        steps, generator = LOOKAHEAD, self.generator
        layers, grids = [None] * steps, [(height, width)] * steps
        if self.mode in FEATURE_MODES:  # the layer first: the box is drawn on its grid
            names = [self.layers[index] for index in generator.integers(len(self.layers), size=steps).tolist()]
            layers = [None if name == INPUT_LAYER else name for name in names]
            grids = [(height, width) if name is None else self.layer_shapes[name] for name in layers]
        rows_shape = (steps, batch_size)
        if self.per == "batch":  # one draw per step, then the same for each of its rows
            codes, lam, boxes = self._draw(steps, grid=np.array(grids, dtype=np.int64).T)
            mode_names = _MODE_NAMES[codes].tolist()
            codes, lam, boxes = (np.repeat(values, batch_size, axis=0) for values in (codes, lam, boxes))
        else:
            codes, lam, boxes = self._draw(steps * batch_size, grid=_column(height, width))
            mode_names = _MODE_NAMES[codes.reshape(rows_shape)].tolist()
        own = np.broadcast_to(np.arange(batch_size), rows_shape).reshape(-1)
        partner = draw_partners(self.partner, steps=steps, batch_size=batch_size, generator=generator)
        # Rows that take nothing from a partner read only themselves (keeps the kernel's reads exact).
        rows = pack_rows(codes=codes, boxes=boxes, partner=np.where(USES_PARTNER.take(codes), partner.reshape(-1), own),
                         lam=lam)
        holes = cutout_boxes = None
        if self.cutout_size is not None and self.mode in WITH_CUTOUT:  # a hole in every image, mixed or not
            count = steps * batch_size
            cutout_boxes = draw_centred_boxes(np.full((2, count), self.cutout_size), grid=_column(height, width),
                                              generator=generator)
            # With the mixing's partner and lambda: see params.resolve_holes.
            holes = pack_rows(codes=same_codes(MODE_CODES["cutout"], count), boxes=cutout_boxes,
                              partner=rows[:, PARTNER_COLUMN], lam=rows[:, LAM_COLUMN].view(np.float32))
            holes = RowBlock(holes.reshape(*rows_shape, ROW_COLUMNS))
            cutout_boxes = np.ascontiguousarray(cutout_boxes).reshape(*rows_shape, 4)
        return _Block(
            shape=(batch_size, height, width), per=self.per, layers=layers, grids=grids,
            codes=codes.reshape(rows_shape), rows=RowBlock(rows.reshape(*rows_shape, ROW_COLUMNS)),
            lam=lam.reshape(rows_shape), boxes=np.ascontiguousarray(boxes).reshape(*rows_shape, 4), partner=partner,
            holes=holes, cutout_boxes=cutout_boxes, mode_names=mode_names,
        )  # fmt: skip

    def _draw(self, count: int, *, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mode codes int64 [count], lambda float32 [count], boxes int64 [count, 4] (zeros without
        a box) of `count` draws on `grid` (int64 [2, 1] for all, or [2, count]: height, width each).

        Every draw gets a lambda and a box, kept where its mode uses them: spare draws cost less
        than picking each mode's draws first."""
        generator, mode = self.generator, FEATURE_MODES.get(self.mode, self.mode)
        units = generator.random((2 if mode == "cutmix_or_mixup" else 1, count))
        mixed = units[0] < self.prob  # the prob gate: an unmixed batch (sample) passes through unchanged
        if mode == "cutmix_or_mixup":
            codes = mixed * np.where(units[1] < self.switch_prob, MODE_CODES["cutmix"], MODE_CODES["mixup"])
        else:
            codes = mixed * MODE_CODES[mode]  # int64: 0 is "none"
        if mode == "none":
            return codes, np.ones(count, dtype=np.float32), np.zeros((count, 4), dtype=np.int64)
        if mode == "cutout":
            boxes = draw_centred_boxes(np.full((2, count), self.cutout_size), grid=grid, generator=generator)
            boxes *= mixed[:, None]
            return codes, np.ones(count, dtype=np.float32), boxes
        mixup_lam = None
        if mode != "cutmix":  # mixup's lambda, for every draw
            mixup_lam = draw_beta(self.mixup_alpha, count=count, generator=generator)
            if mode == "mixup":
                return codes, np.where(mixed, mixup_lam, 1.0).astype(np.float32), np.zeros((count, 4), dtype=np.int64)
        boxes = self._cutmix_boxes(count, mixup_lam=mixup_lam, grid=grid)
        boxes *= (mixed if mode == "cutmix" else codes == MODE_CODES["cutmix"])[:, None]
        # The official correction: the label weight is the area that was really kept.
        lam = area_lambda(boxes, height=grid[0], width=grid[1])
        if mixup_lam is not None:
            lam = np.where(codes == MODE_CODES["mixup"], mixup_lam, lam)
        return codes, lam.astype(np.float32), boxes

    def _cutmix_boxes(self, count: int, *, mixup_lam: Optional[np.ndarray], grid: np.ndarray) -> np.ndarray:
        """int64 [count, 4] CutMix boxes for every draw: timm's minmax boxes, or the official ones of
        a Beta lambda (mixup's draws reused when both modes use the same Beta: a draw is one or the
        other, never both)."""
        if self.cutmix_minmax is not None:
            return draw_minmax_boxes(self.cutmix_minmax, count=count, grid=grid, generator=self.generator)
        lam = mixup_lam
        if lam is None or self.mixup_alpha != self.cutmix_alpha:
            lam = draw_beta(self.cutmix_alpha, count=count, generator=self.generator)
        return draw_centred_boxes(cutmix_sides(lam, grid=grid), grid=grid, generator=self.generator)


@dataclass(frozen=True)
class _Block:
    """LOOKAHEAD steps of draws for batches of one shape: arrays [steps, B, ...] and per-step lists."""

    shape: tuple[int, int, int]  # (batch_size, height, width) asked for
    per: str
    layers: list  # per step: the model layer to mix at, None for the images
    grids: list  # per step: (height, width) the boxes lie on
    codes: np.ndarray  # int64 [steps, B]
    rows: RowBlock  # int32 [steps, B, ROW_COLUMNS], sent to a device in one copy
    lam: np.ndarray  # float32 [steps, B]
    boxes: np.ndarray  # int64 [steps, B, 4]
    partner: np.ndarray  # int64 [steps, B]
    holes: Optional[RowBlock]  # int32 [steps, B, ROW_COLUMNS]: Cutout's holes before Mixup (resolve_holes)
    cutout_boxes: Optional[np.ndarray]  # int64 [steps, B, 4]
    mode_names: list  # per step: the mode's name (per="batch"), or each sample's (per="elem")

    def params(self, step: int) -> MixParams:
        """Step `step` as MixParams (views of the block's arrays) carrying its packed rows."""
        batch_size, height, width = self.shape
        codes = self.codes[step]
        grid_height, grid_width = self.grids[step]
        resolved = self.rows.step(step, codes=codes, height=grid_height, width=grid_width)
        mode = self.mode_names[step] if self.per == "batch" else tuple(self.mode_names[step])
        holes = cutout_boxes = None
        if self.holes is not None:
            holes = self.holes.step(step, codes=same_codes(MODE_CODES["cutout"], batch_size), height=height,
                                    width=width)
            cutout_boxes = torch.from_numpy(self.cutout_boxes[step])
        return drawn_params(resolved, holes=holes, mode=mode, lam=torch.from_numpy(self.lam[step]),
                            boxes=torch.from_numpy(self.boxes[step]), partner=torch.from_numpy(self.partner[step]),
                            layer=self.layers[step], cutout_boxes=cutout_boxes)


def draw_beta(alpha: float, *, count: int, generator: np.random.Generator) -> np.ndarray:
    """float64 [count] ~ Beta(alpha, alpha), drawn as G1 / (G1 + G2) from two Gamma(alpha) draws.

    numpy's Beta uses Johnk's rejection algorithm for alpha <= 1 (7x slower at alpha 1, where a
    Gamma draw is an exponential one). Draws whose two Gamma values both underflow to 0 (only
    for alpha far below 1) are drawn again by numpy's Beta."""
    gamma = generator.standard_gamma(alpha, (2, count))
    total = gamma[0] + gamma[1]
    if np.count_nonzero(total) < count:
        empty = total == 0
        gamma[0][empty] = generator.beta(alpha, alpha, int(np.count_nonzero(empty)))
        total[empty] = 1.0
    return gamma[0] / total


def draw_cutmix_boxes(lam: np.ndarray, *, height: int, width: int, generator: np.random.Generator) -> np.ndarray:
    """int64 [N, 4] official CutMix boxes on a `height` x `width` image: sides int(H * sqrt(1 - lam))
    and int(W * sqrt(1 - lam)), uniform centre, clipped."""
    grid = _column(height, width)
    return draw_centred_boxes(cutmix_sides(lam, grid=grid), grid=grid, generator=generator)


def cutmix_sides(lam: np.ndarray, *, grid: np.ndarray) -> np.ndarray:
    """int64 [2, N]: the official box sides int(H * sqrt(1 - lam)) and int(W * sqrt(1 - lam)) on
    `grid` ([2, 1] or [2, N]: height, width)."""
    ratio = np.sqrt(1.0 - np.asarray(lam, dtype=np.float64))
    return (ratio * grid).astype(np.int64)  # int() truncation, as the official code


def draw_centred_boxes(sides: np.ndarray, *, grid: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """int64 [N, 4] (a transposed view) from `sides` [2, N] (height, width): centre uniform in
    [0, H) x [0, W) of `grid` ([2, 1] or [2, N]); [c - side // 2, c + side // 2) clipped to it."""
    count = sides.shape[1]
    half = sides // 2
    centre = uniform_integers(grid, count=count, generator=generator)
    corners = np.empty((2, 2, count), dtype=np.int64)  # (y, x) x (low, high): y1, y2, x1, x2 once flattened
    np.subtract(centre, half, out=corners[:, 0])
    np.add(centre, half, out=corners[:, 1])
    np.maximum(corners, 0, out=corners)
    np.minimum(corners, grid[:, None], out=corners)
    return corners.reshape(4, count).T


def draw_minmax_boxes(
    minmax: tuple[float, float], *, count: int, grid: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    """int64 [N, 4] (a transposed view) timm's `cutmix_minmax` boxes on `grid` ([2, 1] or [2, N]):
    sides uniform in [int(H * min), int(H * max)) and [int(W * min), int(W * max)), never clipped."""
    lows, highs = minmax_side_ranges(minmax, grid=grid)
    sides = uniform_integers(highs - lows, count=count, generator=generator) + lows
    # The top-left corner uniform in [0, H - side) as timm's rand_bbox_minmax (`randint(0, img_h -
    # cut_h)`): the box never reaches the last row or column. side < int(H * max) <= H, so H - side >= 1.
    corner = uniform_integers(grid - sides, count=count, generator=generator)
    return np.stack((corner, corner + sides), axis=1).reshape(4, count).T


def minmax_side_ranges(minmax: tuple[float, float], *, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 (lows, highs), each shaped like `grid` ([2, N]: height, width): the box sides
    `cutmix_minmax` allows on each grid, [int(H * min), int(H * max)) as timm. Raises ValueError
    naming the first grid on which that range is empty."""
    low, high = minmax
    lows, highs = (grid * low).astype(np.int64), (grid * high).astype(np.int64)  # int(), as timm
    if (lows >= highs).any():
        height, width = grid[:, np.flatnonzero((lows >= highs).any(axis=0))[0]].tolist()
        raise ValueError(f"cutmix_minmax: {minmax} leaves no box sizes to draw from on a {height}x{width} grid")
    return lows, highs


def uniform_integers(highs: np.ndarray, *, count: int, generator: np.random.Generator) -> np.ndarray:
    """int64 [rows, count]: uniform on 0..highs - 1, with `highs` int [rows, 1] or [rows, count],
    as floor(u * high) of one uniform double u each. Off exact uniformity by at most high / 2**53
    (u takes 2**53 values), and 2-3x faster than `generator.integers` (no rejection loop)."""
    return (generator.random((len(highs), count)) * highs).astype(np.int64)


def draw_partners(kind: str, *, steps: int, batch_size: int, generator: np.random.Generator) -> np.ndarray:
    """int64 [steps, B]: per step a random permutation (the paper's code), flip (timm) or roll by
    one (torchvision)."""
    if kind == "permutation":  # shuffles a C-contiguous copy: each step's row is a contiguous [B]
        return generator.permuted(np.tile(np.arange(batch_size), (steps, 1)), axis=1)
    if kind == "flip":
        return np.tile(np.arange(batch_size - 1, -1, -1), (steps, 1))
    # x.roll(1, 0)[i] == x[i - 1]
    return np.tile((np.arange(batch_size) - 1) % max(batch_size, 1), (steps, 1))


def _is_integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@functools.lru_cache(maxsize=64)
def _column(*values: int) -> np.ndarray:
    """int64 [len(values), 1] (read-only, shared): per-row constants that broadcast over draws."""
    column = np.array(values, dtype=np.int64)[:, None]
    column.flags.writeable = False
    return column


MAX_ALPHA = 1e6  # the alphas' upper bound (the config's too: pipeline/config_rules.py)


def _check_sampler_options(
    *, mode, cutmix_alpha, mixup_alpha, cutmix_minmax, cutout_size, prob, switch_prob, per, partner
) -> None:
    for name, value in (("cutmix_alpha", cutmix_alpha), ("mixup_alpha", mixup_alpha), ("prob", prob),
                        ("switch_prob", switch_prob)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{name}: must be a number, got {value!r}")
    # Beta(a, a) past 10^6 is 0.5 to 3 decimals; inf drew lam NaN (mixup) or 0 with an inverted box
    # (cutmix), 1e308 lam 0 (the two Gamma draws' sum overflows): unmixed images, partners' targets.
    for name, value in (("cutmix_alpha", cutmix_alpha), ("mixup_alpha", mixup_alpha)):
        if not value <= MAX_ALPHA:  # NaN too
            raise ValueError(f"{name}: must be at most {MAX_ALPHA:g}, got {value}")
    choices_of = {"mode": SAMPLER_MODES, "per": PER_CHOICES, "partner": PARTNER_CHOICES}
    for name, value in (("mode", mode), ("per", per), ("partner", partner)):
        choices = choices_of[name]
        if value not in choices:
            raise ValueError(f"{name}: must be one of {choices}, got {value!r}")
    if mode in ("cutmix", "cutmix_or_mixup", "feature_cutmix") and cutmix_minmax is None and not cutmix_alpha > 0:
        raise ValueError(f"cutmix_alpha: must be > 0 with mode={mode!r}, got {cutmix_alpha}")
    if mode in ("mixup", "cutmix_or_mixup", "manifold_mixup") and not mixup_alpha > 0:
        raise ValueError(f"mixup_alpha: must be > 0 with mode={mode!r}, got {mixup_alpha}")
    if cutmix_minmax is not None and not (np.shape(cutmix_minmax) == (2,)  # a tuple, list, array or tensor
                                          and np.asarray(cutmix_minmax).dtype.kind in "fiu"
                                          and 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1):
        raise ValueError(f"cutmix_minmax: need (min, max) with 0 < min < max <= 1, got {cutmix_minmax}")
    if mode == "cutout" and cutout_size is None:
        raise ValueError("cutout_size: mode='cutout' needs a positive int box side in pixels, got None")
    if cutout_size is not None and not (_is_integer(cutout_size) and cutout_size > 0):
        raise ValueError(f"cutout_size: must be a positive int box side in pixels, got {cutout_size!r}")
    if cutout_size is not None and mode not in ("cutout", *WITH_CUTOUT):
        raise ValueError(f"cutout_size: Cutout goes alone (mode='cutout') or before {list(WITH_CUTOUT)}, "
                         f"not with mode={mode!r}")
    if cutout_size is not None and mode in WITH_CUTOUT and per != "batch":
        raise ValueError(f"per: Cutout + {mode} mixes whole batches, so per='batch'; got {per!r}")
    for name, value in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: must lie in [0, 1], got {value}")


def _check_layers(*, mode: str, per: str, layers: Sequence[str], layer_shapes: dict, cutmix_minmax) -> None:
    if mode not in FEATURE_MODES:
        return
    if per != "batch":
        raise ValueError(f"per: mode={mode!r} mixes one layer per batch, so per='batch'; got {per!r}")
    if not layers:
        raise ValueError(f"layers: mode={mode!r} needs at least one layer to mix at")
    missing = [name for name in layers if name != INPUT_LAYER and name not in layer_shapes]
    if missing:
        raise ValueError(f"layer_shapes: no (height, width) for layers {missing}")
    grids = [layer_shapes[name] for name in layers if name != INPUT_LAYER]
    if cutmix_minmax is not None and mode == "feature_cutmix" and grids:
        # Known now, so checked now: not at the first draw that happens to pick a small layer.
        minmax_side_ranges(cutmix_minmax, grid=np.array(grids, dtype=np.int64).T)
