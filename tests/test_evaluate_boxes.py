"""Boxes follow the pixels: images with a white rectangle at a known place go through the real
loaders' validation transform (both backends), and the rectangle found in the output pixels is
where ``transform_boxes`` puts the box. A box in the cropped-away margin is dropped, and its
rectangle is indeed absent from the output."""

import numpy as np
import pytest
import torch
from loader_fixtures import build_shards, open_loader
from PIL import Image

from pipeline.data import Augmentation
from pipeline.evaluate.boxes import transform_boxes, val_geometry

IMAGE_SIZE = 32  # crop; val resize to round(32 / 0.875) = 37
# file -> (width, height, rectangle [x0, y0, x1, y1] inclusive pixels)
IMAGES = {
    "wide.png": (96, 64, [30, 10, 60, 40]),
    "tall.png": (50, 90, [5, 40, 30, 80]),
    "square.png": (40, 40, [0, 0, 39, 39]),
    "clipped.png": (120, 60, [2, 20, 70, 50]),  # its left part is outside the crop
    "margin.png": (120, 60, [0, 5, 8, 50]),  # wholly in the cropped-away left margin
    "odd.png": (77, 53, [20, 11, 52, 33]),
}


@pytest.fixture(scope="module")
def rectangle_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("rectangles")
    folder = root / "src" / "n00000001"
    folder.mkdir(parents=True)
    for name, (width, height, (x0, y0, x1, y1)) in IMAGES.items():
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[y0:y1 + 1, x0:x1 + 1] = 255
        Image.fromarray(pixels).save(folder / name)
    return build_shards(root / "src", root / "shards", "val")


def found_rectangle(image: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of the pixels brighter than half, or None when there is none."""
    ys, xs = np.nonzero(image.astype(float).mean(axis=2) > 127)
    return None if not len(xs) else [xs.min(), ys.min(), xs.max(), ys.max()]


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_boxes_land_where_the_loader_puts_the_pixels(rectangle_shards, backend):
    loader, _ = open_loader(rectangle_shards, "val", backend=backend, batch_size=len(IMAGES), training=False,
                                image_size=IMAGE_SIZE, sample_ids=True, num_threads=1)
    images, _, sources = next(iter(loader))
    check_boxes_against_pixels(images.numpy(), sources)


def check_boxes_against_pixels(images: np.ndarray, sources: list[str]) -> None:
    """Each output image's rectangle is where transform_boxes puts its box (the margin one: nowhere)."""
    augmentation = Augmentation(image_size=IMAGE_SIZE)
    assert sorted(s.rsplit("/", 1)[-1] for s in sources) == sorted(IMAGES)
    for image, source in zip(images, sources):
        width, height, rectangle = IMAGES[source.rsplit("/", 1)[-1]]
        boxes, dropped = transform_boxes({"boxes": [rectangle], "stored_size": [width, height]},
                                         augmentation=augmentation)
        seen = found_rectangle(image)
        if source.endswith("margin.png"):
            assert (len(boxes), dropped, seen) == (0, 1, None)
            continue
        assert dropped == 0 and boxes.shape == (1, 4)
        # Within one output pixel: the resize blurs the rectangle's edges over about one pixel.
        np.testing.assert_allclose(boxes[0], seen, atol=1.0, err_msg=source)


def test_geometry_by_hand():
    augmentation = Augmentation(image_size=224)  # val resize 256
    # 500 x 375 (ImageNet's commonest size): 375 -> 256, 500 -> int(256 * 500 / 375) = 341;
    # crop corner ((256 - 224) / 2, (341 - 224) / 2) = (16, 58.5 -> 58: Python rounds half to even).
    scale_x, scale_y, left, top = val_geometry(500, 375, augmentation=augmentation)
    assert (scale_x, scale_y, left, top) == (341 / 500, 256 / 375, 58, 16)
    boxes, dropped = transform_boxes({"boxes": [[100, 50, 400, 300], [490, 0, 499, 10]], "width": 500, "height": 375},
                                     augmentation=augmentation)
    # The second box starts at 490 * 0.682 - 58 = 276.2 > 223: dropped.
    assert dropped == 1
    np.testing.assert_allclose(boxes, [[10.2, 50 * 256 / 375 - 16, 214.8, 188.8]])


def test_a_box_touching_only_the_last_column_or_row_is_kept():
    """Inclusive pixels: a box whose first column (row) is the crop's last one, 223, still covers
    a pixel of the crop; one starting a pixel further is outside."""
    augmentation = Augmentation(image_size=224)  # 256 x 256 -> 256 (no resize), crop corner (16, 16)
    boxes, dropped = transform_boxes({"boxes": [[239, 50, 250, 60]], "stored_size": [256, 256]},
                                     augmentation=augmentation)
    # 239 - 16 = 223, the last column; the far side 250 - 16 = 234 is clipped to 223.
    assert dropped == 0
    np.testing.assert_allclose(boxes, [[223, 34, 223, 44]])
    boxes, dropped = transform_boxes({"boxes": [[50, 239, 60, 250]], "stored_size": [256, 256]},
                                     augmentation=augmentation)
    assert dropped == 0
    np.testing.assert_allclose(boxes, [[34, 223, 44, 223]])
    boxes, dropped = transform_boxes({"boxes": [[240, 50, 250, 60], [50, 240, 60, 250]], "stored_size": [256, 256]},
                                     augmentation=augmentation)
    assert boxes.shape == (0, 4) and dropped == 2


def test_a_record_without_boxes_gives_none():
    boxes, dropped = transform_boxes({"width": 10, "height": 10}, augmentation=Augmentation(image_size=8))
    assert boxes.shape == (0, 4) and dropped == 0


def test_cifar_kind_centre_crop_without_resize():
    augmentation = Augmentation(image_size=32, kind="cifar")
    boxes, _ = transform_boxes({"boxes": [[3, 4, 20, 30]], "stored_size": [40, 36]}, augmentation=augmentation)
    # corner (round((36 - 32) / 2), round((40 - 32) / 2)) = (2, 4); x0 = 3 - 4 clipped to 0
    np.testing.assert_allclose(boxes, [[0, 2, 16, 28]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (DALI's mixed decoder and "
                    "GPU resize; the CPU test above covers the host path)")
def test_boxes_land_where_the_gpu_loader_puts_the_pixels(rectangle_shards):
    """DALI's GPU path resizes and crops with its own operators (not the host's): the boxes must
    still land on the pixels, to within the one pixel the resize blurs."""
    loader, _ = open_loader(rectangle_shards, "val", backend="dali", batch_size=len(IMAGES), training=False,
                            image_size=IMAGE_SIZE, sample_ids=True, num_threads=1, device="cuda")
    images, _, sources = next(iter(loader))
    check_boxes_against_pixels(images.cpu().numpy(), sources)
