"""Crop sizes and flips within the configured ranges, read back from images whose pixels encode
their coordinates; per-rank randomness; the same seed reproduces the same epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loader_fixtures import RAMP_SIZE, crop_window, make_ramp_shards, open_loader

SOURCE_AREA = RAMP_SIZE[0] * RAMP_SIZE[1]


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    return make_ramp_shards(tmp_path_factory.mktemp("ramps"))


def train_images(ramps, backend, *, rank=0, seed=0, world_size=1, **options):
    loader, _ = open_loader(ramps, "train", batch_size=8, rank=rank, world_size=world_size, seed=seed,
                            backend=backend, **options)
    return torch.cat([images for images, _ in loader]).numpy()


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("area, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.3, 0.5), (0.9, 1.1))])
def test_crop_area_and_ratio_stay_in_the_configured_ranges(ramps, backend, area, ratio):
    windows = [crop_window(image) for image in train_images(ramps, backend, random_area=area, random_aspect_ratio=ratio)]
    areas = np.array([w * h / SOURCE_AREA for w, h, _ in windows])
    ratios = np.array([w / h for w, h, _ in windows])
    # Slack for pixel rounding of the window and for JPEG/resampling blur of the ramps.
    assert areas.min() >= area[0] * 0.85 and areas.max() <= area[1] * 1.1, (areas.min(), areas.max())
    assert ratios.min() >= ratio[0] * 0.9 and ratios.max() <= ratio[1] * 1.1, (ratios.min(), ratios.max())
    assert areas.max() - areas.min() > (area[1] - area[0]) * 0.3  # the area really varies


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_flips_follow_the_configured_probability(ramps, backend):
    def flipped(probability):
        return [crop_window(image)[2] for image in train_images(ramps, backend, flip_probability=probability)]

    assert not any(flipped(0.0)) and all(flipped(1.0))
    half = flipped(0.5)
    assert 0 < sum(half) < len(half)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_val_is_an_unflipped_centre_crop_of_the_resized_image(ramps, backend):
    loader, _ = open_loader(ramps, "train", batch_size=8, backend=backend, training=False, crop_pct=0.5)
    images = next(iter(loader))[0].numpy()
    for image in images:
        width, height, flipped = crop_window(image)
        # Shorter side (192) -> 64, so the 32-px crop is the middle half of the height.
        assert not flipped
        assert height == pytest.approx(RAMP_SIZE[1] / 2, rel=0.1) and width == pytest.approx(RAMP_SIZE[1] / 2, rel=0.1)
        assert image[:, :, 0].mean() == pytest.approx(127.5, abs=4) and image[:, :, 1].mean() == pytest.approx(127.5, abs=4)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_each_rank_draws_different_randomness_and_a_seed_repeats(ramps, backend):
    # Every sample is the same image, so outputs differ only by the augmentation randomness.
    options = dict(world_size=2, random_area=(0.3, 1.0))
    rank0 = train_images(ramps, backend, rank=0, seed=5, **options)
    assert np.array_equal(rank0, train_images(ramps, backend, rank=0, seed=5, **options))
    assert not np.array_equal(rank0, train_images(ramps, backend, rank=1, seed=5, **options))
    assert not np.array_equal(rank0, train_images(ramps, backend, rank=0, seed=6, **options))


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_epochs_draw_new_randomness_and_repeat_with_the_seed(ramps, backend):
    def two_epochs():
        loader, _ = open_loader(ramps, "train", batch_size=8, seed=3, backend=backend)
        return [torch.cat([images for images, _ in loader]) for _ in range(2)]

    first, second = two_epochs()
    assert not torch.equal(first, second)
    again = two_epochs()
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
