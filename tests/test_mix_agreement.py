"""Agreement with timm's Mixup and torchvision's v2.CutMix / v2.MixUp, and with the official loss.

The libraries draw their own randomness; the tests record what they drew (box, lambda) and hand
the same values, with the library's partner rule, to apply_mix.
"""

import numpy as np
import pytest
import torch
import timm.data.mixup
import torch.nn.functional as F
from torchvision.transforms import v2

from pipeline.mix import MixParams, MixSampler, apply_mix, soft_target_cross_entropy

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 10



def assert_agrees(images, targets, reference_images, reference_targets) -> None:
    """Ours against another library's: float32 rounding only."""
    torch.testing.assert_close(images, reference_images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets, reference_targets, atol=1e-6, rtol=1e-6)

def make_batch(seed, *, batch=6, height=20, width=24):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    return images, labels


def normalized_nchw(images):
    """What timm's prefetcher and torchvision's Normalize hand to the mixing step: float32 NCHW."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return images.permute(0, 3, 1, 2).float().sub(mean).div(std).contiguous()


def ours(images, labels, params, *, label_smoothing):
    return apply_mix(images, labels, params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
                     label_smoothing=label_smoothing, memory_format=torch.contiguous_format)  # fmt: skip


@pytest.fixture
def recorded_timm_boxes(monkeypatch):
    """Every box timm's Mixup draws, in call order."""
    boxes = []
    original = timm.data.mixup.cutmix_bbox_and_lam

    def recording(*args, **kwargs):
        (y1, y2, x1, x2), lam = original(*args, **kwargs)
        boxes.append((int(y1), int(y2), int(x1), int(x2)))
        return (y1, y2, x1, x2), lam

    monkeypatch.setattr(timm.data.mixup, "cutmix_bbox_and_lam", recording)
    return boxes


@pytest.mark.parametrize("seed", range(4))
def test_timm_cutmix_batch_mode_with_flip(seed, recorded_timm_boxes):
    images, labels = make_batch(seed)
    np.random.seed(seed)
    mixup = timm.data.mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch", label_smoothing=0.1,
                                  num_classes=NUM_CLASSES)  # fmt: skip
    timm_images, timm_targets = mixup(normalized_nchw(images), labels)
    (box,) = recorded_timm_boxes
    flip = torch.arange(len(labels) - 1, -1, -1)
    our_images, our_targets = ours(images, labels, MixParams(mode="cutmix", boxes=box, partner=flip),
                                   label_smoothing=0.1)  # fmt: skip
    assert_agrees(our_images, our_targets, timm_images, timm_targets)


def test_timm_cutmix_elem_mode_with_flip(recorded_timm_boxes):
    images, labels = make_batch(10)
    np.random.seed(10)
    mixup = timm.data.mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1,
                                  num_classes=NUM_CLASSES)  # fmt: skip
    timm_images, timm_targets = mixup(normalized_nchw(images), labels)
    # timm draws one box per sample, in sample order (lam == 1 skips none here: Beta never gives 1).
    assert len(recorded_timm_boxes) == len(labels)
    flip = torch.arange(len(labels) - 1, -1, -1)
    params = MixParams(mode="cutmix", boxes=torch.tensor(recorded_timm_boxes), partner=flip)
    our_images, our_targets = ours(images, labels, params, label_smoothing=0.1)
    assert_agrees(our_images, our_targets, timm_images, timm_targets)


def test_timm_mixup_batch_mode_with_flip(monkeypatch):
    images, labels = make_batch(11)
    np.random.seed(11)
    mixup = timm.data.mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode="batch", label_smoothing=0.1,
                                  num_classes=NUM_CLASSES)  # fmt: skip
    drawn = []
    original = mixup._params_per_batch
    monkeypatch.setattr(mixup, "_params_per_batch", lambda: drawn.append(original()) or drawn[-1])
    timm_images, timm_targets = mixup(normalized_nchw(images), labels)
    ((lam, use_cutmix),) = drawn
    assert not use_cutmix
    flip = torch.arange(len(labels) - 1, -1, -1)
    our_images, our_targets = ours(images, labels, MixParams(mode="mixup", lam=lam, partner=flip), label_smoothing=0.1)
    assert_agrees(our_images, our_targets, timm_images, timm_targets)


def recording_make_params(monkeypatch, transform):
    drawn = []
    original = transform.make_params
    monkeypatch.setattr(transform, "make_params", lambda flat_inputs: drawn.append(original(flat_inputs)) or drawn[-1])
    return drawn


@pytest.mark.parametrize("seed", range(4))
def test_torchvision_cutmix_with_roll(seed, monkeypatch):
    images, labels = make_batch(20 + seed, batch=5)
    torch.manual_seed(seed)
    cutmix = v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    drawn = recording_make_params(monkeypatch, cutmix)
    tv_images, tv_targets = cutmix(normalized_nchw(images), labels)
    x1, y1, x2, y2 = drawn[0]["box"]
    roll = (torch.arange(len(labels)) - 1) % len(labels)
    our_images, our_targets = ours(images, labels, MixParams(mode="cutmix", boxes=(y1, y2, x1, x2), partner=roll),
                                   label_smoothing=0.0)  # fmt: skip
    assert_agrees(our_images, our_targets, tv_images, tv_targets)


def test_torchvision_mixup_with_roll(monkeypatch):
    images, labels = make_batch(30, batch=5)
    torch.manual_seed(30)
    mixup = v2.MixUp(alpha=1.0, num_classes=NUM_CLASSES)
    drawn = recording_make_params(monkeypatch, mixup)
    tv_images, tv_targets = mixup(normalized_nchw(images), labels)
    roll = (torch.arange(len(labels)) - 1) % len(labels)
    params = MixParams(mode="mixup", lam=drawn[0]["lam"], partner=roll)
    our_images, our_targets = ours(images, labels, params, label_smoothing=0.0)
    assert_agrees(our_images, our_targets, tv_images, tv_targets)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("per", ["batch", "elem"])
def test_loss_equals_the_official_two_term_form(per, label_smoothing):
    images, labels = make_batch(40, batch=8)
    params = MixSampler(mode="cutmix", per=per, seed=40).sample(batch_size=8, height=20, width=24)
    _, targets = ours(images, labels, params, label_smoothing=label_smoothing)
    logits = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    # clovaai train.py: lam * criterion(output, target_a) + (1 - lam) * criterion(output, target_b),
    # per sample here so that per-sample lambdas are covered too.
    lam = params.lam.double()
    target_b = labels[params.partner]
    per_sample = lam * F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing) + (
        1 - lam
    ) * F.cross_entropy(logits, target_b, reduction="none", label_smoothing=label_smoothing)
    loss = soft_target_cross_entropy(logits, targets)
    torch.testing.assert_close(loss.double(), per_sample.mean(), atol=1e-6, rtol=1e-6)
    if per == "batch":
        official = float(lam[0]) * F.cross_entropy(logits, labels, label_smoothing=label_smoothing) + (
            1 - float(lam[0])
        ) * F.cross_entropy(logits, target_b, label_smoothing=label_smoothing)
        torch.testing.assert_close(loss.double(), official, atol=1e-6, rtol=1e-6)


def test_loss_checks_shapes():
    with pytest.raises(ValueError, match="^targets:"):
        soft_target_cross_entropy(torch.zeros(4, 10), torch.zeros(4, 9))
