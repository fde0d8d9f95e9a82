"""Colour maps applied by the mix step (pipeline/mix/color.py), in the Triton kernel (under the
interpreter) and the PyTorch reference, against an independent two-stage reference: each image
coloured by a transcription of the official code's ColorJitter + Lighting classes in float64
(tests/test_data_color.py), then mixed by the naive per-pixel loop (tests/test_mix_kernel.py).
A pixel pasted or blended from a partner must carry the partner's colour change. Outputs are
NaN-filled before each run."""

import math
import random

import pytest
import torch
from test_data_color import official
from test_mix_kernel import (BACKENDS, MEAN, NUM_CLASSES, SMOOTHING, STD, TOLERANCES, assert_matches, make_case,
                             naive_mix, nan_where_unused, triton_kernel)

from pipeline.data.color import ColorAugment, ColorDraw, color_maps
from pipeline.mix import MixParams, apply_mix, normalization_affine, resolve_mix
from pipeline.mix.color import check_maps, identity_maps, maps_in_units


def official_colour(images_nhwc: torch.Tensor, draw: ColorDraw) -> torch.Tensor:
    """float64 NCHW in [0, 1]: each image through their classes (in their list's order)."""
    return torch.stack([torch.from_numpy(official(image.numpy(), draw.weights[i].tolist(), (0, 1, 2),
                                                  draw.lighting[i].tolist()))
                        for i, image in enumerate(images_nhwc)])


def colour_draw(batch: int, seed: int) -> tuple[ColorAugment, ColorDraw]:
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=seed, rank=0, device="cpu")
    return augment, augment.draw(batch)


def run_poisoned(backend, source, labels, params, maps, *, out_dtype, memory_format=torch.channels_last, **launch):
    """One backend (or, with ``launch``, the bare kernel launch) into NaN-filled outputs."""
    from_uint8 = source.dtype == torch.uint8
    batch, _, height, width = source.shape
    resolved = resolve_mix(params, batch_size=batch, height=height, width=width)
    scale, shift = normalization_affine(mean=MEAN, std=STD, from_uint8=from_uint8)
    out = torch.full(source.shape, math.nan, dtype=out_dtype).contiguous(memory_format=memory_format)
    targets = torch.full((batch, NUM_CLASSES), math.nan)
    units = maps_in_units(maps, value_range=255.0 if from_uint8 else 1.0)
    if launch:
        triton_kernel.launch_mix_kernel(source, labels, packed=triton_kernel.pack_rows(resolved), scale=scale,
                                        shift=shift, label_smoothing=SMOOTHING, out_images=out, out_targets=targets,
                                        color=units, **launch)
    else:
        BACKENDS[backend](source, labels, resolved=resolved, scale=scale, shift=shift, label_smoothing=SMOOTHING,
                          out_images=out, out_targets=targets, color=units)
    return out, targets


