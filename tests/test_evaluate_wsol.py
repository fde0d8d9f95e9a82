"""CAMs and the WSOL box metrics (pipeline.evaluate.cam, pipeline.evaluate.wsol) against independent
references: a naive per-threshold reimplementation of wsolevaluation's box rule from connected
components (scipy.ndimage) and a per-pair IoU loop; IoUs and boxes computed by hand (some from
clovaai/wsolevaluation's own evaluation_test.py); a hand-built model whose CAM is a known square;
CAMs from an explicit loop over channels; real timm models accepted or refused."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from scipy import ndimage
from torch import nn

import pipeline.models  # noqa: F401 - registers the PyramidNets with timm
from pipeline.errors import EvalError
from pipeline.evaluate.cam import cam_and_logits, cam_classifier, check_head, class_activation_maps
from pipeline.evaluate.wsol import (
    IOU_THRESHOLDS,
    THRESHOLDS,
    BoxAccuracy,
    best_boxes,
    box_iou,
    boxes_from_scoremap,
    scoremaps,
    wsol_metrics,
)


def reference_boxes(scoremap: np.ndarray, threshold: float) -> tuple[list[list[int]], int]:
    """(every box, index of the largest 8-connected component's box) at one CAM threshold.

    Their rule: pixels with int(255 * s) > int(t * max); a box per contour of cv2's RETR_TREE, i.e.
    per 8-connected component (outer border) and per hole (a 4-connected background component not
    reaching the image edge, whose border runs on the foreground pixels around it: the hole's
    extent grown by one pixel); box = [x, y, x + w, y + h] of the pixel extent (w = columns
    spanned), the far corner clipped to the last pixel. No pixel: the one box [0, 0, 0, 0].
    'Largest' here is by pixel count, where theirs is cv2.contourArea (the polygon through the
    border pixels' centres): only the structured maps below make the two agree."""
    image = (scoremap * 255).astype(np.uint8)
    mask = image > int(threshold * int(image.max()))
    height, width = mask.shape

    def box(first_row, last_row, first_column, last_column):
        return [first_column, first_row, min(last_column + 1, width - 1), min(last_row + 1, height - 1)]

    boxes, sizes = [], []
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    for index, (rows, columns) in enumerate(ndimage.find_objects(labels)):
        boxes.append(box(rows.start, rows.stop - 1, columns.start, columns.stop - 1))
        sizes.append(int((labels == index + 1).sum()))
    background, _ = ndimage.label(~mask)  # 4-connected
    for rows, columns in ndimage.find_objects(background):
        if rows.start > 0 and columns.start > 0 and rows.stop < height and columns.stop < width:
            boxes.append(box(rows.start - 1, rows.stop, columns.start - 1, columns.stop))
    if not sizes:
        return [[0, 0, 0, 0]], 0
    return boxes, sizes.index(max(sizes))


def reference_iou(a, b) -> float:
    """IoU of two [x0, y0, x1, y1] boxes of inclusive pixels, written out."""
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter_w * inter_h
    return inter_w * inter_h / union if union > 0 else 0.0


def reference_counts(maps, gt_boxes, correct) -> dict[str, np.ndarray]:
    multi = np.zeros((len(IOU_THRESHOLDS), len(THRESHOLDS)), dtype=np.int64)
    largest, top1 = np.zeros(len(THRESHOLDS), dtype=np.int64), np.zeros(len(THRESHOLDS), dtype=np.int64)
    for scoremap, gts, is_correct in zip(maps, gt_boxes, correct):
        for column, threshold in enumerate(THRESHOLDS):
            boxes, biggest = reference_boxes(scoremap, threshold)
            best = max(reference_iou(box, gt) for box in boxes for gt in gts)
            for row, iou_threshold in enumerate(IOU_THRESHOLDS):
                multi[row, column] += best >= iou_threshold / 100
            hit = max(reference_iou(boxes[biggest], gt) for gt in gts) >= 0.5
            largest[column] += hit
            top1[column] += hit and is_correct
    return {"multi": multi, "largest": largest, "top1": top1, "samples": np.array([len(maps)])}


def boxes_near_predictions(maps, rng) -> list[np.ndarray]:
    """Ground truth that the maps sometimes hit: a reference box at a random threshold, moved by a
    few pixels, plus now and then a random box."""
    gt_boxes = []
    for scoremap in maps:
        height, width = scoremap.shape
        boxes, _ = reference_boxes(scoremap, rng.choice(THRESHOLDS))
        chosen = np.array(boxes[rng.integers(len(boxes))], dtype=np.float64) + rng.integers(-2, 3, size=4)
        chosen = np.clip(chosen, 0, [width - 1, height - 1, width - 1, height - 1])
        chosen[2:] = np.maximum(chosen[2:], chosen[:2])
        rows = [chosen]
        if rng.random() < 0.5:
            corner = rng.uniform(0, [width / 2, height / 2])
            rows.append(np.concatenate([corner, corner + rng.uniform(1, [width / 2, height / 2])]))
        gt_boxes.append(np.stack(rows))
    return gt_boxes


def blocky_maps(rng, count: int, *, shape=(8, 10), block: int = 3) -> np.ndarray:
    """Random piecewise-constant maps with many components, holes and touching corners."""
    maps = rng.random((count, *shape)) ** 2
    maps[rng.random(maps.shape) < 0.2] = 0.0
    maps = np.stack([np.kron(m, np.ones((block, block))) for m in maps])
    return maps / maps.max(axis=(1, 2), keepdims=True)


def bump_maps(rng, count: int, *, shape=(48, 64)) -> np.ndarray:
    """Two far-apart Gaussian bumps, one both higher and wider, and sometimes a ring around an
    island: the biggest component by pixels is also the biggest contour, at every threshold."""
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    maps = []
    for index in range(count):
        big, small = (rng.uniform(14, 18), rng.uniform(12, 18)), (rng.uniform(30, 34), rng.uniform(44, 52))
        scoremap = np.exp(-((rows - big[0]) ** 2 + (columns - big[1]) ** 2) / (2 * 6.0 ** 2))
        scoremap += 0.6 * np.exp(-((rows - small[0]) ** 2 + (columns - small[1]) ** 2) / (2 * 2.5 ** 2))
        if index % 3 == 0:  # a ring (hole contour) around an island, smaller than the big bump's disc
            radius = np.hypot(rows - 36, columns - 14)
            scoremap = np.maximum(scoremap, np.where((radius > 4) & (radius < 8), 0.35, 0.0))
            scoremap = np.maximum(scoremap, np.where(radius < 1.5, 0.25, 0.0))
        maps.append(scoremap / scoremap.max())
    return np.stack(maps)


def as_dict(counts: dict[str, np.ndarray]) -> dict[str, list]:
    return {key: np.asarray(value).tolist() for key, value in counts.items()}


def test_counts_of_blocky_maps_match_the_naive_reference():
    """All-contour counts (holes included) on maps with many components. 'largest' is left out:
    cv2.contourArea's polygon areas and tie order are not what the reference reproduces."""
    rng = np.random.default_rng(0)
    maps = blocky_maps(rng, 16)
    gt_boxes = boxes_near_predictions(maps, rng)
    accuracy = BoxAccuracy()
    accuracy.update(maps, gt_boxes, np.ones(len(maps), dtype=bool))
    counts, expected = accuracy.counts(), reference_counts(maps, gt_boxes, np.ones(len(maps), dtype=bool))
    assert counts["multi"].dtype == np.int64 and counts["multi"].shape == (3, 100)
    assert counts["multi"].tolist() == expected["multi"].tolist()
    assert counts["samples"].tolist() == [16]
    assert expected["multi"].sum() > 100  # the ground truth is hit: the comparison means something


def test_counts_of_structured_maps_match_the_naive_reference():
    """All four counts where the largest component is unambiguous, with a ring whose hole contour
    is some ground-truth box (hit by all-contour boxes only)."""
    rng = np.random.default_rng(1)
    maps = bump_maps(rng, 9)
    gt_boxes = boxes_near_predictions(maps, rng)
    # The hole contour of map 0's ring: background rows 32..40, columns 10..18 (radius <= 4), traced
    # one pixel out -> [9, 31, 19 + 1, 41 + 1]; the ring's outer box [7, 29, 22, 44] has IoU 0.56 with it.
    gt_boxes[0] = np.array([[9.0, 31.0, 20.0, 42.0]])
    correct = np.arange(len(maps)) % 2 == 0
    accuracy = BoxAccuracy()
    accuracy.update(maps, gt_boxes, correct)
    expected = reference_counts(maps, gt_boxes, correct)
    assert as_dict(accuracy.counts()) == as_dict(expected)
    assert expected["largest"].sum() > 50 and expected["top1"].sum() < expected["largest"].sum()
    single = BoxAccuracy()
    single.update(maps[:1], gt_boxes[:1], correct[:1])
    assert single.counts()["multi"][2].max() == 1 and single.counts()["largest"].max() == 0


def test_counts_of_upsampled_cams_match_the_naive_reference():
    """Through ``scoremaps``: 7x7 CAMs resized to 224x224 as wsolevaluation does."""
    rng = np.random.default_rng(2)
    maps = scoremaps(torch.from_numpy(rng.normal(size=(4, 7, 7)).astype(np.float32)), (224, 224))
    gt_boxes = boxes_near_predictions(maps, rng)
    accuracy = BoxAccuracy()
    accuracy.update(maps, gt_boxes, np.ones(4, dtype=bool))
    assert accuracy.counts()["multi"].tolist() == reference_counts(maps, gt_boxes, [True] * 4)["multi"].tolist()


def test_boxes_per_threshold_match_the_naive_reference():
    rng = np.random.default_rng(3)
    for scoremap in [*blocky_maps(rng, 3, shape=(6, 7)), *bump_maps(rng, 2)]:
        boxes, numbers = boxes_from_scoremap(scoremap, multi_contour=True)
        largest, ones = boxes_from_scoremap(scoremap, multi_contour=False)
        assert len(numbers) == len(ones) == 100 and ones == [1] * 100 and len(boxes) == sum(numbers)
        starts = np.cumsum([0] + numbers)
        for index, threshold in enumerate(THRESHOLDS):
            expected, _ = reference_boxes(scoremap, threshold)
            assert sorted(boxes[starts[index]:starts[index + 1]].tolist()) == sorted(expected)
            assert largest[index].tolist() in expected


def test_counts_of_two_halves_add_up_to_the_whole_batch():
    """What the all-reduce over ranks relies on; from_counts takes the sum back."""
    rng = np.random.default_rng(4)
    maps = blocky_maps(rng, 10)
    gt_boxes, correct = boxes_near_predictions(maps, rng), rng.random(10) < 0.5
    whole, first, second = BoxAccuracy(), BoxAccuracy(), BoxAccuracy()
    whole.update(maps, gt_boxes, correct)
    first.update(maps[:4], gt_boxes[:4], correct[:4])
    second.update(maps[4:], gt_boxes[4:], correct[4:])
    summed = {key: first.counts()[key] + second.counts()[key] for key in whole.counts()}
    assert as_dict(summed) == as_dict(whole.counts())
    assert as_dict(BoxAccuracy.from_counts(summed).counts()) == as_dict(whole.counts())
    assert wsol_metrics(summed) == wsol_metrics(whole.counts())
    resumed = BoxAccuracy.from_counts(first.counts())
    resumed.update(maps[4:], gt_boxes[4:], correct[4:])
    assert as_dict(resumed.counts()) == as_dict(whole.counts())


@pytest.mark.parametrize("pred, gt, expected", [
    ([1, 1, 3, 3], [1, 1, 3, 3], 1.0),
    ([1, 2, 5, 6], [3, 1, 4, 5], 8 / 27),  # wsolevaluation's evaluation_test.py
    ([0, 0, 2, 2], [2, 0, 4, 2], 3 / 15),  # one shared column: 3 pixels (0 without the +1)
    ([0, 0, 1, 1], [3, 3, 4, 4], 0.0),
    ([5, 5, 5, 5], [5, 5, 5, 5], 1.0),  # a single pixel has area 1
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # theirs: the "no box" box against itself
    ([0, 0, 9, 9], [0.0, 0.0, 4.5, 9.0], 55 / 100),  # float ground truth: 5.5 x 10 inside 10 x 10
    ([3, 3, 2, 2], [3, 3, 2, 2], 0.0),  # empty union: 0, as theirs
])
def test_box_iou_hand_computed(pred, gt, expected):
    assert box_iou(np.array([pred]), np.array([gt])) == pytest.approx(np.array([[expected]]), abs=1e-12)


def test_box_iou_is_every_pair():
    pred = np.array([[0, 0, 3, 3], [2, 2, 5, 5], [10, 10, 12, 12]])
    gt = np.array([[0.0, 0.0, 3.0, 3.0], [2.0, 0.0, 5.0, 3.0]])
    expected = [[reference_iou(a, b) for b in gt] for a in pred]
    assert box_iou(pred, gt).shape == (3, 2)
    np.testing.assert_allclose(box_iou(pred, gt), expected, rtol=0, atol=1e-12)


# wsolevaluation's evaluation_test.py: test_compute_bboxes_from_scoremaps_{degenerate,unimodal,multimodal}.
UNIMODAL = [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.4, 0.4, 0.4, 0.6], [0.0, 0.4, 1.0, 0.8, 0.6], [0.0, 0.4, 0.4, 0.4, 0.6]]
MULTIMODAL = [[0.4, 0.0, 0.2, 0.2, 0.2], [0.4, 0.4, 0.0, 0.4, 0.0], [0.0, 0.0, 0.0, 0.4, 0.0], [1.0, 0.6, 0.8, 0.2, 0.2]]


@pytest.mark.parametrize("scoremap, expected", [
    (np.zeros((3, 3)), [[0, 0, 0, 0]] * 5),
    (np.array(UNIMODAL), [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]),
    (np.array(MULTIMODAL), [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]),
])
def test_largest_boxes_as_wsolevaluation_tests_them(scoremap, expected):
    boxes, numbers = boxes_from_scoremap(scoremap, thresholds=np.arange(0, 1, 0.2), multi_contour=False)
    assert boxes.tolist() == expected and numbers == [1] * 5


def test_wsol_metrics_hand_computed():
    multi = np.zeros((3, 100), dtype=np.int64)
    multi[0, 10], multi[1, [20, 30]], multi[2, 40] = 4, [3, 2], 1
    largest = np.zeros(100, dtype=np.int64)
    largest[[20, 25]] = 3  # a tie: the first threshold wins, as np.argmax
    top1 = np.zeros(100, dtype=np.int64)
    top1[[20, 25]] = [1, 3]
    metrics = wsol_metrics({"multi": multi, "largest": largest, "top1": top1, "samples": np.array([4])})
    assert metrics["max_box_acc_v2_iou30"] == 100.0 and metrics["max_box_acc_v2_iou50"] == 75.0
    assert metrics["max_box_acc_v2_iou70"] == 25.0 and metrics["max_box_acc_v2"] == pytest.approx(200 / 3)
    assert metrics["gt_known_loc"] == 75.0 and metrics["top1_loc"] == 25.0
    assert metrics["gt_known_threshold"] == pytest.approx(0.2) and metrics["wsol_samples"] == 4
    assert len(metrics["box_acc_iou50_curve"]) == 100 and metrics["box_acc_iou50_curve"][30] == 50.0
    assert metrics["curve_thresholds"][:3] == pytest.approx([0.0, 0.01, 0.02])


def test_scoremaps_normalize_and_keep_orientation():
    cams = torch.zeros(3, 4, 6)
    cams[0, 0, 5] = 2.0  # peak in the top-right corner
    cams[1] = 7.0  # constant: zeros, not NaN
    cams[2, 1, 1] = float("nan")  # theirs: zeros
    maps = scoremaps(cams, (20, 30))
    assert maps.shape == (3, 20, 30) and maps.dtype == np.float64 and not np.isnan(maps).any()
    assert maps[0].min() == 0.0 and maps[0].max() == 1.0
    row, column = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert row < 3 and column > 26
    assert not maps[1].any() and not maps[2].any()
    accuracy = BoxAccuracy()  # a zero map gives the box [0, 0, 0, 0] at every threshold, as theirs
    accuracy.update(maps[1:2], [np.array([[0.0, 0.0, 0.0, 0.0]])], np.array([True]))
    assert accuracy.counts()["largest"].tolist() == [1] * 100


class SquareFinder(nn.Module):
    """Features: a fixed 1x1 conv keeping the red and green channels, then average pooling by
    ``stride`` (a CNN's downsampling); head: global average pooling + the identity as linear layer.
    Class 0 = "more red", class 1 = "more green"; the CAM of a class is that colour's map."""

    def __init__(self, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.conv.weight.data = torch.eye(3)[:2].view(2, 3, 1, 1)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.fc = nn.Linear(2, 2)
        self.fc.weight.data, self.fc.bias.data = torch.eye(2), torch.zeros(2)

    def forward_features(self, x):
        return self.pool(self.conv(x))

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def squares_batch():
    """Two 64x64 images: a red 24x16 square (class 0, classified right) and a large red square
    with a small green one, labelled green (class 1): classified as red, but its green CAM finds
    the green square. Boxes as CUB's x, y, w, h -> [x, y, x + w, y + h]."""
    images = torch.zeros(2, 3, 64, 64)
    images[0, 0, 16:32, 24:48] = 1.0  # rows 16..31, columns 24..47
    images[1, 0, 0:40, 0:40] = 1.0
    images[1, 1, 48:56, 40:56] = 1.0
    boxes = [np.array([[24.0, 16.0, 48.0, 32.0]]), np.array([[40.0, 48.0, 56.0, 56.0]])]
    return images, torch.tensor([0, 1]), boxes


def localize(model, images, labels, boxes) -> dict:
    weight = cam_classifier(model)
    logits, features = cam_and_logits(model, images.contiguous(memory_format=torch.channels_last))
    check_head(model, features, logits)
    maps = scoremaps(class_activation_maps(features, weight, labels), images.shape[2:])
    accuracy = BoxAccuracy()
    accuracy.update(maps, boxes, (logits.argmax(1) == labels).numpy())
    return wsol_metrics(accuracy.counts()) | {"maps": maps}


def test_cam_of_a_known_square_localizes_it_exactly():
    images, labels, boxes = squares_batch()
    metrics = localize(SquareFinder(stride=1), images, labels, boxes)
    assert metrics["gt_known_loc"] == 100.0 and metrics["top1_loc"] == 50.0
    assert metrics["max_box_acc_v2"] == 100.0
    assert all(value == 100.0 for value in metrics["gt_known_loc_curve"])  # the exact box at every threshold
    assert best_boxes(metrics["maps"][0], 0.5).tolist() == [[24, 16, 48, 32]]
    assert best_boxes(metrics["maps"][1], 0.5).tolist() == [[40, 48, 56, 56]]


def test_cam_of_a_downsampled_feature_map_finds_the_square():
    """8x8 features upsampled bicubically: some threshold gives IoU >= 0.7; a wrong box never hits."""
    images, labels, boxes = squares_batch()
    metrics = localize(SquareFinder(stride=8), images, labels, boxes)
    assert metrics["max_box_acc_v2"] == 100.0 and metrics["gt_known_loc"] == 100.0 and metrics["top1_loc"] == 50.0
    wrong = [np.array([[0.0, 40.0, 15.0, 63.0]]), np.array([[0.0, 0.0, 20.0, 20.0]])]
    metrics = localize(SquareFinder(stride=8), images, labels, wrong)
    assert metrics["max_box_acc_v2"] == 0.0 and metrics["gt_known_loc"] == 0.0 and metrics["top1_loc"] == 0.0


def test_class_activation_maps_match_a_loop_over_channels():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 4, 6, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(7, 5, generator=generator)
    classes = torch.tensor([6, 0, 3])
    expected = torch.zeros(3, 4, 6, dtype=torch.float64)
    for b in range(3):
        for c in range(5):
            expected[b] += weight[classes[b], c].double() * features[b, c].double()
    cams = class_activation_maps(features, weight, classes)
    assert cams.dtype == torch.float32 and cams.shape == (3, 4, 6)
    torch.testing.assert_close(cams.double(), expected, rtol=1e-6, atol=1e-6)
    cams = class_activation_maps(features.to(torch.bfloat16), weight.to(torch.bfloat16), classes)
    assert cams.dtype == torch.float32


@pytest.mark.parametrize("name, size", [("resnet10t", 64), ("resnet18", 64), ("resnet50", 64), ("pyramidnet20_a48", 32)])
def test_cam_classifier_accepts_pooled_linear_heads(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    weight = cam_classifier(model)
    assert weight.shape == (10, model.num_features)
    inputs = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    for dtype in (torch.float32, torch.bfloat16):  # bfloat16: the tolerance of a mixed-precision run
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits, features = cam_and_logits(model, inputs)
        check_head(model, features, logits)
        assert features.ndim == 4 and logits.shape == (2, 10)


class TwoLayerHead(SquareFinder):
    """GAP + Linear + ReLU + Linear: no CAM."""

    def __init__(self):
        super().__init__(stride=1)
        self.head = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward_head(self, x):
        return self.head(x.mean((2, 3)))

    def get_classifier(self):
        return self.head


class HiddenConvHead(SquareFinder):
    """A 1x1 conv between the features and the pooling, outside forward_features: get_classifier()
    is one Linear, but the logits are not the pooled features times it."""

    def __init__(self):
        super().__init__(stride=1)
        self.head_conv = nn.Conv2d(2, 2, kernel_size=1)

    def forward_head(self, x):
        return self.fc(torch.relu(self.head_conv(x)).mean((2, 3)))


def test_cam_classifier_refuses_other_heads():
    model = TwoLayerHead()
    with pytest.raises(EvalError, match=r"TwoLayerHead's classifier is Sequential, not one nn.Linear"):
        cam_classifier(model)
    model.get_classifier = lambda: model.head[2]  # an MLP head that names only its last layer
    logits, features = cam_and_logits(model, torch.rand(2, 3, 16, 16))
    with pytest.raises(EvalError, match=r"feature map has 2 channels but its classifier takes 8"):
        check_head(model, features, logits)
    images = torch.rand(2, 3, 16, 16)
    model = HiddenConvHead()
    cam_classifier(model)  # structurally fine: the numbers tell
    logits, features = cam_and_logits(model, images)
    with pytest.raises(EvalError, match=r"HiddenConvHead's logits are not global average pooling"):
        check_head(model, features, logits)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32).eval()
    cam_classifier(vit)  # its head is one Linear, on tokens
    logits, features = cam_and_logits(vit, torch.randn(2, 3, 32, 32))
    with pytest.raises(EvalError, match=r"vit_tiny_patch16_224's forward_features gives shape \(2, 5, 192\), "
                                        r"not a \[B, C, h, w\] feature map"):
        check_head(vit, features, logits)
    with pytest.raises(EvalError, match=r"Linear has no forward_features, forward_head, get_classifier"):
        cam_classifier(nn.Linear(3, 3))
