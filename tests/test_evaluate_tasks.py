"""The evaluation tasks as the runner calls them (pipeline.evaluate.tasks, runner._ood) and the
report they end in, against independent references: per-class and per-sample Python loops,
sklearn's roc_auc_score on scores computed by hand, FGSM one sample at a time with its own
backward(), and eval.md's table read back column by column. A one-process stand-in for
Accelerate's Accelerator (its reductions are the identity on one process) and a tiny linear
model keep each pass to milliseconds; the loaders are stood in for by lists of batches."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from pipeline.data import Augmentation
from pipeline.evaluate import runner, tasks
from pipeline.evaluate.ood import noise_images
from pipeline.evaluate.report import write_reports

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 8
CLASSES = 5


def one_process():
    """What the tasks use of an Accelerator, for one CPU process: sums and gathers over one rank
    are the rank's own values."""
    return SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1, is_main_process=True,
                           is_local_main_process=True, autocast=contextlib.nullcontext,
                           reduce=lambda tensor, reduction: tensor, gather=lambda tensor: tensor)


def linear_model(seed: int, *, pooled: bool = False) -> nn.Module:
    """Logits linear in the pixels (or in the channel means): fast, and FGSM moves them a lot."""
    torch.manual_seed(seed)
    if pooled:  # no bias: a grey image (the noise sets' mean) gets near-uniform probabilities
        model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, CLASSES, bias=False))
        with torch.no_grad():
            model[2].weight.mul_(6.0)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES))
    return model.eval()


def context(model: nn.Module, *, epsilon: float = 8 / 255, seed: int = 0) -> tasks.TaskContext:
    return tasks.TaskContext(model=model, accelerator=one_process(), mean=MEAN, std=STD, dtype=torch.float32,
                             channels_last=False, num_classes=CLASSES, augmentation=Augmentation(image_size=SIZE),
                             seed=seed, epsilon=epsilon, occlusion_steps=2, cam_examples=0)


def random_batches(seed: int, sizes: list[int], padding: int = 2):
    """uint8 NHWC batches as the val loader gives them; the last ``padding`` rows of the last
    batch are the loader's padding duplicates (label -1)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for size in sizes:
        images = torch.randint(0, 256, (size, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, CLASSES - 1, (size,), generator=generator)  # the last class: no sample
        batches.append((images, labels))
    batches[-1][1][-padding:] = -1
    return batches


def logits_by_hand(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model on (pixel / 255 - mean) / std, written out (not the code's normalize_batch)."""
    pixels = images.double().permute(0, 3, 1, 2) / 255.0
    inputs = (pixels - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(inputs.float())


def test_per_class_top1_error_matches_a_per_class_loop():
    model = linear_model(0)
    batches = random_batches(1, [16, 16, 11], padding=3)
    ticks = []
    result = tasks.classify(context(model), batches, lambda: ticks.append(1))
    seen, correct = [0] * CLASSES, [0] * CLASSES
    for images, labels in batches:
        for row, label in zip(logits_by_hand(model, images).tolist(), labels.tolist()):
            if label < 0:  # padding rows are nobody's samples (their clamped label would be class 0)
                continue
            seen[label] += 1
            correct[label] += max(range(CLASSES), key=lambda k: row[k]) == label
    assert result["per_class_samples"] == seen and sum(seen) == result["samples"] == 40
    expected = [None if n == 0 else 100.0 * (1 - c / n) for n, c in zip(seen, correct)]
    assert expected[-1] is None and result["per_class_top1_err"][-1] is None
    assert result["per_class_top1_err"][:-1] == pytest.approx(expected[:-1], abs=1e-9)
    # Errors strictly between 0 and 100 in some class: a correct/wrong swap changes the numbers.
    assert any(0 < e < 100 and e != 50 for e in expected[:-1])
    assert result["top1_err"] == pytest.approx(100.0 * (1 - sum(correct) / sum(seen)), abs=1e-9)
    assert len(ticks) == len(batches)



class Coarse(nn.Module):
    """A linear model whose logits are rounded to whole numbers: many rows tie at the top."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return torch.round(self.model(inputs) / 2)


def test_tied_logits_are_one_prediction_for_top1_top5_and_each_class():
    # topk orders ties as it likes (differently for each k), argmax takes the lowest class: the
    # top-1 error and the per-class errors counted different predictions (walkthrough: 88.6% top-1
    # error, its per-class errors averaging 92.2%). Reference: the lowest class of the largest logit.
    model = Coarse(linear_model(4))
    batches = random_batches(5, [16, 16, 11], padding=3)
    result = tasks.classify(context(model), batches, lambda: None)
    seen, correct, top5, ties = [0] * CLASSES, [0] * CLASSES, 0, 0
    for images, labels in batches:
        for row, label in zip(logits_by_hand(model, images).tolist(), labels.tolist()):
            if label < 0:
                continue
            ranked = sorted(range(CLASSES), key=lambda k: (-row[k], k))  # ties: the lower class first
            ties += row.count(max(row)) > 1
            seen[label] += 1
            correct[label] += ranked[0] == label
            top5 += label in ranked[:5]
    assert ties >= 10  # the case at hand
    assert result["top1_err"] == pytest.approx(100.0 * (1 - sum(correct) / sum(seen)), abs=1e-9)
    assert result["top5_err"] == pytest.approx(100.0 * (1 - top5 / sum(seen)), abs=1e-9)
    assert result["per_class_top1_err"][:-1] == pytest.approx(
        [100.0 * (1 - c / n) for n, c in zip(seen[:-1], correct[:-1])], abs=1e-9)

def fgsm_by_hand(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each sample alone: pixels = image / 255, loss through (pixels - mean) / std, its own
    backward() (on a copy of the model: this fills .grad), clamp(pixels + eps * sign(grad), 0, 1)."""
    model = copy.deepcopy(model)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    out = pixels.clone()
    for n in range(len(pixels)):
        if labels[n] < 0:
            continue
        leaf = pixels[n:n + 1].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model((leaf - mean) / std), labels[n:n + 1]).backward()
        out[n] = (leaf + epsilon * leaf.grad.sign()).clamp(0, 1)[0].detach()
    return out


