"""The six evaluation tasks, each one pass over a split: batches in, integer counts (or scores)
out, summed (or gathered) over ranks at the end, so every sample counts once whatever the number
of processes. The metric definitions live beside them: ``wsol`` and ``cam`` (localization),
``occlusion``, ``inbetween``, ``fgsm``, ``ood``; this module only feeds them and reduces."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import Augmentation
from ..mix.core import normalization_on
from ..seeds import generator_seed
from ..errors import EvalError
from .boxes import transform_boxes
from .cam import cam_and_logits, cam_classifier, class_activation_maps
from .classify import count_correct, normalize_batch, top_classes
from .fgsm import fgsm_pixels
from .inbetween import LAMBDAS, box_lambda, cutmix_box, cutmix_pair, inbetween_counts, mixup_pair, partner_order
from .occlusion import occlude, occlusion_sides
from .ood import max_softmax
from .wsol import BoxAccuracy, scoremaps, wsol_metrics

OCCLUSION_MODES = ("hole", "keep")  # a centred hole set to the mean colour; everything outside a centred square
MIXES = ("mixup", "cutmix")


@dataclass
class TaskContext:
    """What every task needs: the model on its device, the input format and the reductions."""

    model: torch.nn.Module
    accelerator: object  # accelerate.Accelerator
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: torch.dtype  # of the model's inputs (bf16 under autocast on CUDA, float32 on CPU)
    channels_last: bool
    num_classes: int
    augmentation: Augmentation
    seed: int
    epsilon: float
    occlusion_steps: int
    cam_examples: int  # samples of rank 0 kept for the CAM overlay grid
    examples: dict = field(default_factory=dict)  # filled by the localization pass, for the plots

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_batch(images, mean=self.mean, std=self.std, dtype=self.dtype,
                               channels_last=self.channels_last)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with self.accelerator.autocast():
            return self.model(inputs).float()

    def reduce(self, counts: torch.Tensor) -> torch.Tensor:
        """Integer counts summed over ranks (exact whatever the order), on the host."""
        return self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``values``, concatenated, on the host."""
        return self.accelerator.gather(values.to(self.accelerator.device).contiguous()).cpu()


Tick = Callable[[], None]


@torch.no_grad()
def classify(ctx: TaskContext, batches: Iterable, tick: Tick) -> dict:
    """Top-1 / top-5 error over the split and the top-1 error of each class."""
    device = ctx.accelerator.device
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    per_class = torch.zeros(2, ctx.num_classes, dtype=torch.int64, device=device)  # samples, top-1 correct
    for images, labels, *_ in batches:
        logits = ctx.logits(ctx.inputs(images))
        counts += count_correct(logits, labels)
        valid = labels >= 0
        label = labels.clamp(min=0)
        per_class[0].scatter_add_(0, label, valid.long())
        per_class[1].scatter_add_(0, label, (valid & (top_classes(logits, 1)[:, 0] == labels)).long())
        tick()
    top1, top5, samples = ctx.reduce(counts).tolist()
    seen, correct = ctx.reduce(per_class).tolist()
    return {"samples": samples, "top1_err": 100.0 * (1 - top1 / samples), "top5_err": 100.0 * (1 - top5 / samples),
            "per_class_top1_err": [None if n == 0 else 100.0 * (1 - c / n) for n, c in zip(seen, correct)],
            "per_class_samples": seen}


