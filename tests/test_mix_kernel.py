"""The Triton kernel (under the interpreter) and the PyTorch reference against a naive per-pixel loop.

Every output buffer is filled with NaN before the run, so an element a backend forgets to write
fails the comparison.
"""

import importlib
import math
import os
import random
import sys

import pytest
import torch

from pipeline.mix import MixParams, apply_mix, normalization_affine, resolve_mix
from pipeline.mix.reference import mix_reference

# triton.jit picks the interpreter when it decorates, i.e. when triton_kernel is imported; if an
# earlier test module imported it without the interpreter, import it afresh.
os.environ["TRITON_INTERPRET"] = "1"
triton_kernel = importlib.import_module("pipeline.mix.triton_kernel")
if not triton_kernel._is_interpreted():
    triton_kernel = importlib.reload(sys.modules["pipeline.mix.triton_kernel"])
mix_triton = triton_kernel.mix_triton

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 7
SMOOTHING = 0.1
BACKENDS = {"triton": mix_triton, "reference": mix_reference}
# (batch, height, width): batch 1, odd batches, odd sides, height != width.
SHAPES = [(1, 7, 5), (3, 9, 13), (5, 17, 11), (2, 15, 9), (4, 11, 17)]
# Absolute and relative tolerance per output dtype: fp32 arithmetic, then at most 1 ulp of rounding.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-5, 2**-7), torch.float16: (1e-4, 2**-10)}


def test_kernel_runs_under_the_interpreter():
    assert triton_kernel._is_interpreted()


def naive_mix(images, labels, *, modes, lam, boxes, partner, from_uint8):
    """Per-pixel, per-class loops over Python floats: the semantics written out once more."""
    batch, channels, height, width = images.shape
    pixels, labels = images.double().tolist(), labels.tolist()
    value_range = 255.0 if from_uint8 else 1.0
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    targets = torch.zeros(batch, NUM_CLASSES, dtype=torch.float64)
    off = SMOOTHING / NUM_CLASSES
    on = 1.0 - SMOOTHING + off
    for n in range(batch):
        y1, y2, x1, x2 = boxes[n]
        p = partner[n]
        rows = []
        for c in range(channels):
            plane = []
            for h in range(height):
                line = []
                for w in range(width):
                    own = (pixels[n][c][h][w] / value_range - MEAN[c]) / STD[c]
                    other = (pixels[p][c][h][w] / value_range - MEAN[c]) / STD[c]
                    inside = y1 <= h < y2 and x1 <= w < x2
                    if modes[n] == "cutmix":
                        line.append(other if inside else own)
                    elif modes[n] == "mixup":
                        line.append(lam[n] * own + (1 - lam[n]) * other)
                    elif modes[n] == "cutout":
                        line.append(0.0 if inside else own)
                    else:
                        line.append(own)
                plane.append(line)
            rows.append(plane)
        out[n] = torch.tensor(rows, dtype=torch.float64)
        label_lam = {"cutmix": 1 - (y2 - y1) * (x2 - x1) / (height * width), "mixup": lam[n]}.get(modes[n], 1.0)
        for k in range(NUM_CLASSES):
            own_t = on if k == labels[n] else off
            other_t = on if k == labels[p] else off
            targets[n, k] = label_lam * own_t + (1 - label_lam) * other_t
    return out, targets


def run_poisoned(backend, images, labels, params, *, out_dtype, memory_format=torch.channels_last):
    """Run one backend into NaN-filled outputs."""
    from_uint8 = images.dtype == torch.uint8
    source = images.permute(0, 3, 1, 2) if from_uint8 else images
    batch, _, height, width = source.shape
    resolved = resolve_mix(params, batch_size=batch, height=height, width=width)
    scale, shift = normalization_affine(mean=MEAN, std=STD, from_uint8=from_uint8)
    out = torch.full(source.shape, math.nan, dtype=out_dtype).contiguous(memory_format=memory_format)
    targets = torch.full((batch, NUM_CLASSES), math.nan)
    BACKENDS[backend](
        source, labels, resolved=resolved, scale=scale, shift=shift, label_smoothing=SMOOTHING,
        out_images=out, out_targets=targets,
    )  # fmt: skip
    return out, targets


