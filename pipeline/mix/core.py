"""`apply_mix`: the functional core between the loader and the model.

It checks its arguments, resolves the mix parameters against the batch, allocates the outputs
and hands them to a backend: the fused Triton kernel on CUDA, the plain PyTorch reference on the
CPU. Both compute the same function; `backend=` forces one (tests run the kernel on the CPU under
TRITON_INTERPRET=1).

The host side of a CUDA step reads no device value and allocates no pinned memory: a sampler's
draw arrives packed (`rows.ResolvedMix`), its rows reach the GPU with those of the sampler's other
steps of its block (`rows.RowBlock`: one asynchronous copy per LOOKAHEAD steps) through reused
pinned memory (`staging`), the normalization constants are copied once per (device, mean,
std), and the kernel writes the soft targets from the copied rows.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Sequence

import torch
from torch import Tensor

from .color import check_maps, maps_in_units
from .feature import mix_features
from .params import MixParams, resolve_holes, resolve_mix
from .reference import mix_reference
from .rows import ResolvedMix
from .staging import to_device

BACKENDS = ("auto", "triton", "reference")
OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MEMORY_FORMATS = (torch.channels_last, torch.contiguous_format)
_TRITON_MODULE = f"{__package__}.triton_kernel"


def apply_mix(
    images: Tensor,
    labels: Tensor,
    *,
    params: MixParams,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    label_smoothing: float = 0.0,
    out_dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.channels_last,
    backend: str = "auto",
    check_labels: bool = True,
    color: Tensor | None = None,
    check_range: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mix, normalize and cast a batch; return (images [B, C, H, W], soft targets float32 [B, K]).

    images: uint8 [B, H, W, C] (NHWC, as the loader delivers) with values 0..255, or float
        [B, C, H, W] (any strides) with values in [0, 1].
    labels: integer class indices [B] on the same device.
    params: mode, lambda, box(es) and partner of this batch (MixSampler draws them).
    mean, std: per-channel normalization in [0, 1] units (ImageNet: 0.485.., 0.229..).
    num_classes, label_smoothing: soft targets, timm's smoothing convention.
    out_dtype, memory_format: of the returned images (channels_last by default).
    backend: "auto" (Triton on CUDA, reference elsewhere), "triton" or "reference".
    check_labels: check labels lie in [0, num_classes); on CUDA this is a device sync, so a hot
        loop over trusted data may turn it off.
    color: per-image colour maps, float32 [B, 5] on the images' device (``pipeline/mix/color.py``;
        the ImageNet recipe's jitter and lighting: ``pipeline.data.color.ColorAugment.maps``), in
        [0, 1] units: every pixel read from an image goes through that image's map before it is
        mixed and normalized (RGB images only). None: no colour change.
    check_range: check float images are in [0, 1] units (within ``FLOAT_RANGE``: a resize's
        overshoot and an unclamped colour step stay inside): 0..255 floats, or images normalized
        already, come out silently wrong. A pass over the batch and, on CUDA, a device sync; uint8
        images are not checked (every value is valid).
    """
    if not isinstance(params, MixParams):
        raise ValueError(f"params: expected the MixParams of this batch (MixSampler.sample draws them), "
                         f"got {type(params).__name__}")
    if params.layer is not None:
        raise ValueError(f"params: these mix layer {params.layer!r} of the model, not the images: "
                         "use pipeline.mix.feature.FeatureMixer")
    source = _as_nchw(images, channels=len(mean))
    batch_size, channels, height, width = source.shape
    _check_labels(
        labels, batch_size=batch_size, num_classes=num_classes, device=images.device, check_values=check_labels
    )
    _check_options(out_dtype=out_dtype, memory_format=memory_format, label_smoothing=label_smoothing, backend=backend)
    if check_range and source.dtype != torch.uint8 and source.numel():
        _check_float_range(source)
    if color is not None:
        check_maps(color, batch_size=batch_size, channels=channels, device=images.device)
    resolved = resolve_mix(params, batch_size=batch_size, height=height, width=width)
    options = dict(mean=mean, std=std, num_classes=num_classes, label_smoothing=label_smoothing, out_dtype=out_dtype,
                   memory_format=memory_format, backend=backend, color=color)
    if params.cutout_boxes is not None:
        return _cutout_then_mix(source, labels, params=params, resolved=resolved, **options)
    return _run_backend(source, labels, resolved=resolved, **options)


