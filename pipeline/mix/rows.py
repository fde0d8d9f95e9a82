"""`ResolvedMix`: one batch's mix as one packed int32 row per sample, on the host.

The row is what the Triton kernel reads, so packing is done once, where the parameters are
checked (`params.resolve_mix`) or drawn (`MixSampler`), and the step hands the GPU one small copy
(a sampler's draws: one copy per block of steps, `RowBlock`):

    columns 0-3  box (y1, y2, x1, x2), half-open; zeros where the mode has no box
    column  4    partner: the sample whose pixels and label mix in (the sample itself if none)
    columns 5-8  float32 bits of the pixel weights: own inside the box, partner inside,
                 own outside, partner outside (they encode the mode for the kernel)
    column  9    float32 bits of lambda, the weight of the own label in the soft targets

numpy, not torch: a step packs a few hundred values, and numpy's per-call cost is a third of
torch's (issue 11: the host side of a step was 17x the kernel, mostly chains of tiny torch ops).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .staging import to_device

# Position in this tuple is the code the Triton kernel and the reference switch on.
MODES = ("none", "cutmix", "mixup", "cutout")
MODE_CODES = {name: code for code, name in enumerate(MODES)}
# Modes whose pixels come (partly) from a partner sample, and modes that use a box; as masks
# indexed by mode code.
PARTNER_MODES = ("cutmix", "mixup")
BOX_MODES = ("cutmix", "cutout")
USES_PARTNER = np.array([name in PARTNER_MODES for name in MODES])
USES_BOX = np.array([name in BOX_MODES for name in MODES])

ROW_COLUMNS = 10
BOX_COLUMNS = slice(0, 4)
PARTNER_COLUMN = 4
WEIGHT_COLUMNS = slice(5, 9)
LAM_COLUMN = 9

# The pixel weights of each mode (rows in MODES order) as base + lam * per_lam, side by side.
# Inside the box cutmix takes the partner and cutout nothing; mixup blends everywhere (its box
# is empty).
_WEIGHTS_BASE_AND_PER_LAM = np.array([
    [1, 0, 1, 0, 0, 0, 0, 0],  # none
    [0, 1, 1, 0, 0, 0, 0, 0],  # cutmix
    [0, 1, 0, 1, 1, -1, 1, -1],  # mixup
    [0, 0, 1, 0, 0, 0, 0, 0],  # cutout
], dtype=np.float32)

# The same, one column per row of a batch's weights (`pack` takes columns by mode code).
_WEIGHT_COLUMNS = np.ascontiguousarray(_WEIGHTS_BASE_AND_PER_LAM.T)
# The same as numpy float32 scalars, for one row at a time.
_WEIGHT_SCALARS = [tuple(row) for row in _WEIGHTS_BASE_AND_PER_LAM]

Box = tuple[int, int, int, int]
NO_BOX = (0, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class ResolvedMix:
    """MixParams checked against one batch: mode codes and packed rows, host numpy arrays.

    `boxes`, `partner`, `lam` and `mode_codes` read the rows back as CPU tensors; `on_device`
    is the rows on a device, copied at most once per device (once per `RowBlock` for a draw of
    a MixSampler, whose rows are a step of one).
    """

    codes: np.ndarray  # int64 [B], indices into MODES
    rows: np.ndarray  # int32 [B, ROW_COLUMNS], the layout above
    height: int  # the grid the boxes lie on (image, or a model layer's output)
    width: int
    # Not arguments (init=False), so dataclasses.replace starts a copy without them: its rows may differ.
    _on_device: dict = field(default_factory=dict, init=False, repr=False)
    # (block, step): `rows` is block.rows[step], and goes to a device with the whole block.
    _block: Optional[tuple["RowBlock", int]] = field(default=None, init=False, repr=False)

    @classmethod
    def pack(cls, *, codes: np.ndarray, boxes: np.ndarray, partner: np.ndarray, lam: np.ndarray, height: int,
             width: int) -> "ResolvedMix":
        """Rows from checked per-sample values: `codes` [B], `boxes` [B, 4] (zeros where the mode
        has none), `partner` [B], `lam` [B] as the label weights of the modes."""
        rows = pack_rows(codes=codes, boxes=boxes, partner=_own_partner(partner, USES_PARTNER.take(codes)), lam=lam)
        return cls(codes=codes, rows=rows, height=height, width=width)

    @classmethod
    def pack_uniform(cls, *, code: int, box: Union[Box, np.ndarray], lam: float, partner: np.ndarray, height: int,
                     width: int) -> "ResolvedMix":
        """`pack` for one mode and lambda shared by the batch (a per-batch draw, Cutout's holes), and
        one box for all or `box` [B, 4]: a row built in Python scalars (numpy float32 arithmetic, as
        in `pack`), copied to each sample."""
        batch_size = len(partner)
        lam = np.float32(lam)
        table = _WEIGHT_SCALARS[code]
        weights = [base + per_lam * lam for base, per_lam in zip(table[:4], table[4:])]
        rows = np.empty((batch_size, ROW_COLUMNS), dtype=np.int32)
        shared_box = box if isinstance(box, tuple) else NO_BOX
        rows[:] = [*shared_box, 0, *struct.unpack("5i", struct.pack("5f", *weights, lam))]
        if shared_box is not box:
            rows[:, BOX_COLUMNS] = box
        rows[:, PARTNER_COLUMN] = partner if USES_PARTNER[code] else own_rows(batch_size)
        return cls(codes=same_codes(code, batch_size), rows=rows, height=height, width=width)

    @property
    def mode_codes(self) -> Tensor:
        """int64 [B], indices into MODES."""
        return torch.from_numpy(np.array(self.codes, dtype=np.int64))

    @property
    def boxes(self) -> Tensor:
        """int64 [B, 4] (y1, y2, x1, x2); zeros where the mode has no box."""
        return torch.from_numpy(self.rows[:, BOX_COLUMNS].astype(np.int64))

    @property
    def partner(self) -> Tensor:
        """int64 [B]; the sample itself where the mode has no partner."""
        return torch.from_numpy(self.rows[:, PARTNER_COLUMN].astype(np.int64))

    @property
    def lam(self) -> Tensor:
        """float32 [B], the weight of the own label (and of the own pixels in mixup)."""
        return torch.from_numpy(self.rows[:, LAM_COLUMN].view(np.float32).copy())

    def uniform_box(self, rows: Union[np.ndarray, Tensor]) -> Union[Box, None]:
        """The box shared by all `rows` (per-batch mode), or None when they differ."""
        selected = self.rows[np.asarray(rows), BOX_COLUMNS]
        if len(selected) == 0 or not (selected == selected[0]).all():
            return None
        return tuple(int(v) for v in selected[0])

    def on_device(self, device: torch.device) -> Tensor:
        """int32 [B, ROW_COLUMNS] on `device`: the host rows themselves on the CPU; elsewhere one
        asynchronous copy through reused pinned memory (`staging`), made once per device."""
        if device.type == "cpu":
            return torch.from_numpy(self.rows)
        if self._block is not None:
            block, step = self._block
            return block.on_device(device)[step]
        if device not in self._on_device:
            self._on_device[device] = to_device(self.rows, device)
        return self._on_device[device]


class RowBlock:
    """The packed rows of several steps, int32 [steps, B, ROW_COLUMNS], that go to a device in one
    copy: the first step asked for on a device copies the block, the later steps take their slice.

    A MixSampler draws LOOKAHEAD steps at once; without this, each step's rows were a copy of their
    own (a memcpy into pinned memory, an allocation, a copy launch and an event per step: issue 11,
    the host side of a step). The block's device copy lives as long as one of its steps does."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self._on_device: dict = {}

    def step(self, step: int, *, codes: np.ndarray, height: int, width: int) -> ResolvedMix:
        """Step `step` of the block as a ResolvedMix on a `height` x `width` grid."""
        resolved = ResolvedMix(codes=codes, rows=self.rows[step], height=height, width=width)
        object.__setattr__(resolved, "_block", (self, step))
        return resolved

    def on_device(self, device: torch.device) -> tuple[Tensor, ...]:
        """Each step's rows on `device` (int32 [B, ROW_COLUMNS] views of one copy), copied once per device."""
        steps = self._on_device.get(device)
        if steps is None:
            steps = self._on_device[device] = to_device(self.rows, device).unbind(0)
        return steps


def pack_rows(*, codes: np.ndarray, boxes: np.ndarray, partner: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """int32 [N, ROW_COLUMNS], the layout above, from `codes` [N], `boxes` [N, 4], `partner` [N]
    (already the row itself where the mode takes no partner) and `lam` [N]."""
    # Built column by column in a [ROW_COLUMNS, N] array, then transposed once: numpy's cost on
    # [N, 4] slices is per row (4-value inner loops), on [4, N] per call.
    columns = np.empty((ROW_COLUMNS, len(codes)), dtype=np.int32)
    columns[BOX_COLUMNS] = np.asarray(boxes).T
    columns[PARTNER_COLUMN] = partner
    table = _WEIGHT_COLUMNS.take(codes, axis=1)
    lam = np.asarray(lam, dtype=np.float32)
    floats = columns[WEIGHT_COLUMNS.start :].view(np.float32)  # weights and lambda, as float32 bits
    np.multiply(table[4:], lam, out=floats[:4])
    floats[:4] += table[:4]  # float32: 1 + (-1) * lam rounds as 1 - lam does
    floats[4] = lam
    return np.ascontiguousarray(columns.T)


@functools.lru_cache(maxsize=32)
def own_rows(batch_size: int) -> np.ndarray:
    """int64 [B] 0, 1, .., B - 1 (read-only, shared): every sample its own partner."""
    own = np.arange(batch_size)
    own.flags.writeable = False
    return own


@functools.lru_cache(maxsize=32)
def same_codes(code: int, batch_size: int) -> np.ndarray:
    """int64 [B] all `code`: one read-only array per (code, B), shared by the draws that use it."""
    codes = np.full(batch_size, code)
    codes.flags.writeable = False
    return codes


def _own_partner(partner: np.ndarray, uses_partner: np.ndarray) -> np.ndarray:
    """Rows that take nothing from a partner read only themselves (keeps the kernel's reads exact)."""
    if uses_partner.all():
        return partner
    return np.where(uses_partner, partner, own_rows(len(partner)))


def device_partner(rows: Tensor) -> Tensor:
    """The partner column of rows `on_device` (int32 [B], a strided view)."""
    return rows[:, PARTNER_COLUMN]


def device_lam(rows: Tensor) -> Tensor:
    """The lambda column of rows `on_device` (float32 [B], a strided view of the same bits)."""
    return rows[:, LAM_COLUMN].view(torch.float32)
