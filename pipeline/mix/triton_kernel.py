"""The fused mixing kernel: uint8 (or float) batch -> mixed, normalized, cast, channels-last batch.

One program writes one BLOCK of one sample's H*W*C values. For each value it reads the own
pixel, the partner's pixel, or neither (masked loads: a CutMix pixel is read only from the
sample it ends up coming from), blends them with per-sample weights that encode the mode,
normalizes, casts and stores once. The first program of each sample also writes that sample's
row of soft targets, so the whole step is one launch. With colour maps (COLOR, color.py) each
value read goes through its image's map first, for which the kernel reads the pixel's three
channels (three loads of bytes the tile reads anyway: no more memory traffic, more load
instructions).

On CPU tensors the kernel runs only under the Triton interpreter: TRITON_INTERPRET=1 must be set
before this module is imported (triton.jit picks the interpreter when it decorates). The kernel
calls none of the @jit functions of Triton's standard library (tl.zeros, tl.sum, ...): those are
decorated when triton itself is imported, which torch or torchvision may have done already.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from .color import GREY, MAP_COLUMNS
from .rows import ROW_COLUMNS, ResolvedMix
from .staging import to_device
from .targets import smoothing_values

# Per-sample row handed to the kernel as int32 (rows.py): box (y1, y2, x1, x2), partner, then the
# float32 bits of the weights (own inside box, partner inside box, own outside, partner outside)
# and of the target lambda. One small host-to-device copy per batch instead of five.
PACKED_COLUMNS = tl.constexpr(ROW_COLUMNS)
# The colour maps' table (color.py): its width and the grey weights, compiled in.
MAP_WIDTH = tl.constexpr(MAP_COLUMNS)
GREY_RED, GREY_GREEN, GREY_BLUE = (tl.constexpr(weight) for weight in GREY)

# Elements per program: with 4 warps (128 threads) each thread holds 16 values, so the dense path
# reads 16 uint8 values in one 128-bit load and stores 2 x 8 bf16 in two 128-bit stores (checked in
# the sm_90 PTX by tests/test_mix_compile.py; 1024 gave 64-bit loads). Its speed on a GPU against
# a copy is bench/gpu_suite.py's to measure (issue 11).
DEFAULT_BLOCK = 2048


@triton.jit
def _write_soft_targets(
    targets_ptr, labels_ptr, sample, partner, lam, num_classes, off_value, on_minus_off, BLOCK: tl.constexpr
):
    own_label = tl.load(labels_ptr + sample)
    partner_label = tl.load(labels_ptr + partner)
    row_ptr = targets_ptr + sample * num_classes
    for start in range(0, num_classes, BLOCK):
        classes = start + tl.arange(0, BLOCK)
        weight = lam * (classes == own_label).to(tl.float32) + (1.0 - lam) * (classes == partner_label).to(tl.float32)
        tl.store(row_ptr + classes, off_value + on_minus_off * weight, mask=classes < num_classes)


@triton.jit
def _channel_affine(scale_ptr, shift_ptr, channel, CHANNELS: tl.constexpr, BLOCK: tl.constexpr):
    # C scalar loads and selects instead of a per-element gather of the channel's constants.
    scale = tl.full([BLOCK], 0.0, tl.float32)
    shift = tl.full([BLOCK], 0.0, tl.float32)
    for c in tl.static_range(CHANNELS):
        scale = tl.where(channel == c, tl.load(scale_ptr + c), scale)
        shift = tl.where(channel == c, tl.load(shift_ptr + c), shift)
    return scale, shift


@triton.jit
def _colored(pixel_ptr, channel_step, channel, mask, map_ptr, BLOCK: tl.constexpr):
    # One image's colour map (color.py) on the values of its pixels at pixel_ptr: the value's own
    # channel and the pixel's grey, from the pixel's three channels (three loads of the same bytes).
    red = tl.load(pixel_ptr, mask=mask, other=0).to(tl.float32)
    green = tl.load(pixel_ptr + channel_step, mask=mask, other=0).to(tl.float32)
    blue = tl.load(pixel_ptr + 2 * channel_step, mask=mask, other=0).to(tl.float32)
    value = tl.where(channel == 0, red, tl.where(channel == 1, green, blue))
    grey = GREY_RED * red + GREY_GREEN * green + GREY_BLUE * blue
    offset = tl.full([BLOCK], 0.0, tl.float32)
    for c in tl.static_range(3):
        offset = tl.where(channel == c, tl.load(map_ptr + 2 + c), offset)
    return tl.load(map_ptr + 0) * value + tl.load(map_ptr + 1) * grey + offset


@triton.jit
def _mix_kernel(
    source_ptr, out_ptr, targets_ptr, labels_ptr, packed_ptr, scale_ptr, shift_ptr, color_ptr,
    source_stride_n, source_stride_c, source_stride_h, source_stride_w,
    out_stride_n, out_stride_c, out_stride_h, out_stride_w,
    num_classes, off_value, on_minus_off,
    HEIGHT: tl.constexpr, WIDTH: tl.constexpr, CHANNELS: tl.constexpr,
    DENSE_NHWC: tl.constexpr, BLOCK: tl.constexpr, TILE_LOADS: tl.constexpr, COLOR: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    sample = tl.program_id(1).to(tl.int64)
    row = packed_ptr + sample * PACKED_COLUMNS
    y1, y2 = tl.load(row + 0), tl.load(row + 1)
    x1, x2 = tl.load(row + 2), tl.load(row + 3)
    partner = tl.load(row + 4).to(tl.int64)
    own_in = tl.load(row + 5).to(tl.float32, bitcast=True)
    partner_in = tl.load(row + 6).to(tl.float32, bitcast=True)
    own_out = tl.load(row + 7).to(tl.float32, bitcast=True)
    partner_out = tl.load(row + 8).to(tl.float32, bitcast=True)

    # Values in (h, w, c) order: contiguous in a channels-last tensor. C and W are constexpr,
    # so these divisions compile to multiply-shift.
    index = tile * BLOCK + tl.arange(0, BLOCK)
    valid = index < HEIGHT * WIDTH * CHANNELS
    pixel = index // CHANNELS
    channel = index - pixel * CHANNELS
    h = pixel // WIDTH
    w = pixel - h * WIDTH
    inside = (h >= y1) & (h < y2) & (w >= x1) & (w < x2)
    own_weight = tl.where(inside, own_in, own_out)
    partner_weight = tl.where(inside, partner_in, partner_out)

    if DENSE_NHWC and TILE_LOADS:
        # Whole-tile decisions: a mask that is the same for every value of the tile lets the
        # compiler issue wide (vector) loads; a per-value mask (the box edge falls every few
        # values) forces one load per byte. A tile reads the partner only if it has a partner
        # weight somewhere (outside the box, or inside and the tile's rows meet the box's), and
        # its own image likewise; the values it reads but weights 0 are discarded by tl.where
        # (never multiplied: a NaN in an unused float pixel stays out of the result).
        first_row = (tile * BLOCK) // (WIDTH * CHANNELS)
        last_row = (tile * BLOCK + BLOCK - 1) // (WIDTH * CHANNELS)
        meets_box = (first_row < y2) & (last_row >= y1) & (x1 < x2)  # some value of the tile is inside
        leaves_box = (first_row < y1) | (last_row >= y2) | (x1 > 0) | (x2 < WIDTH)  # some value is outside
        need_own = ((own_out != 0.0) & leaves_box) | ((own_in != 0.0) & meets_box)
        need_partner = ((partner_out != 0.0) & leaves_box) | ((partner_in != 0.0) & meets_box)
        # As blocks (the interpreter does not broadcast a scalar into a boolean block).
        own_mask = valid & ((index * 0 + need_own.to(tl.int32)) != 0)
        partner_mask = valid & ((index * 0 + need_partner.to(tl.int32)) != 0)
        if COLOR:
            pixel_start = index - channel  # the pixel's first channel: the colour map needs all three
            own_raw = _colored(source_ptr + sample * source_stride_n + pixel_start, 1, channel, own_mask,
                               color_ptr + sample * MAP_WIDTH, BLOCK)
            partner_raw = _colored(source_ptr + partner * source_stride_n + pixel_start, 1, channel, partner_mask,
                                   color_ptr + partner * MAP_WIDTH, BLOCK)
        else:
            own_raw = tl.load(source_ptr + sample * source_stride_n + index, mask=own_mask, other=0)
            partner_raw = tl.load(source_ptr + partner * source_stride_n + index, mask=partner_mask, other=0)
        own_value = tl.where(own_weight != 0.0, own_raw.to(tl.float32), 0.0)
        partner_value = tl.where(partner_weight != 0.0, partner_raw.to(tl.float32), 0.0)
        out_offset = index
    else:  # per-value masks (strided tensors; TILE_LOADS=False: the earlier dense path, for comparison)
        if DENSE_NHWC:
            source_offset = index
            out_offset = index
        else:
            source_offset = channel * source_stride_c + h * source_stride_h + w * source_stride_w
            out_offset = channel * out_stride_c + h * out_stride_h + w * out_stride_w
        own_mask = valid & (own_weight != 0.0)
        partner_mask = valid & (partner_weight != 0.0)
        if COLOR:
            pixel_start = source_offset - channel * source_stride_c
            own_value = _colored(source_ptr + sample * source_stride_n + pixel_start, source_stride_c, channel,
                                 own_mask, color_ptr + sample * MAP_WIDTH, BLOCK)
            partner_value = _colored(source_ptr + partner * source_stride_n + pixel_start, source_stride_c, channel,
                                     partner_mask, color_ptr + partner * MAP_WIDTH, BLOCK)
            # A value read nowhere (weight 0) is dropped before it is multiplied (NaN stays out).
            own_value = tl.where(own_mask, own_value, 0.0)
            partner_value = tl.where(partner_mask, partner_value, 0.0)
        else:
            own_value = tl.load(source_ptr + sample * source_stride_n + source_offset, mask=own_mask,
                                other=0).to(tl.float32)
            partner_value = tl.load(source_ptr + partner * source_stride_n + source_offset, mask=partner_mask,
                                    other=0).to(tl.float32)
    scale, shift = _channel_affine(scale_ptr, shift_ptr, channel, CHANNELS, BLOCK)
    # Normalizing each term is affine, so the weights multiply the shift too: cutout's zero
    # weights give exactly 0 (the mean colour), mixup's lam + (1 - lam) gives the plain shift.
    value = (own_weight * own_value + partner_weight * partner_value) * scale + (own_weight + partner_weight) * shift
    tl.store(out_ptr + sample * out_stride_n + out_offset, value.to(out_ptr.dtype.element_ty), mask=valid)

    if tile == 0:
        lam = tl.load(row + 9).to(tl.float32, bitcast=True)
        _write_soft_targets(
            targets_ptr, labels_ptr, sample, partner, lam, num_classes, off_value, on_minus_off, BLOCK
        )


def mix_triton(
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
    """Copy the packed per-sample rows to the device (once per `resolved`), launch the fused kernel.

    Same contract as `reference.mix_reference`, in one kernel launch.
    """
    if not source.is_cuda and not _is_interpreted():
        raise ValueError(
            "backend='triton' got CPU tensors: set TRITON_INTERPRET=1 before importing "
            "pipeline.mix.triton_kernel, or use backend='reference'"
        )
    device = source.device
    if scale.device != device:  # apply_mix passes them on the device already
        scale, shift = (to_device(constants.numpy(), device) for constants in (scale, shift))
    launch_mix_kernel(
        source, labels.contiguous(), packed=resolved.on_device(device), scale=scale, shift=shift,
        label_smoothing=label_smoothing, out_images=out_images, out_targets=out_targets, color=color,
    )  # fmt: skip


def launch_mix_kernel(
    source: Tensor,
    labels: Tensor,
    *,
    packed: Tensor,
    scale: Tensor,
    shift: Tensor,
    label_smoothing: float,
    out_images: Tensor,
    out_targets: Tensor,
    block: int = DEFAULT_BLOCK,
    tile_loads: bool = True,
    color: Tensor | None = None,
) -> None:
    """The bare launch, every tensor already on the device (what the benchmark times).
    ``tile_loads=False`` (with ``block=1024``) is the earlier per-value masked dense path, kept so
    that a GPU benchmark can time both in one run. ``color``: contiguous float32 colour maps
    [B, 5] in the source's units (``color.maps_in_units``), or None."""
    batch_size, channels, height, width = source.shape
    num_classes = out_targets.shape[1]
    off_value, on_value = smoothing_values(num_classes=num_classes, label_smoothing=label_smoothing)
    dense = _is_dense_nhwc(source) and _is_dense_nhwc(out_images)
    grid = (triton.cdiv(height * width * channels, block), batch_size)
    _mix_kernel[grid](
        source, out_images, out_targets, labels, packed, scale, shift,
        scale if color is None else color,  # without colour the kernel never reads this pointer
        *source.stride(), *out_images.stride(),
        num_classes, off_value, on_value - off_value,
        HEIGHT=height, WIDTH=width, CHANNELS=channels, DENSE_NHWC=dense, BLOCK=block, TILE_LOADS=tile_loads,
        COLOR=color is not None,
    )  # fmt: skip


def pack_rows(resolved: ResolvedMix) -> Tensor:
    """int32 [B, PACKED_COLUMNS] on the CPU: each sample's box, partner, mode weights and target lambda."""
    return torch.from_numpy(resolved.rows)


def _is_dense_nhwc(tensor: Tensor) -> bool:
    # Dense per sample in (h, w, c) order; the batch stride is passed to the kernel as it is.
    _, channels, height, width = tensor.shape
    expected = {1: 1, 2: width * channels, 3: channels}
    return all(tensor.shape[dim] == 1 or tensor.stride(dim) == stride for dim, stride in expected.items())


def _is_interpreted() -> bool:
    return _INTERPRETED


# Decided when the kernel was decorated (see the module docstring); read once, not per call.
_INTERPRETED = isinstance(_mix_kernel, InterpretedFunction)