def _run_backend(source: Tensor, labels: Tensor, *, resolved: ResolvedMix, mean: Sequence[float],
                 std: Sequence[float], num_classes: int, label_smoothing: float, out_dtype: torch.dtype,
                 memory_format: torch.memory_format, backend: str, color: Tensor | None) -> tuple[Tensor, Tensor]:
    """Allocate the outputs and hand the checked, packed batch to the backend."""
    from_uint8 = source.dtype == torch.uint8
    scale, shift = _normalization_on(source.device, tuple(map(float, mean)), tuple(map(float, std)),
                                     from_uint8=from_uint8)
    if color is not None:  # the backends apply the maps to pixels in the source's own units
        color = maps_in_units(color, value_range=255.0 if from_uint8 else 1.0)
    out_images = torch.empty(source.shape, dtype=out_dtype, device=source.device, memory_format=memory_format)
    out_targets = torch.empty(source.shape[0], num_classes, dtype=torch.float32, device=source.device)
    run_backend = _choose_backend(backend, device=source.device)
    run_backend(
        source,
        labels,
        resolved=resolved,
        scale=scale,
        shift=shift,
        label_smoothing=label_smoothing,
        out_images=out_images,
        out_targets=out_targets,
        color=color,
    )
    return out_images, out_targets


def _cutout_then_mix(source: Tensor, labels: Tensor, *, params: MixParams, resolved: ResolvedMix,
                     **options) -> tuple[Tensor, Tensor]:
    """Cutout + Mixup: a hole in every image (the cutout mode, in the kernel), then the batch
    mixed as ``resolved`` says. Mixing after normalization is the same as before it (the affine map
    keeps weights that sum to 1), and the holes are zeros after normalization, as Cutout's.

    One backend pass cuts the holes and writes the final targets: the holes' rows carry the
    mixing's partner and lambda, which a cutout row uses for its targets only (its partner pixel
    weights are 0, so no partner pixel is read). The mixing reads its own rows (for a sampler's
    draw, a slice of its block's one copy)."""
    batch_size, _, height, width = source.shape
    holes = resolve_holes(params, resolved, batch_size=batch_size, height=height, width=width)
    # Mixup's blend in float32, rounded once to bf16/fp16 as every other mode is: in bf16 it rounded
    # the holed pixels, both products and their sum (36% of values off the correctly rounded ones).
    # A paste or nothing has no arithmetic to round: the holes go straight into the output type.
    # params.mode, not batch_mode(resolved): a string compare where that is a numpy pass (host time,
    # issue 11); a per-sample mode tuple is refused by mix_features.
    out_dtype = options["out_dtype"]
    holed_dtype = torch.float32 if params.mode == "mixup" else out_dtype
    holed, targets = _run_backend(source, labels, resolved=holes, **{**options, "out_dtype": holed_dtype})
    return mix_features(holed, resolved, out_dtype=out_dtype), targets


def normalization_on(device: torch.device, *, mean: Sequence[float], std: Sequence[float],
                     from_uint8: bool) -> tuple[Tensor, Tensor]:
    """``normalization_affine`` as tensors on ``device``, made and copied once per (device, mean,
    std): a copy per batch from pageable memory would make the host wait for the GPU."""
    return _normalization_on(torch.device(device), tuple(float(v) for v in mean), tuple(float(v) for v in std),
                             from_uint8=from_uint8)


@functools.lru_cache(maxsize=16)
def _normalization_on(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...], *,
                      from_uint8: bool) -> tuple[Tensor, Tensor]:
    """`normalization_affine` on ``device``, computed and copied once per (device, mean, std)."""
    scale, shift = normalization_affine(mean=mean, std=std, from_uint8=from_uint8)
    if device.type == "cpu":
        return scale, shift
    both = to_device(torch.cat([scale, shift]).numpy(), device)
    return both[: len(scale)], both[len(scale) :]