@torch.no_grad()
def localize(ctx: TaskContext, batches: Iterable, tick: Tick) -> dict:
    """CAM localization (wsolevaluation's protocol) on the samples that have a box inside the crop."""
    weight = cam_classifier(ctx.model)
    accuracy = BoxAccuracy()
    size = ctx.augmentation.image_size
    tally = np.zeros(4, dtype=np.int64)  # samples, with a box, boxes kept, boxes dropped (outside the crop)
    for images, labels, records in batches:
        inputs = ctx.inputs(images)
        with ctx.accelerator.autocast():
            logits, features = cam_and_logits(ctx.model, inputs)
        logits, features = logits.float(), features.float()
        cams = class_activation_maps(features, weight.float(), labels.clamp(min=0))
        maps = scoremaps(cams, (size, size))
        labels_host, correct = labels.cpu().numpy(), (top_classes(logits, 1)[:, 0] == labels).cpu().numpy()
        rows, boxes = [], []
        for row, record in enumerate(records):
            if labels_host[row] < 0:
                continue
            kept, dropped = transform_boxes(record, augmentation=ctx.augmentation)
            tally += (1, bool(len(kept)), len(kept), dropped)
            if len(kept):
                rows.append(row)
                boxes.append(np.floor(kept))  # whole pixels, as wsolevaluation's resize_bbox truncates
        if rows:
            accuracy.update(maps[rows], boxes, correct[rows])
            _keep_examples(ctx, images, maps, rows, boxes, labels_host, logits)
        tick()
    counts = {key: torch.from_numpy(np.asarray(value, dtype=np.int64)) for key, value in accuracy.counts().items()}
    reduced = {key: ctx.reduce(value).numpy() for key, value in counts.items()}
    samples, with_box, kept, dropped = ctx.reduce(torch.from_numpy(tally)).tolist()
    return {**wsol_metrics(reduced), "samples": samples, "samples_with_box": with_box, "boxes_kept": kept,
            "boxes_dropped_outside_crop": dropped}


def _keep_examples(ctx: TaskContext, images, maps, rows, boxes, labels, logits) -> None:
    """The first samples of rank 0 for the overlay grid: image, scoremap, true boxes, labels."""
    if not ctx.accelerator.is_main_process:
        return
    kept = ctx.examples.setdefault("localize", [])
    predicted = top_classes(logits, 1)[:, 0].cpu().numpy()
    for row, box in zip(rows, boxes):
        if len(kept) >= ctx.cam_examples:
            return
        kept.append({"image": images[row].cpu().numpy(), "scoremap": maps[row], "boxes": box,
                     "label": int(labels[row]), "predicted": int(predicted[row])})


@torch.no_grad()
def occlusion(ctx: TaskContext, batches: Iterable, tick: Tick) -> dict:
    """Top-1 error with a centred hole of each side (mean colour), and with only a centred square kept."""
    sides = occlusion_sides(ctx.augmentation.image_size, ctx.occlusion_steps)
    counts = torch.zeros(len(OCCLUSION_MODES), len(sides), 3, dtype=torch.int64, device=ctx.accelerator.device)
    for images, labels, *_ in batches:
        inputs = ctx.inputs(images)
        for m, mode in enumerate(OCCLUSION_MODES):
            for s, side in enumerate(sides):
                counts[m, s] += count_correct(ctx.logits(occlude(inputs, side, mode=mode)), labels)
        tick()
    counts = ctx.reduce(counts)
    errors = (100.0 * (1 - counts[..., 0].double() / counts[..., 2].double())).tolist()
    return {"sides": sides, "samples": int(counts[0, 0, 2]),
            **{f"{mode}_top1_err": errors[m] for m, mode in enumerate(OCCLUSION_MODES)}}