def random_box(rng, height, width):
    y1, y2 = sorted(rng.randint(0, height) for _ in range(2))
    x1, x2 = sorted(rng.randint(0, width) for _ in range(2))
    return (y1, y2, x1, x2)


def make_case(rng, *, mode, per, batch, height, width):
    """Random images, labels and MixParams; per='batch' shares one box and lambda."""
    generator = torch.Generator().manual_seed(rng.randint(0, 2**31))
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    partner = torch.randperm(batch, generator=generator)
    draws = 1 if per == "batch" else batch
    boxes = [random_box(rng, height, width) for _ in range(draws)] * (batch if per == "batch" else 1)
    lam = [rng.random() for _ in range(draws)] * (batch if per == "batch" else 1)
    if mode == "mixed":
        modes = [rng.choice(["cutmix", "mixup", "cutout", "none"]) for _ in range(batch)]
    else:
        modes = [mode] * batch
    # The box area gives the cutmix lambda; cutout and none keep theirs at 1.
    for n, name in enumerate(modes):
        if name == "cutmix":
            lam[n] = 1 - (boxes[n][1] - boxes[n][0]) * (boxes[n][3] - boxes[n][2]) / (height * width)
        elif name in ("cutout", "none"):
            lam[n] = 1.0
    params = MixParams(
        mode=modes if mode == "mixed" or per == "elem" else mode,
        lam=torch.tensor(lam),
        boxes=torch.tensor(boxes, dtype=torch.int32),
        partner=partner,
    )
    return images, labels, params, dict(modes=modes, lam=lam, boxes=boxes, partner=partner.tolist())