@pytest.mark.parametrize("out_dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("per", ["batch", "elem"])
@pytest.mark.parametrize("mode", ["cutmix", "mixup", "cutout", "none", "mixed"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_colour_then_mix_matches_their_colour_then_a_naive_mix(backend, mode, per, out_dtype):
    rng = random.Random(f"colour-{mode}-{per}-{out_dtype}")
    images, labels, params, truth = make_case(rng, mode=mode, per=per, batch=5, height=9, width=13)
    augment, draw = colour_draw(len(images), seed=rng.randrange(1000))
    out, targets = run_poisoned(backend, images.permute(0, 3, 1, 2), labels, params, augment.maps(images, draw),
                                out_dtype=out_dtype)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches(out, targets, *naive_mix(official_colour(images, draw), labels, from_uint8=False, **truth))


@pytest.mark.parametrize("mode", ["cutmix", "cutout", "mixup"])
def test_images_of_many_tiles_in_both_dense_variants(mode):
    """9,600 values a sample (10 tiles, the last partial), so a tile's pixels straddle tiles: the
    whole-tile loads and the per-value masked variant that gpu_suite times beside them."""
    batch, height, width = 3, 50, 64
    generator = torch.Generator().manual_seed(13)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels, box, partner = torch.tensor([1, 4, 2]), (13, 37, 9, 52), [1, 2, 0]
    lam = {"cutmix": 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width), "mixup": 0.3}.get(mode, 1.0)
    params = MixParams(mode=mode, lam=lam, boxes=box, partner=torch.tensor(partner))
    augment, draw = colour_draw(batch, seed=4)
    expected = naive_mix(official_colour(images, draw), labels, modes=[mode] * batch, lam=[lam] * batch,
                         boxes=[box] * batch, partner=partner, from_uint8=False)
    for launch in ({"tile_loads": True}, {"tile_loads": False, "block": 1024}):
        out, targets = run_poisoned("triton", images.permute(0, 3, 1, 2), labels, params,
                                    augment.maps(images, draw), out_dtype=torch.bfloat16, **launch)
        assert_matches(out, targets, *expected)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_float_nchw_input_through_apply_mix(backend):
    """The strided path (float NCHW in, contiguous out), the maps in [0, 1] units as apply_mix takes them."""
    rng = random.Random(8)
    images, labels, params, truth = make_case(rng, mode="mixed", per="elem", batch=5, height=9, width=7)
    augment, draw = colour_draw(len(images), seed=9)
    floats = (images.permute(0, 3, 1, 2).double() / 255).float().contiguous()
    out, targets = apply_mix(floats, labels, params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
                             label_smoothing=SMOOTHING, memory_format=torch.contiguous_format, backend=backend,
                             color=augment.maps(images, draw))
    assert out.is_contiguous()
    assert_matches(out, targets, *naive_mix(official_colour(images, draw), labels, from_uint8=False, **truth))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_uint8_through_apply_mix_equals_the_colour_step_then_the_mix(backend):
    """apply_mix(uint8, color=maps) == apply_mix(apply_color(uint8)) (the separate step the GPU
    benchmark compares with), here with Cutout + Mixup (two backend passes, colour in the first)."""
    rng = random.Random(10)
    images, labels, _, _ = make_case(rng, mode="mixup", per="elem", batch=6, height=11, width=9)
    augment, draw = colour_draw(len(images), seed=11)
    params = MixParams(mode="mixup", lam=0.3, partner=torch.tensor([5, 4, 3, 2, 1, 0]),
                       cutout_boxes=torch.tensor([[2, 6, 1, 4]] * 6, dtype=torch.int32))
    options = dict(params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING,
                   backend=backend)
    fused, fused_targets = apply_mix(images, labels, color=augment.maps(images, draw), **options)
    separate, separate_targets = apply_mix(augment(images, draw), labels, **options)
    torch.testing.assert_close(fused, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_targets, separate_targets)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_nan_in_pixels_the_mix_does_not_use_stays_out(backend):
    """Float channels-last input with NaN wherever the result takes nothing from (as in
    test_mix_kernel.py): the colour's extra reads of a pixel's channels must not bring it in."""
    clean, poisoned, labels, params, truth = nan_where_unused()
    # Hand-made maps (the mean grey of a NaN image is NaN): a gain, a grey gain and offsets per image.
    maps = torch.tensor([[0.8, 0.1, 0.05, -0.02, 0.0], [1.2, -0.3, 0.0, 0.1, 0.2], [0.9, 0.25, -0.1, 0.0, 0.03]])
    out, targets = run_poisoned(backend, poisoned, labels, params, maps, out_dtype=torch.float32)
    x, m = clean.double(), maps.double()[:, :, None, None]  # the maps' formula, written out in float64
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    expected = naive_mix(m[:, 0:1] * x + m[:, 1:2] * grey + m[:, 2:5], labels, from_uint8=False, **truth)
    assert not out.isnan().any()
    assert_matches(out, targets, *expected)


def test_identity_maps_change_nothing():
    rng = random.Random(12)
    images, labels, params, _ = make_case(rng, mode="mixed", per="elem", batch=4, height=8, width=10)
    options = dict(params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES, backend="triton")
    plain, _ = apply_mix(images, labels, **options)
    same, _ = apply_mix(images, labels, color=identity_maps(len(images), device="cpu"), **options)
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=0)


def test_maps_by_hand():
    """One red and one grey (0.2) pixel: the map's columns worked out by hand for brightness,
    contrast and saturation weights and a lighting draw."""
    image = torch.tensor([[[[255, 0, 0], [51, 51, 51]]]], dtype=torch.uint8)
    mean_grey = (0.299 + 0.2) / 2
    a, b, c = 0.1, 0.2, 0.3
    alpha = torch.tensor([[1.0, 0.0, 0.0]])
    maps = color_maps(image, ColorDraw(weights=torch.tensor([[a, b, c]]), lighting=alpha))
    light = [0.2175 * v for v in (-0.5675, -0.5808, -0.5836)]
    expected = [(1 - a) * (1 - b) * (1 - c), (1 - a) * c * (1 - b)] + [(1 - a) * b * mean_grey + v for v in light]
    torch.testing.assert_close(maps[0], torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("maps, message", [
    (torch.zeros(4, 5, dtype=torch.float64), r"float32 \[4, 5\]"),
    (torch.zeros(3, 5), r"float32 \[4, 5\]"),
    (torch.zeros(4, 3), r"float32 \[4, 5\]"),
    ("maps", "expected a tensor of colour maps"),
])
def test_bad_maps_are_refused(maps, message):
    images = torch.zeros(4, 6, 6, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        apply_mix(images, torch.zeros(4, dtype=torch.long), params=MixParams(mode="none"), mean=MEAN, std=STD,
                  num_classes=NUM_CLASSES, color=maps)


def test_maps_need_rgb_images():
    with pytest.raises(ValueError, match="RGB images"):
        check_maps(torch.zeros(2, 5), batch_size=2, channels=1, device=torch.device("cpu"))
