"""Weakly supervised object localization metrics of clovaai/wsolevaluation (Choe et al., CVPR 2020),
computed as their code computes them (``evaluation.py`` at commit 96f4b88: ``BoxEvaluator``,
``compute_bboxes_from_scoremaps``, ``calculate_multiple_iou``; ``inference.py``:
``normalize_scoremap`` and the CAM resize of ``CAMComputer``):

- a CAM is resized to the image with bicubic interpolation and min-max normalized (float64);
- at each CAM threshold t in 0, 0.01, ..., 0.99 the map (as uint8, ``int(255 * s)``) is binarized
  at ``> int(t * max)``, every contour of ``cv2.findContours(RETR_TREE)`` (outer borders and hole
  borders) gives the box ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` of its bounding rect, and
  an image is a hit when the IoU (inclusive pixels: width ``x1 - x0 + 1``) of a box with a
  ground-truth box reaches the IoU threshold;
- MaxBoxAccV2: hits with all contours (``multi_contour_eval``) at IoU 30, 50 and 70, each maximized
  over CAM thresholds, averaged; MaxBoxAcc (v1, GT-known Loc): the largest contour only (by
  ``cv2.contourArea``), IoU 50; Top-1 Loc: GT-known hits whose image is also classified correctly,
  at the threshold that maximizes GT-known Loc.

Counts are integers, so the sums over ranks are exact. Boxes: [x0, y0, x1, y1]."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..errors import EvalError

THRESHOLDS = np.arange(0, 1, 0.01)  # CAM thresholds: theirs with cam_curve_interval=0.01
IOU_THRESHOLDS = (30, 50, 70)  # percent, theirs iou_threshold_list
GT_KNOWN_IOU = 50  # MaxBoxAcc v1 / GT-known Loc / Top-1 Loc


def scoremaps(cams: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """float64 [B, H, W] in [0, 1]: each CAM resized to ``size`` = (H, W) with ``cv2.INTER_CUBIC``
    and min-max normalized; a constant (or NaN) map becomes zeros, as their ``normalize_scoremap``.
    float64 as theirs (``t2n``): the uint8 quantization that follows would differ in float32."""
    height, width = size
    maps = cams.detach().float().cpu().numpy().astype(np.float64)
    # dsize is (width, height); theirs passes images.shape[2:], which is the same for square images.
    resized = np.zeros((len(maps), height, width))
    for index, cam in enumerate(maps):
        resized[index] = cv2.resize(cam, (width, height), interpolation=cv2.INTER_CUBIC)
    resized -= resized.min(axis=(1, 2), keepdims=True)
    peak = resized.max(axis=(1, 2), keepdims=True)
    flat = (peak == 0) | np.isnan(peak)
    return np.where(flat, 0.0, resized / np.where(flat, 1.0, peak))


def quantize(scoremap: np.ndarray) -> np.ndarray:
    """The uint8 image their contours are found on (``(scoremap * 255).astype(np.uint8)``)."""
    return (scoremap * 255).astype(np.uint8)


def threshold_levels(image: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The integer binarization level of each CAM threshold: ``int(t * image.max())``, as theirs."""
    return (np.asarray(thresholds, dtype=np.float64) * image.max()).astype(np.int64)


def foreground_regions(image: np.ndarray) -> tuple[list[int], ...]:
    """(top, bottom, left, right) rows and columns (inclusive) of the pixels of the uint8 ``image``
    above each level 0..255; bottom = right = -1 where none is. Only this region is traced: outside
    it the binary map is 0, as cv2 takes the outside of the image to be, so the contours and their
    order are the same once ``offset`` puts them back; most levels keep a small region."""
    levels = np.arange(256)[:, None]
    regions = []
    for peaks in (image.max(axis=1), image.max(axis=0)):
        above = peaks[None, :] > levels  # [256, H or W]
        first = above.argmax(axis=1)
        last = len(peaks) - 1 - above[:, ::-1].argmax(axis=1)
        regions += [first.tolist(), np.where(above.any(axis=1), last, -1).tolist()]
    return tuple(regions)