def test_fgsm_task_counts_the_adversarial_predictions():
    """The task's FGSM error is that of the attacked pixels, worked out sample by sample; the
    attack is strong enough here that it differs from the clean error."""
    model, epsilon = linear_model(2), 4 / 255
    batches = random_batches(3, [12, 12, 9])
    result = tasks.fgsm(context(model, epsilon=epsilon), batches, lambda: None)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    clean = attacked = samples = 0
    for images, labels in batches:
        adversarial = fgsm_by_hand(model, images, labels, epsilon)
        with torch.no_grad():
            adversarial_logits = model((adversarial - mean) / std)
        clean_logits = logits_by_hand(model, images)
        for n, label in enumerate(labels.tolist()):
            if label < 0:
                continue
            samples += 1
            clean += int(clean_logits[n].argmax()) == label
            attacked += int(adversarial_logits[n].argmax()) == label
    assert result["samples"] == samples == 31
    assert result["clean_top1_err"] == pytest.approx(100.0 * (1 - clean / samples), abs=1e-9)
    assert result["fgsm_top1_err"] == pytest.approx(100.0 * (1 - attacked / samples), abs=1e-9)
    assert attacked < clean  # the attack changed predictions: the two counts tell apart
    assert result["epsilon"] == epsilon and result["epsilon_255"] == pytest.approx(4.0)


def test_ood_task_takes_the_in_distribution_as_the_positive_class(monkeypatch):
    """runner._ood as run_evaluation calls it, the in-distribution loader stood in for by batches
    and the noise sets made by the runner itself: each set's AUROC is sklearn's with the
    in-distribution max-softmax scores (worked out here) as the positive class."""
    model = linear_model(4, pooled=True)
    generator = torch.Generator().manual_seed(5)
    # Flat colours, some near grey: mostly more confident than the noise (whose channel means are
    # near 0.5), not all, so the AUROC is neither 0, 50 nor 100 and a swap would show.
    batches = []
    for size in (10, 10, 10):
        colours = torch.randint(0, 256, (size, 1, 1, 3), dtype=torch.uint8, generator=generator)
        batches.append((colours.expand(size, SIZE, SIZE, 3).contiguous(), torch.zeros(size, dtype=torch.int64)))
    batches[-1][1][-4:] = -1  # padding rows: not scored

    @contextlib.contextmanager
    def stood_in_pass(ctx, request, shards, split, task, *, metadata=False, check=True):
        assert (shards, split) == (request.shards, request.split)  # no OOD folder in this request
        yield iter(batches), lambda: None

    monkeypatch.setattr(runner, "_pass", stood_in_pass)
    request = SimpleNamespace(shards=Path("in-distribution"), split="val", ood_shards=(), ood_split=None,
                              batch_size=7, seed=9, progress=False)
    result = runner._ood(context(model), request)

    def max_softmax_by_hand(images):
        scores = []
        for row in logits_by_hand(model, images).double().tolist():
            exps = [math.exp(v) for v in row]
            scores.append(max(exps) / sum(exps))
        return scores

    inside = [s for images, labels in batches for s, label in zip(max_softmax_by_hand(images), labels.tolist())
              if label >= 0]
    assert result["in_distribution_samples"] == len(inside) == 26
    assert set(result["sets"]) == {"uniform", "gaussian"}
    for kind, metrics in result["sets"].items():
        outside = max_softmax_by_hand(noise_images(kind, range(len(inside)), size=SIZE, seed=9))
        assert metrics["samples"] == len(outside)
        assert not set(np.float32(inside)) & set(np.float32(outside))  # no tie: sklearn's AUROC is theirs
        expected = 100.0 * roc_auc_score([1] * len(inside) + [0] * len(outside), inside + outside)
        assert 55 < expected < 100, kind  # in-distribution mostly, not always, above
        assert metrics["auroc"] == pytest.approx(expected, abs=1e-4), kind


