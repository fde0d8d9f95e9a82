"""The torch step that finishes the DALI CPU pipeline (``finish_on_host``) against two
independent references: Pillow through torchvision (the torch backend's transforms) and DALI's
own ``fn.resize`` + ``fn.crop_mirror_normalize`` on the same decoded images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from pipeline.data.augment import Augmentation
from pipeline.data.host_resize import finish_on_host, shorter_side_size

# Downscales by up to 8x, upscales, odd sizes, both orientations, already the output size.
SHAPES = [(300, 340), (100, 90), (375, 500), (60, 200), (64, 64), (150, 301), (375, 120), (33, 47)]


def textured(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus fine noise: both aliasing and interpolation errors show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(smooth + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images():
    return [textured(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]


def test_train_resize_and_flip_match_pillow(images):
    mirror = np.array([0, 1] * 4, dtype=np.uint8)
    out = finish_on_host(images, mirror, training=True, augmentation=Augmentation(image_size=64))
    assert out.shape == (8, 64, 64, 3) and out.dtype == torch.uint8
    for image, flip, ours in zip(images, mirror, out.numpy().astype(int)):
        reference = TF.resize(Image.fromarray(image), [64, 64], interpolation=TF.InterpolationMode.BILINEAR)
        reference = np.asarray(TF.hflip(reference) if flip else reference).astype(int)
        assert np.abs(ours - reference).max() <= 1  # fixed-point rounding only


def test_val_resize_and_centre_crop_match_torchvision(images):
    augmentation = Augmentation(image_size=48, crop_pct=0.75)  # shorter side -> 64, crop 48
    out = finish_on_host(images, None, training=False, augmentation=augmentation)
    for image, ours in zip(images, out.numpy().astype(int)):
        reference = TF.center_crop(TF.resize(Image.fromarray(image), 64), 48)
        assert np.abs(ours - np.asarray(reference).astype(int)).max() <= 1


def test_shorter_side_size_matches_torchvision():
    for height, width in SHAPES:
        resized = TF.resize(torch.zeros(1, height, width), 256, antialias=True)
        assert shorter_side_size(height, width, shorter=256) == tuple(resized.shape[1:])


def test_train_resize_agrees_with_dali_fn_resize(images):
    from nvidia.dali import fn, pipeline_def

    mirror = np.array([1, 0] * 4, dtype=np.uint8)

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None)
    def dali_resize():
        decoded = fn.external_source(source=lambda: images, layout="HWC", batch=True)
        flips = fn.external_source(source=lambda: [np.int32(m) for m in mirror], batch=True)
        resized = fn.resize(decoded, resize_x=64, resize_y=64)
        return fn.crop_mirror_normalize(resized, crop=(64, 64), mirror=flips, output_layout="HWC")

    pipeline = dali_resize()
    pipeline.build()
    reference = pipeline.run()[0]
    out = finish_on_host(images, mirror, training=True, augmentation=Augmentation(image_size=64)).numpy()
    for index, ours in enumerate(out.astype(int)):
        difference = np.abs(ours - np.asarray(reference[index]).astype(int))
        # DALI's antialias filter differs from Pillow's in its last bit on a few pixels.
        assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 8, index
