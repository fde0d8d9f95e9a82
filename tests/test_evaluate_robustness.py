"""Occlusion, in-between-class samples and FGSM against naive references: per-pixel loops writing
into NaN-filled outputs, per-row Python loops, hand-worked values, and FGSM one sample at a time."""

import contextlib
import copy
import math

import pytest
import timm
import torch

from pipeline.evaluate.fgsm import fgsm_pixels
from pipeline.evaluate.inbetween import (
    LAMBDAS,
    box_lambda,
    cutmix_box,
    cutmix_pair,
    inbetween_counts,
    mixup_pair,
    partner_order,
)
from pipeline.evaluate.occlusion import occlude, occlusion_sides

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def naive_occlusion(inputs, side, mode):
    """Pixel by pixel: the square starts at ((H - side) // 2, (W - side) // 2)."""
    batch, channels, height, width = inputs.shape
    top, left = (height - side) // 2, (width - side) // 2
    out = torch.full(inputs.shape, float("nan"), dtype=inputs.dtype)
    for n in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    inside = top <= y < top + side and left <= x < left + side
                    hidden = inside if mode == "hole" else not inside
                    out[n, c, y, x] = 0.0 if hidden else inputs[n, c, y, x]
    return out


@pytest.mark.parametrize("height, width", [(7, 7), (8, 8), (7, 10), (9, 6)])
@pytest.mark.parametrize("mode", ["hole", "keep"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_occlusion_pixel_by_pixel(height, width, mode, channels_last):
    inputs = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    before = inputs.clone()
    for side in range(min(height, width) + 1):  # odd and even sides, 0 and full
        out = occlude(inputs, side, mode=mode)
        assert torch.equal(out, naive_occlusion(inputs, side, mode)), side
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert out.data_ptr() != inputs.data_ptr()
    assert torch.equal(inputs, before)


def test_occlusion_edge_cases():
    inputs = torch.randn(1, 3, 6, 6)
    assert torch.equal(occlude(inputs, 0, mode="hole"), inputs)
    assert torch.equal(occlude(inputs, 0, mode="keep"), torch.zeros_like(inputs))
    assert torch.equal(occlude(inputs, 6, mode="hole"), torch.zeros_like(inputs))
    assert torch.equal(occlude(inputs, 6, mode="keep"), inputs)
    with pytest.raises(ValueError, match="side"):
        occlude(inputs, 7, mode="hole")
    with pytest.raises(ValueError, match="mode"):
        occlude(inputs, 2, mode="cutout")


def test_occlusion_sides_by_hand():
    assert occlusion_sides(224, 9) == [0, 28, 56, 84, 112, 140, 168, 196, 224]
    assert occlusion_sides(32) == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert occlusion_sides(7, 4) == [0, 2, 5, 7]  # 7/3 = 2.33, 14/3 = 4.67
    assert occlusion_sides(10, 5) == [0, 3, 5, 8, 10]  # halves (2.5, 7.5) go up
    assert occlusion_sides(3, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="steps"):
        occlusion_sides(3, 5)


def test_lambdas():
    assert len(LAMBDAS) == 11 and LAMBDAS[0] == 0.0 and LAMBDAS[-1] == 1.0
    assert LAMBDAS == pytest.approx([0.1 * i for i in range(11)])


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_partner_order_is_a_seeded_derangement(batch_size):
    partner = partner_order(batch_size, 3)
    assert partner.dtype == torch.int64
    assert sorted(partner.tolist()) == list(range(batch_size))
    if batch_size > 1:
        assert all(partner[j] != j for j in range(batch_size))
    assert torch.equal(partner, partner_order(batch_size, 3))
    if batch_size > 2:
        assert not torch.equal(partner, partner_order(batch_size, 4))


def test_mixup_by_hand():
    a = torch.tensor([[2.0, -1.0]])
    b = torch.tensor([[4.0, 5.0]])
    assert mixup_pair(a, b, 0.25).tolist() == [[3.5, 3.5]]  # 0.5 + 3, -0.25 + 3.75
    assert mixup_pair(a, b, 0.5).tolist() == [[3.0, 2.0]]
    assert torch.equal(mixup_pair(a, b, 1.0), a) and torch.equal(mixup_pair(a, b, 0.0), b)


def naive_paste(a, b, box):
    """Pixel by pixel: rows top .. top + box_h - 1 and columns left .. left + box_w - 1 come from b."""
    top, left, box_h, box_w = box
    out = torch.full(a.shape, float("nan"), dtype=a.dtype)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            for y in range(a.shape[2]):
                for x in range(a.shape[3]):
                    inside = top <= y < top + box_h and left <= x < left + box_w
                    out[n, c, y, x] = b[n, c, y, x] if inside else a[n, c, y, x]
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_cutmix_pair_pixel_by_pixel(channels_last):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 7, 9, generator=generator), torch.randn(2, 3, 7, 9, generator=generator)
    if channels_last:
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    before = a.clone()
    for box in [(2, 3, 4, 5), (0, 0, 7, 9), (6, 8, 1, 1), (3, 4, 0, 0), (0, 4, 7, 5)]:
        out = cutmix_pair(a, b, box)
        assert torch.equal(out, naive_paste(a, b, box)), box
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(a, before)


def pasted_pixels(box, height, width):
    """(count, rows, columns) of the pixels a box takes from b, read back with a naive loop."""
    plane = cutmix_pair(torch.zeros(1, 1, height, width), torch.ones(1, 1, height, width), box)[0, 0]
    rows, columns, count = set(), set(), 0
    for y in range(height):
        for x in range(width):
            if plane[y, x] == 1:
                count += 1
                rows.add(y)
                columns.add(x)
    return count, rows, columns


@pytest.mark.parametrize("height, width", [(32, 32), (7, 7), (24, 32), (32, 24), (9, 13)])
def test_cutmix_box_area_shape_and_placement(height, width):
    generator = torch.Generator().manual_seed(height + width)
    for lam in [*LAMBDAS, 0.37, 0.93, 0.999]:
        box = cutmix_box(lam, height, width, generator)
        top, left, box_h, box_w = box
        count, rows, columns = pasted_pixels(box, height, width)
        assert count == box_h * box_w
        if count:
            assert rows == set(range(top, top + box_h)) and columns == set(range(left, left + box_w))
        assert 0 <= top <= height - box_h and 0 <= left <= width - box_w
        assert box_lambda(box, height, width) == pytest.approx(1 - count / (height * width), abs=1e-12)
        # Reference: every box whose sides are within a pixel of sqrt(1 - lam) * (H, W) and whose
        # width is an integer nearest h * W / H; none is closer to the target area.
        scale, target = math.sqrt(1 - lam), (1 - lam) * height * width
        shaped = [(h, w) for h in range(height + 1) for w in range(width + 1)
                  if abs(h - scale * height) < 1 and abs(w - h * width / height) <= 0.5]
        assert (box_h, box_w) in shaped
        assert box_h == box_w or height != width
        assert abs(count - target) == pytest.approx(min(abs(h * w - target) for h, w in shaped)), lam
    assert cutmix_box(0.0, height, width, generator)[2:] == (height, width)
    assert cutmix_box(1.0, height, width, generator)[2:] == (0, 0)


def test_cutmix_box_placement_is_uniform_and_seeded():
    generator = torch.Generator().manual_seed(0)
    # lam 0.5 in 8 x 8: 6 x 6 (area 36) is nearer 32 than 5 x 5; 3 x 3 possible places.
    boxes = [cutmix_box(0.5, 8, 8, generator) for _ in range(3000)]
    assert {box[2:] for box in boxes} == {(6, 6)}
    for place in [(top, left) for top in range(3) for left in range(3)]:
        assert 3000 / 9 * 0.75 < sum(box[:2] == place for box in boxes) < 3000 / 9 * 1.25
    again = torch.Generator().manual_seed(0)
    assert [cutmix_box(0.5, 8, 8, again) for _ in range(5)] == boxes[:5]


def naive_counts(logits, label_a, label_b, weight_a, valid):
    top1_errors = pairs = counted = 0
    for row, a, b, weight, ok in zip(logits.tolist(), label_a.tolist(), label_b.tolist(), weight_a, valid.tolist()):
        if not ok:
            continue
        ranked = sorted(range(len(row)), key=lambda k: -row[k])
        target = a if weight >= 0.5 else b
        top1_errors += ranked[0] != target
        pairs += set(ranked[:2]) == {a, b}
        counted += 1
    return [top1_errors, pairs, counted]


def test_inbetween_counts_against_a_row_loop():
    logits = torch.tensor([
        [5.0, 4.0, 0.0, 0.0, 0.0],   # a=0, b=1, w .7: correct, pair
        [5.0, 4.0, 0.0, 0.0, 0.0],   # a=0, b=1, w .5 (tie -> a): correct, pair
        [5.0, 4.0, 0.0, 0.0, 0.0],   # a=0, b=1, w .3 (target b): error, pair
        [1.0, 4.0, 5.0, 0.0, 0.0],   # a=2, b=1, w .5: correct, pair (a first)
        [1.0, 5.0, 4.0, 0.0, 0.0],   # a=2, b=1, w .5: error, pair (b first: either order counts)
        [1.0, 4.0, 5.0, 0.0, 0.0],   # a=2, b=0, w .9: correct, no pair
        [0.0, 0.0, 1.0, 2.0, 3.0],   # a=0, b=1, w .5: error, no pair
        [5.0, 4.0, 0.0, 0.0, 0.0],   # same class (invalid)
        [0.0, 0.0, 0.0, 0.0, 9.0],   # padding partner (invalid)
    ])
    label_a = torch.tensor([0, 0, 0, 2, 2, 2, 0, 1, 4])
    label_b = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 3])
    weights = [0.7, 0.5, 0.3, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5]
    valid = torch.tensor([True] * 7 + [False, False])
    counts = inbetween_counts(logits, label_a, label_b, torch.tensor(weights), valid)
    assert counts.dtype == torch.int64 and counts.shape == (3,)
    assert counts.tolist() == naive_counts(logits, label_a, label_b, weights, valid) == [3, 5, 7]
    # A single float weight for the whole batch.
    for weight in (0.5, 0.4):
        scalar = inbetween_counts(logits, label_a, label_b, weight, valid)
        assert scalar.tolist() == naive_counts(logits, label_a, label_b, [weight] * 9, valid)