def normalization_affine(*, mean: Sequence[float], std: Sequence[float], from_uint8: bool) -> tuple[Tensor, Tensor]:
    """float32 (scale, shift) per channel with (value / 255 - mean) / std == value * scale + shift.

    Without `from_uint8` the values are already in [0, 1] and the 1/255 is left out.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    if mean_t.ndim != 1 or mean_t.shape != std_t.shape:
        raise ValueError(f"mean, std: need two sequences of equal length, got {list(mean)} and {list(std)}")
    if not bool((std_t > 0).all()):
        raise ValueError(f"std: all values must be > 0, got {list(std)}")
    if not bool(((mean_t >= 0) & (mean_t <= 1)).all()):
        # ImageNet's mean is also written in 0..255 units (123.7, ...): then every output is nearly constant.
        raise ValueError(f"mean: values are in [0, 1] units (ImageNet: 0.485, 0.456, 0.406; std 0.229, 0.224, "
                         f"0.225), got {list(mean)}: divide 0..255 values (and their std) by 255")
    value_range = 255.0 if from_uint8 else 1.0
    scale = 1.0 / (std_t * value_range)
    shift = -mean_t / std_t
    return scale.to(torch.float32), shift.to(torch.float32)


def _as_nchw(images: Tensor, *, channels: int) -> Tensor:
    if not isinstance(images, Tensor):
        raise ValueError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"images: expected 4 dims (uint8 [B, H, W, C] or float [B, C, H, W]), got shape {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        if images.shape[3] != channels:
            raise ValueError(
                f"images: uint8 images are NHWC with C = len(mean) = {channels} last, got shape {tuple(images.shape)}"
            )
        return images.permute(0, 3, 1, 2)
    if images.dtype in FLOAT_INPUT_DTYPES:
        if images.shape[1] != channels:
            raise ValueError(
                f"images: float images are NCHW with C = len(mean) = {channels} second, got shape {tuple(images.shape)}"
            )
        return images
    raise ValueError(f"images: dtype must be uint8 (NHWC) or float32/bfloat16/float16 (NCHW), got {images.dtype}")


# Float images in [0, 1] units may leave [0, 1]: a resize overshoots a little, and the ImageNet
# recipe's colour step as a separate step (pipeline/data/color.py, unclamped as the paper's code)
# reached -0.84 and 2.23 on random images. Beyond these bounds the units are others: 0..255 (a
# maximum above 4 is a pixel above 4/255 in a whole batch), or normalized already (ImageNet's
# normalized black is -2.1; a normalized batch without dark pixels stays within and is not told).
FLOAT_RANGE = (-1.5, 4.0)


def _check_float_range(source: Tensor) -> None:
    low, high = (float(v) for v in torch.aminmax(source))
    if not (FLOAT_RANGE[0] <= low and high <= FLOAT_RANGE[1]):  # NaN fails too
        raise ValueError(f"images: float images must hold values in [0, 1] units, got min {low:g} and max {high:g}: "
                         "divide 0..255 values by 255, and pass images before their normalization (apply_mix "
                         "normalizes with mean and std); uint8 NHWC images are taken as they are")


def _check_labels(
    labels: Tensor, *, batch_size: int, num_classes: int, device: torch.device, check_values: bool
) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: must be a positive int, got {num_classes!r}")
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype in (torch.bool, torch.uint8):
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected an integer tensor of class indices (int64), got {kind}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels: expected shape ({batch_size},) to match the images, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels: on {labels.device}, but the images are on {device}")
    if check_values and batch_size > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels: values must lie in [0, {num_classes}), got min {low} and max {high}")


def _check_options(*, out_dtype, memory_format, label_smoothing: float, backend: str) -> None:
    if out_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"out_dtype: must be one of {OUTPUT_DTYPES}, got {out_dtype}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: must be torch.channels_last or torch.contiguous_format, got {memory_format}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: must lie in [0, 1), got {label_smoothing}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS}, got {backend!r}")


def _choose_backend(backend: str, *, device: torch.device):
    if backend == "reference" or (backend == "auto" and device.type != "cuda"):
        return mix_reference
    # Imported on first use: triton is optional off Linux, and the interpreter choice is made at
    # import (tests import the module afresh under TRITON_INTERPRET=1, so look it up each time).
    module = sys.modules.get(_TRITON_MODULE) or importlib.import_module(_TRITON_MODULE)
    return module.mix_triton
