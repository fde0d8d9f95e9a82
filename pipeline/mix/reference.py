"""Plain PyTorch mixing: the CPU path, and the unfused baseline the Triton kernel is measured against.

It computes the same function as `triton_kernel.mix_triton`, in chunks of samples: convert to
float32, paste CutMix boxes from the partners, blend Mixup pairs, normalize, zero Cutout boxes,
cast (with colour maps, the batch is coloured first, as a whole). Without them no full-batch
float32 temporary is allocated for bf16/fp16 outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .color import apply_maps
from .rows import BOX_COLUMNS, MODE_CODES, PARTNER_COLUMN, ResolvedMix, device_lam, device_partner
from .staging import to_device
from .targets import mix_targets

# float32 bytes per chunk of samples. Big enough that a batch is a few large tensor ops (each op
# is an OpenMP parallel region, and many small ones stall whenever a core is busy elsewhere);
# small enough that the reused bf16/fp16 scratch stays under glibc's 32 MiB mmap threshold,
# so it is not page-faulted in afresh on every call.
CHUNK_BYTES = 16 * 1024 * 1024


def mix_reference(
    source: Tensor,
    labels: Tensor,
    *,
    resolved: ResolvedMix,
    scale: Tensor,
    shift: Tensor,
    label_smoothing: float,
    out_images: Tensor,
    out_targets: Tensor,
    color: Tensor | None = None,
) -> None:
    """Write the mixed, normalized images into `out_images` and the soft targets into `out_targets`.

    `source` is the batch as an NCHW view (any strides, uint8 or float); `scale` and `shift` (on
    any device) are the per-channel normalization `value * scale + shift` in the source's units;
    `color`, the per-image colour maps in those units (`color.maps_in_units`), or None.
    """
    if color is not None:  # the whole batch coloured first: a float32 copy (the kernel makes none)
        source = apply_maps(source, color)
    batch_size, channels, height, width = source.shape
    rows = resolved.on_device(source.device)  # the host rows themselves on the CPU
    per_chunk = max(1, CHUNK_BYTES // (channels * height * width * 4))
    # Float32 output is its own workspace; bf16/fp16 go through one reused float32 chunk.
    scratch = None
    if out_images.dtype != torch.float32:
        scratch = torch.empty_like(out_images[:per_chunk], dtype=torch.float32)
    for start in range(0, batch_size, per_chunk):
        stop = min(start + per_chunk, batch_size)
        work = out_images[start:stop] if scratch is None else scratch[: stop - start]
        work.copy_(source[start:stop])
        _paste_cutmix(work, source, resolved, rows, start=start)
        _blend_mixup(work, source, resolved, rows, start=start)
        _normalize_in_place(work, scale=scale, shift=shift)
        _zero_cutout(work, resolved, start=start)
        if scratch is not None:
            out_images[start:stop].copy_(work)
    out_targets.copy_(
        mix_targets(labels, resolved, num_classes=out_targets.shape[1], label_smoothing=label_smoothing)
    )


def _rows_of(resolved: ResolvedMix, mode: str, *, start: int, stop: int) -> np.ndarray:
    """Indices (into the batch) of the samples in [start, stop) that use `mode`."""
    return np.flatnonzero(resolved.codes[start:stop] == MODE_CODES[mode]) + start


def _paste_cutmix(work: Tensor, source: Tensor, resolved: ResolvedMix, rows: Tensor, *, start: int) -> None:
    """Overwrite each CutMix sample's box in `work` (samples from `start` on) with its partner's pixels."""
    cutmix = _rows_of(resolved, "cutmix", start=start, stop=start + len(work))
    if len(cutmix) == 0:
        return
    # Indexed as NHWC: on the loader's channels-last bytes, copies through the NCHW view take
    # strided slow paths (index_select 9x, box assignment 9x slower here).
    work_nhwc, source_nhwc = work.permute(0, 2, 3, 1), source.permute(0, 2, 3, 1)
    box = resolved.uniform_box(cutmix)
    if box is not None and len(cutmix) == len(work):
        # Per-batch CutMix: one box for every sample, one gather of the partners' box pixels.
        y1, y2, x1, x2 = box
        partner = device_partner(rows)[start : start + len(work)]
        work_nhwc[:, y1:y2, x1:x2] = source_nhwc[:, y1:y2, x1:x2].index_select(0, partner)
        return
    for row in cutmix.tolist():
        y1, y2, x1, x2, partner = resolved.rows[row, : PARTNER_COLUMN + 1].tolist()
        work_nhwc[row - start, y1:y2, x1:x2] = source_nhwc[partner, y1:y2, x1:x2]


def _blend_mixup(work: Tensor, source: Tensor, resolved: ResolvedMix, rows: Tensor, *, start: int) -> None:
    mixup = _rows_of(resolved, "mixup", start=start, stop=start + len(work))
    if len(mixup) == 0:
        return
    if len(mixup) == len(work):
        chunk = slice(start, start + len(work))
    else:
        chunk = to_device(mixup, rows.device)
    lam = device_lam(rows)[chunk].view(-1, 1, 1, 1)
    # Partners come from the untouched source (a partner may itself be a CutMix sample),
    # gathered through the NHWC view for the same reason as in _paste_cutmix.
    partner_rows = device_partner(rows)[chunk]
    partners = source.permute(0, 2, 3, 1).index_select(0, partner_rows).permute(0, 3, 1, 2).to(torch.float32)
    if len(mixup) == len(work):
        work.mul_(lam).add_(partners.mul_(1.0 - lam))
        return
    local = to_device(mixup - start, work.device)
    work[local] = work[local] * lam + partners * (1.0 - lam)


def _normalize_in_place(work: Tensor, *, scale: Tensor, shift: Tensor) -> None:
    """work = work * scale + shift per channel, in one pass (addcmul may write over its input)."""
    _, channels, _, width = work.shape
    scale, shift = scale.to(work.device), shift.to(work.device)
    if work.is_contiguous(memory_format=torch.channels_last) and not work.is_contiguous():
        # Channels-last: broadcasting [1, C, 1, 1] gives an inner loop of C = 3 values that does
        # not vectorize (5x slower). Tiled over a row, the constants cover W * C contiguous values.
        rows = work.permute(0, 2, 3, 1).view(-1, width * channels)
        torch.addcmul(shift.repeat(width), rows, scale.repeat(width), out=rows)
    else:
        torch.addcmul(shift.view(1, -1, 1, 1), work, scale.view(1, -1, 1, 1), out=work)


def _zero_cutout(work: Tensor, resolved: ResolvedMix, *, start: int) -> None:
    for row in _rows_of(resolved, "cutout", start=start, stop=start + len(work)).tolist():
        y1, y2, x1, x2 = resolved.rows[row, BOX_COLUMNS].tolist()
        work[row - start, :, y1:y2, x1:x2] = 0.0