def assert_matches(out, targets, expected_out, expected_targets):
    atol, rtol = TOLERANCES[out.dtype]
    torch.testing.assert_close(out.double(), expected_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(targets.double(), expected_targets, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("out_dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("per", ["batch", "elem"])
@pytest.mark.parametrize("mode", ["cutmix", "mixup", "cutout", "none", "mixed"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_matches_naive_loop(backend, mode, per, out_dtype):
    rng = random.Random(f"{mode}-{per}-{out_dtype}")
    batch, height, width = SHAPES[rng.randrange(len(SHAPES))]
    images, labels, params, truth = make_case(rng, mode=mode, per=per, batch=batch, height=height, width=width)
    out, targets = run_poisoned(backend, images, labels, params, out_dtype=out_dtype)
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, from_uint8=True, **truth)
    assert_matches(out, targets, *expected)


EDGE_BOXES = {
    "top_left": lambda h, w: (0, 3, 0, 4),
    "bottom_right": lambda h, w: (h - 4, h, w - 2, w),
    "left_column": lambda h, w: (2, h - 1, 0, 1),
    "bottom_row": lambda h, w: (h - 1, h, 1, w - 1),
    "empty_rows": lambda h, w: (4, 4, 0, w),
    "empty_columns": lambda h, w: (0, h, 3, 3),
    "full": lambda h, w: (0, h, 0, w),
}


@pytest.mark.parametrize("edge", list(EDGE_BOXES))
@pytest.mark.parametrize("mode", ["cutmix", "cutout"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_boxes_at_borders_empty_and_full(backend, mode, edge):
    batch, height, width = 3, 9, 11
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([0, 6, 3])
    box = EDGE_BOXES[edge](height, width)
    partner = [2, 0, 1]
    params = MixParams(mode=mode, boxes=box, partner=torch.tensor(partner))
    out, targets = run_poisoned(backend, images, labels, params, out_dtype=torch.float32)
    lam = 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width) if mode == "cutmix" else 1.0
    expected = naive_mix(
        images.permute(0, 3, 1, 2), labels, modes=[mode] * batch, lam=[lam] * batch, boxes=[box] * batch,
        partner=partner, from_uint8=True,
    )  # fmt: skip
    assert_matches(out, targets, *expected)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_float_nchw_input_and_contiguous_output(backend, input_dtype):
    """The strided path: float NCHW in, NCHW (not channels-last) out."""
    rng = random.Random(3)
    images, labels, params, truth = make_case(rng, mode="mixed", per="elem", batch=5, height=9, width=7)
    floats = (images.permute(0, 3, 1, 2).float() / 255).to(input_dtype).contiguous()
    out, targets = run_poisoned(
        backend, floats, labels, params, out_dtype=torch.float32, memory_format=torch.contiguous_format
    )
    assert out.is_contiguous()
    expected = naive_mix(floats, labels, from_uint8=False, **truth)
    assert_matches(out, targets, *expected)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_strided_uint8_input(backend):
    """A uint8 NHWC view that is not dense (every other column of a wider batch)."""
    rng = random.Random(4)
    wide, labels, params, truth = make_case(rng, mode="mixed", per="elem", batch=3, height=7, width=9)
    images = torch.cat([wide, wide], dim=2)[:, :, ::2]
    assert not images.is_contiguous()
    out, targets = run_poisoned(backend, images, labels, params, out_dtype=torch.bfloat16)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, from_uint8=True, **truth)
    assert_matches(out, targets, *expected)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_apply_mix_end_to_end(backend):
    """The public entry point with a forced backend gives the naive result too."""
    rng = random.Random(5)
    images, labels, params, truth = make_case(rng, mode="cutmix", per="batch", batch=4, height=11, width=13)
    out, targets = apply_mix(
        images, labels, params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING,
        out_dtype=torch.bfloat16, backend=backend,
    )  # fmt: skip
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, from_uint8=True, **truth)
    assert_matches(out, targets, *expected)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per", ["batch", "elem"])
@pytest.mark.parametrize("mode", ["cutmix", "mixup", "mixed"])
def test_reference_in_chunks(monkeypatch, mode, per, out_dtype):
    """Chunks of two samples: batch 5 splits into 2 + 2 + 1, partners cross chunk borders."""
    import pipeline.mix.reference

    monkeypatch.setattr(pipeline.mix.reference, "CHUNK_BYTES", 2 * 3 * 9 * 13 * 4)
    rng = random.Random(f"chunks-{mode}-{per}")
    images, labels, params, truth = make_case(rng, mode=mode, per=per, batch=5, height=9, width=13)
    out, targets = run_poisoned("reference", images, labels, params, out_dtype=out_dtype)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, from_uint8=True, **truth)
    assert_matches(out, targets, *expected)


# Images of several kernel tiles (1024 values each), so that the dense path's whole-tile decisions
# (read the partner / the own image at all?) meet tiles wholly outside, wholly inside and across a
# box: full-width boxes cover whole tiles, narrow ones cross them.
TILED_BOXES = {
    "full_width_rows": lambda h, w: (10, 40, 0, w),
    "narrow_column": lambda h, w: (0, h, 20, 23),
    "middle": lambda h, w: (13, 37, 9, 52),
    "one_row": lambda h, w: (31, 32, 0, w),
    "empty": lambda h, w: (5, 5, 0, w),
    # From the first row of the second tile to its last row, which is then the first one below the
    # box and the only row of the tile that needs the sample's own image (tiles of DEFAULT_BLOCK
    # values at 192 a row: rows 10-21, the box (10, 21)).
    "rows_to_a_tiles_last_row": lambda h, w: (triton_kernel.DEFAULT_BLOCK // (w * 3),
                                              (2 * triton_kernel.DEFAULT_BLOCK - 1) // (w * 3), 0, w),
    # The same a row lower: the tile's first row is the only one above the box.
    "rows_from_a_tiles_second_row": lambda h, w: (triton_kernel.DEFAULT_BLOCK // (w * 3) + 1,
                                                  (2 * triton_kernel.DEFAULT_BLOCK - 1) // (w * 3) + 1, 0, w),
}


@pytest.mark.parametrize("edge", list(TILED_BOXES))
@pytest.mark.parametrize("mode", ["cutmix", "cutout", "mixup"])
def test_images_of_many_tiles(mode, edge):
    batch, height, width = 3, 50, 64  # 9,600 values a sample: 5 tiles of DEFAULT_BLOCK, the last one partial
    generator = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([1, 4, 2])
    box, partner = TILED_BOXES[edge](height, width), [1, 2, 0]
    lam = {"cutmix": 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width), "mixup": 0.3}.get(mode, 1.0)
    params = MixParams(mode=mode, lam=lam, boxes=box, partner=torch.tensor(partner))
    out, targets = run_poisoned("triton", images, labels, params, out_dtype=torch.bfloat16)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, modes=[mode] * batch, lam=[lam] * batch,
                         boxes=[box] * batch, partner=partner, from_uint8=True)
    assert_matches(out, targets, *expected)


def nan_where_unused():
    """Float channels-last images (the dense path) clean and with NaN wherever the mix takes
    nothing from: sample 0 takes box B from sample 2, sample 2 takes everything from sample 1 (a
    full box), sample 1 is unmixed, so nobody uses sample 0 inside B nor sample 2 outside B.
    (clean, poisoned, labels, params, the naive loop's arguments)."""
    batch, height, width = 3, 40, 48
    generator = torch.Generator().manual_seed(5)
    clean = torch.rand(batch, 3, height, width, generator=generator).contiguous(memory_format=torch.channels_last)
    box, full, partner = (8, 30, 10, 41), (0, height, 0, width), [2, 0, 1]
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    poisoned = clean.clone()
    poisoned[0][:, inside] = math.nan
    poisoned[2][:, ~inside] = math.nan
    modes, boxes = ["cutmix", "none", "cutmix"], [box, box, full]
    lam = [1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width), 1.0, 0.0]
    params = MixParams(mode=modes, lam=torch.tensor(lam), boxes=torch.tensor(boxes, dtype=torch.int32),
                       partner=torch.tensor(partner))
    return clean, poisoned, torch.tensor([0, 3, 5]), params, dict(modes=modes, lam=lam, boxes=boxes, partner=partner)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_nan_in_pixels_the_mix_does_not_use_stays_out(backend):
    """Whole tiles are read, so an unused value must be dropped, not multiplied by a zero weight
    (0 * NaN is NaN): NaN wherever the result takes nothing from (nan_where_unused)."""
    clean, poisoned, labels, params, truth = nan_where_unused()
    out, targets = run_poisoned(backend, poisoned, labels, params, out_dtype=torch.float32)
    expected = naive_mix(clean, labels, from_uint8=False, **truth)
    assert not out.isnan().any()
    assert_matches(out, targets, *expected)


@pytest.mark.parametrize("mode", ["cutmix", "cutout", "mixup"])
def test_the_per_value_masked_variant_kept_for_benchmarks(mode):
    """launch_mix_kernel(tile_loads=False, block=1024), the earlier dense path that gpu_suite times
    beside the current one, still computes the same function."""
    batch, height, width = 3, 50, 64
    generator = torch.Generator().manual_seed(12)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([1, 4, 2])
    box, partner = TILED_BOXES["middle"](height, width), [1, 2, 0]
    lam = {"cutmix": 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width), "mixup": 0.3}.get(mode, 1.0)
    params = MixParams(mode=mode, lam=lam, boxes=box, partner=torch.tensor(partner))
    resolved = resolve_mix(params, batch_size=batch, height=height, width=width)
    scale, shift = normalization_affine(mean=MEAN, std=STD, from_uint8=True)
    out = torch.full((batch, 3, height, width), math.nan).contiguous(memory_format=torch.channels_last)
    targets = torch.full((batch, NUM_CLASSES), math.nan)
    triton_kernel.launch_mix_kernel(images.permute(0, 3, 1, 2), labels, packed=triton_kernel.pack_rows(resolved),
                                    scale=scale, shift=shift, label_smoothing=SMOOTHING, out_images=out,
                                    out_targets=targets, block=1024, tile_loads=False)
    expected = naive_mix(images.permute(0, 3, 1, 2), labels, modes=[mode] * batch, lam=[lam] * batch,
                         boxes=[box] * batch, partner=partner, from_uint8=True)
    assert_matches(out, targets, *expected)