@torch.no_grad()
def in_between(ctx: TaskContext, batches: Iterable, tick: Tick) -> dict:
    """Pairs within each batch (a fixed seeded permutation), mixed by Mixup and CutMix at each lambda."""
    device = ctx.accelerator.device
    counts = torch.zeros(len(MIXES), len(LAMBDAS), 3, dtype=torch.int64, device=device)
    # CutMix's exact lambdas (whole-pixel boxes): their sum and count, for the report's mean.
    lam_sums = torch.zeros(len(LAMBDAS) + 1, dtype=torch.float64)
    # The CutMix boxes of each rank drawn in sequence from the seed: reproducible, not shared.
    generator = torch.Generator().manual_seed(generator_seed(seed=ctx.seed, rank=ctx.accelerator.process_index))
    partner = None
    for images, labels, *_ in batches:
        inputs = ctx.inputs(images)
        if partner is None:  # every batch of a pass has the same size (val batches are padded)
            partner = partner_order(len(labels), ctx.seed).to(device)
        labels_b = labels[partner]
        valid = (labels >= 0) & (labels_b >= 0) & (labels != labels_b)
        for k, lam in enumerate(LAMBDAS):
            mixed = mixup_pair(inputs, inputs[partner], lam)
            counts[0, k] += inbetween_counts(ctx.logits(mixed), labels, labels_b, lam, valid)
            box = cutmix_box(lam, inputs.shape[2], inputs.shape[3], generator)
            weight = box_lambda(box, inputs.shape[2], inputs.shape[3])
            lam_sums[k] += float(weight)
            counts[1, k] += inbetween_counts(ctx.logits(cutmix_pair(inputs, inputs[partner], box)), labels, labels_b,
                                             weight, valid)
        lam_sums[-1] += 1
        tick()
    counts = ctx.reduce(counts)
    lam_sums = ctx.reduce(lam_sums)
    pairs = int(counts[0, 0, 2])
    if pairs == 0:
        raise EvalError("in-between: no pair of two different classes in any batch (pairs are formed inside "
                        "each batch: use a larger --batch-size, or drop in-between)")
    result = {"lambdas": list(LAMBDAS), "pairs": pairs,
              "cutmix_mean_lambda": (lam_sums[:-1] / lam_sums[-1].clamp(min=1)).tolist()}
    for m, mix in enumerate(MIXES):
        result[f"{mix}_top1_err"] = (100.0 * counts[m, :, 0].double() / pairs).tolist()
        result[f"{mix}_top2_both"] = (100.0 * counts[m, :, 1].double() / pairs).tolist()
    return result


def fgsm(ctx: TaskContext, batches: Iterable, tick: Tick) -> dict:
    """Top-1 error on clean inputs and after a one-step FGSM attack of ``epsilon`` (pixel units)."""
    device = ctx.accelerator.device
    counts = torch.zeros(2, 3, dtype=torch.int64, device=device)
    for images, labels, *_ in batches:
        pixels = images.permute(0, 3, 1, 2).float().div(255)
        if ctx.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        adversarial = fgsm_pixels(ctx.model, pixels, labels, epsilon=ctx.epsilon, mean=ctx.mean, std=ctx.std,
                                  autocast=ctx.accelerator.autocast)
        with torch.no_grad():
            counts[0] += count_correct(ctx.logits(ctx.inputs(images)), labels)
            counts[1] += count_correct(ctx.logits(_normalized(ctx, adversarial)), labels)
        tick()
    counts = ctx.reduce(counts).double()
    errors = (100.0 * (1 - counts[:, 0] / counts[:, 2])).tolist()
    return {"epsilon": ctx.epsilon, "epsilon_255": ctx.epsilon * 255, "samples": int(counts[0, 2]),
            "clean_top1_err": errors[0], "fgsm_top1_err": errors[1]}


def _normalized(ctx: TaskContext, pixels: torch.Tensor) -> torch.Tensor:
    scale, shift = normalization_on(pixels.device, mean=ctx.mean, std=ctx.std, from_uint8=False)
    fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
    out = pixels * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return out.to(ctx.dtype).contiguous(memory_format=fmt)


@torch.no_grad()
def softmax_scores(ctx: TaskContext, batches: Iterable, tick: Tick) -> np.ndarray:
    """The maximum softmax probability of every real sample of a set, gathered from all ranks."""
    scores, masks = [], []
    for images, labels, *_ in batches:
        scores.append(max_softmax(ctx.logits(ctx.inputs(images))))
        masks.append(labels >= 0)
        tick()
    scores, masks = ctx.gather(torch.cat(scores)), ctx.gather(torch.cat(masks))
    return scores[masks].double().numpy()