def boxes_at_levels(image: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every contour box of ``image > level`` for each distinct level (a map whose maximum is below
    255 repeats levels: each is traced once), concatenated: (boxes [N, 4] int64, first row of each
    distinct level, row of its largest contour by ``cv2.contourArea`` (the first on ties, as
    Python's ``max``), index of each of ``levels`` among the distinct ones). A level without
    contours has the one box [0, 0, 0, 0], as theirs."""
    distinct, inverse = np.unique(levels, return_inverse=True)
    height, width = image.shape
    top, bottom, left, right = foreground_regions(image)
    rects, offsets, largest = [], [], []
    for level in distinct.tolist():
        offsets.append(len(rects))
        if bottom[level] < 0:
            rects.append((0, 0, 0, 0))  # theirs: [[0, 0, 0, 0]]; the clipping below keeps it
            largest.append(offsets[-1])
            continue
        region = image[top[level]:bottom[level] + 1, left[level]:right[level] + 1]
        _, binary = cv2.threshold(region, level, 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE,
                                    offset=(left[level], top[level]))[-2]
        rects.extend(cv2.boundingRect(contour) for contour in contours)
        areas = [cv2.contourArea(contour) for contour in contours] if len(contours) > 1 else [0.0]
        largest.append(offsets[-1] + areas.index(max(areas)))
    x, y, w, h = np.array(rects, dtype=np.int64).T
    boxes = np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)
    return boxes, np.array(offsets), np.array(largest), inverse


def boxes_from_scoremap(scoremap: np.ndarray, *, thresholds: np.ndarray = THRESHOLDS,
                        multi_contour: bool) -> tuple[np.ndarray, list[int]]:
    """Their ``compute_bboxes_from_scoremaps``, concatenated: (boxes [N, 4] int64, boxes per
    threshold); all contours with ``multi_contour``, else the largest one per threshold."""
    image = quantize(scoremap)
    boxes, offsets, largest, inverse = boxes_at_levels(image, threshold_levels(image, thresholds))
    if not multi_contour:
        return boxes[largest[inverse]], [1] * len(inverse)
    ends = np.append(offsets[1:], len(boxes))
    rows = np.concatenate([np.arange(offsets[index], ends[index]) for index in inverse])
    return boxes[rows], (ends - offsets)[inverse].tolist()


def best_boxes(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """[1, 4] int64: the box of the largest contour at CAM ``threshold`` (for drawing overlays)."""
    image = quantize(scoremap)
    boxes, _, largest, _ = boxes_at_levels(image, threshold_levels(image, np.array([threshold])))
    return boxes[largest]


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float64 [n, m]: IoU of [x0, y0, x1, y1] boxes counting pixels inclusively (area
    (x1 - x0 + 1) * (y1 - y0 + 1)), 0 where the union is empty; their ``calculate_multiple_iou``."""
    pred, gt = np.asarray(pred)[:, None, :], np.asarray(gt)[None, :, :]
    inter_w = np.maximum(0, np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1]) + 1)
    intersection = inter_w * inter_h
    area_pred = (pred[..., 2] - pred[..., 0] + 1) * (pred[..., 3] - pred[..., 1] + 1)
    area_gt = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    union = area_pred + area_gt - intersection
    degenerate = union <= 0
    return np.where(degenerate, 0.0, intersection / np.where(degenerate, 1, union))


def check_boxes(boxes: np.ndarray) -> None:
    """Raise ValueError unless ``boxes`` is [m >= 1, 4], non-negative, x0 <= x1 and y0 <= y1
    (their ``check_box_convention``)."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
        raise ValueError(f"ground-truth boxes must be [m >= 1, 4], got shape {boxes.shape}")
    if (boxes < 0).any() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"ground-truth boxes must be [x0, y0, x1, y1] with 0 <= x0 <= x1, 0 <= y0 <= y1: {boxes}")


class BoxAccuracy:
    """Integer hit counts per CAM threshold, accumulated image by image (``update``); ``counts()``
    can be summed over ranks and turned back into an accumulator (``from_counts``)."""

    def __init__(self, *, thresholds: np.ndarray = THRESHOLDS, iou_thresholds: tuple[int, ...] = IOU_THRESHOLDS):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.iou_thresholds = tuple(iou_thresholds)
        size = len(self.thresholds)
        self.multi = np.zeros((len(self.iou_thresholds), size), dtype=np.int64)
        self.largest = np.zeros(size, dtype=np.int64)
        self.top1 = np.zeros(size, dtype=np.int64)
        self.samples = np.zeros(1, dtype=np.int64)

    def update(self, scoremaps: np.ndarray, gt_boxes: list[np.ndarray], correct: np.ndarray) -> None:
        """Count the images of ``scoremaps`` [B, H, W] (in [0, 1], from ``scoremaps()``) against
        their boxes ``gt_boxes[i]`` [m_i >= 1, 4]; ``correct`` [B] (bool): classified correctly."""
        correct = np.asarray(correct, dtype=bool)
        if scoremaps.ndim != 3 or not len(scoremaps) == len(gt_boxes) == len(correct):
            raise ValueError(f"need scoremaps [B, H, W], B box arrays and B flags; got {scoremaps.shape}, "
                             f"{len(gt_boxes)} and {len(correct)}")
        if len(scoremaps) and (np.isnan(scoremaps).any() or scoremaps.min() < 0 or scoremaps.max() > 1):
            raise ValueError("scoremaps must lie in [0, 1] without NaN (normalize them with scoremaps())")
        iou_cuts = np.array(self.iou_thresholds)[:, None] / 100  # theirs: iou >= (threshold / 100)
        for scoremap, boxes, is_correct in zip(scoremaps, gt_boxes, correct):
            boxes = np.asarray(boxes, dtype=np.float64)
            check_boxes(boxes)
            image = quantize(scoremap)
            predicted, offsets, largest, inverse = boxes_at_levels(image, threshold_levels(image, self.thresholds))
            best_iou = box_iou(predicted, boxes).max(axis=1)  # each predicted box vs its best GT box
            best_any = np.maximum.reduceat(best_iou, offsets)[inverse]  # every level has >= 1 box
            located = best_iou[largest][inverse] >= GT_KNOWN_IOU / 100
            self.multi += best_any[None, :] >= iou_cuts
            self.largest += located
            self.top1 += located & is_correct
        self.samples += len(scoremaps)

    def counts(self) -> dict[str, np.ndarray]:
        """int64 arrays: 'multi' [len(IOU_THRESHOLDS), T], 'largest' [T], 'top1' [T], 'samples' [1]."""
        return {"multi": self.multi.copy(), "largest": self.largest.copy(), "top1": self.top1.copy(),
                "samples": self.samples.copy()}

    @classmethod
    def from_counts(cls, counts: dict[str, np.ndarray], *, thresholds: np.ndarray = THRESHOLDS,
                    iou_thresholds: tuple[int, ...] = IOU_THRESHOLDS) -> BoxAccuracy:
        """An accumulator holding ``counts`` (e.g. summed over ranks), to update further or read."""
        accuracy = cls(thresholds=thresholds, iou_thresholds=iou_thresholds)
        for key in ("multi", "largest", "top1", "samples"):
            value = np.asarray(counts[key], dtype=np.int64)
            if value.shape != getattr(accuracy, key).shape:
                raise ValueError(f"counts[{key!r}] has shape {value.shape}, expected {getattr(accuracy, key).shape}")
            setattr(accuracy, key, value.copy())
        return accuracy


def wsol_metrics(counts: dict[str, np.ndarray], *, thresholds: np.ndarray = THRESHOLDS,
                 iou_thresholds: tuple[int, ...] = IOU_THRESHOLDS) -> dict:
    """Percentages from ``BoxAccuracy.counts()``: max_box_acc_v2 and max_box_acc_v2_iou{30,50,70},
    gt_known_loc (MaxBoxAcc v1), top1_loc and gt_known_threshold (the CAM threshold of both),
    wsol_samples, and the curves over ``thresholds`` (lists, for plots)."""
    samples = int(np.asarray(counts["samples"]).sum())
    if samples == 0:
        raise EvalError("localize: no image with a ground-truth box was evaluated")
    multi = np.asarray(counts["multi"]) * 100.0 / samples  # theirs: num_correct * 100. / float(cnt)
    largest = np.asarray(counts["largest"]) * 100.0 / samples
    top1 = np.asarray(counts["top1"]) * 100.0 / samples
    best = int(np.argmax(largest))
    metrics = {"max_box_acc_v2": float(np.mean(multi.max(axis=1)))}
    metrics.update({f"max_box_acc_v2_iou{iou}": float(curve.max()) for iou, curve in zip(iou_thresholds, multi)})
    metrics.update({"gt_known_loc": float(largest[best]), "top1_loc": float(top1[best]),
                    "gt_known_threshold": float(thresholds[best]), "wsol_samples": samples,
                    "curve_thresholds": [float(t) for t in thresholds],
                    "gt_known_loc_curve": largest.tolist(), "top1_loc_curve": top1.tolist()})
    metrics.update({f"box_acc_iou{iou}_curve": curve.tolist() for iou, curve in zip(iou_thresholds, multi)})
    return metrics