def test_inbetween_counts_random_rows():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(200, 10, generator=generator)
    label_a = torch.randint(0, 10, (200,), generator=generator)
    label_b = torch.randint(0, 10, (200,), generator=generator)
    weights = torch.randint(0, 11, (200,), generator=generator).double() / 10
    valid = (label_a != label_b) & (torch.rand(200, generator=generator) > 0.1)
    expected = naive_counts(logits, label_a, label_b, weights.tolist(), valid)
    assert inbetween_counts(logits, label_a, label_b, weights, valid).tolist() == expected


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=5).eval()


def naive_fgsm(model, pixels, labels, epsilon):
    """Each sample alone, as a leaf, its own loss.backward() (on a copy: this fills .grad)."""
    model = copy.deepcopy(model)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = pixels.clone()
    for n in range(len(pixels)):
        if labels[n] < 0:
            continue
        leaf = pixels[n:n + 1].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model((leaf - mean) / std), labels[n:n + 1])
        loss.backward()
        out[n] = (leaf + epsilon * leaf.grad.sign()).clamp(0, 1)[0].detach()
    return out


def test_fgsm_matches_per_sample_autograd(tiny_model):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(5, 3, 32, 32, generator=generator)
    pixels[0, :, :4] = 0.0  # some pixels at the ends, where the clamp bites
    pixels[2, :, -4:] = 1.0
    labels = torch.tensor([1, -1, 3, 0, -1])
    before = pixels.clone()
    adversarial = fgsm_pixels(tiny_model, pixels, labels, mean=MEAN, std=STD)
    assert torch.equal(adversarial, naive_fgsm(tiny_model, pixels, labels, 8 / 255))
    assert torch.equal(adversarial[[1, 4]], pixels[[1, 4]])
    assert torch.equal(pixels, before)
    assert not adversarial.requires_grad
    assert all(parameter.grad is None for parameter in tiny_model.parameters())
    # The step really moves the pixels: by epsilon, except where clamped to [0, 1].
    moved = (adversarial[[0, 2, 3]] - pixels[[0, 2, 3]]).abs()
    assert moved.max() == pytest.approx(8 / 255) and (moved > 0).float().mean() > 0.5


def test_fgsm_other_epsilon_and_eval_mode(tiny_model):
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([4, 0, 2])
    entered = []

    @contextlib.contextmanager
    def autocast():
        entered.append(torch.is_grad_enabled())
        yield

    with torch.no_grad():  # as the evaluation loop runs
        adversarial = fgsm_pixels(tiny_model, pixels, labels, epsilon=2 / 255, mean=MEAN, std=STD, autocast=autocast)
    assert entered == [True]
    assert torch.equal(adversarial, naive_fgsm(tiny_model, pixels, labels, 2 / 255))
    tiny_model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            fgsm_pixels(tiny_model, pixels, labels, mean=MEAN, std=STD)
    finally:
        tiny_model.eval()