def test_localization_table_columns_hold_their_own_numbers(tmp_path):
    """Every number of the localize results in a distinct value, eval.md's row read back by its
    header: each column shows the number its header names."""
    localize = {"top1_loc": 11.0, "gt_known_loc": 22.0, "max_box_acc_v2": 33.0, "max_box_acc_v2_iou30": 44.0,
                "max_box_acc_v2_iou50": 55.0, "max_box_acc_v2_iou70": 66.0, "gt_known_threshold": 0.77,
                "samples_with_box": 88, "samples": 90, "boxes_kept": 95, "boxes_dropped_outside_crop": 3}
    settings = {"model": "m", "weights": "w.safetensors", "shards": "s", "split": "val", "world_size": 1,
                "device": "cpu", "precision": "no", "image_size": 224, "tasks": ["localize"], "finished": True}
    write_reports({"settings": settings, "localize": localize}, out=tmp_path)
    lines = (tmp_path / "eval.md").read_text().splitlines()
    heading = lines.index("## Localization (CAM, accuracies in %)")
    header, rule, row = lines[heading + 2:heading + 5]
    assert rule.startswith("|---|")
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert cells == {"Top-1 Loc": "11.00", "GT-known Loc": "22.00", "MaxBoxAccV2": "33.00", "IoU 0.3": "44.00",
                     "IoU 0.5": "55.00", "IoU 0.7": "66.00", "CAM threshold": "0.77", "samples with a box": "88"}
    assert "3 box(es) fell outside the centre crop" in lines[heading + 6]
    assert "2 sample(s) had no box left" in lines[heading + 6]



def test_in_between_table_shows_cutmix_exact_lambda_beside_each_row(tmp_path):
    # At 32 px the "0.50" row's boxes leave A 0.483 of the image: it is scored against B's label,
    # which the table did not show (walkthrough). Each column read back by its header.
    lambdas = [0.0, 0.5, 1.0]
    in_between = {"lambdas": lambdas, "pairs": 40, "cutmix_mean_lambda": [0.0, 0.4834, 1.0],
                  "mixup_top1_err": [1.0, 2.0, 3.0], "mixup_top2_both": [4.0, 5.0, 6.0],
                  "cutmix_top1_err": [7.0, 8.0, 9.0], "cutmix_top2_both": [10.0, 11.0, 12.0]}
    settings = {"model": "m", "weights": "w.safetensors", "shards": "s", "split": "val", "world_size": 1,
                "device": "cpu", "precision": "no", "image_size": 32, "tasks": ["in-between"], "finished": True}
    write_reports({"settings": settings, "in-between": in_between}, out=tmp_path)
    lines = (tmp_path / "eval.md").read_text().splitlines()
    heading = lines.index("## In-between-class samples (40 pairs, %)")
    header = [c.strip() for c in lines[heading + 2].strip("|").split("|")]
    middle = dict(zip(header, [c.strip() for c in lines[heading + 5].strip("|").split("|")]))
    assert middle == {"lambda": "0.50", "Mixup top-1 err": "2.00", "Mixup top-2 = both": "5.00",
                      "CutMix's exact lambda": "0.483", "CutMix top-1 err": "8.00", "CutMix top-2 = both": "11.00"}
