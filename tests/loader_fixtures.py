"""Shards for the loader tests: an odd number of small JPEGs in 13 classes (labels 10-12 have
two digits), and shards of images whose pixels encode their own coordinates (R = x, G = y),
so that the crop window and the flip can be read back from any output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shard_fixtures import make_imagefolder
from shards.cli import main as shards_main

NUM_CLASSES = 13
PER_CLASS = 9  # 117 samples: does not split evenly over 2 ranks
RAMP_SIZE = (256, 192)  # width, height of the coordinate images


def build_shards(src: Path, out: Path, split: str = "train", extra: tuple[str, ...] = ()) -> Path:
    code = shards_main(["build", str(src), str(out), "--split", split, "--quiet", "--shard-size", "64kB", *extra])
    assert code == 0, f"shard build failed ({code})"
    return out


def make_labelled_shards(root: Path) -> Path:
    """Train and val splits of the same 117 images."""
    make_imagefolder(root / "src", num_classes=NUM_CLASSES, per_class=PER_CLASS)
    build_shards(root / "src", root / "shards", "train")
    return build_shards(root / "src", root / "shards", "val",
                        ("--classes", str(root / "shards" / "train.json")))


def ramp_image() -> Image.Image:
    """R rises left to right and G top to bottom, each over 0-255."""
    width, height = RAMP_SIZE
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)
    return Image.fromarray(pixels)


def make_ramp_shards(root: Path, count: int = 48) -> Path:
    """``count`` copies of the ramp image in 2 classes."""
    image = ramp_image()
    for n in range(count):
        folder = root / "src" / f"n{n % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"ramp_{n}.JPEG", quality=98)
    return build_shards(root / "src", root / "shards", "train")


def crop_window(image: np.ndarray) -> tuple[float, float, bool]:
    """(width, height) in source pixels of the window an output (HWC uint8) was cut from, and
    whether it was flipped, read from the R (x) and G (y) ramps."""
    pixels = image.astype(np.float64)
    size_y, size_x = pixels.shape[:2]
    red = pixels[:, :, 0].mean(axis=0)    # per output column
    green = pixels[:, :, 1].mean(axis=1)  # per output row
    # Centres of the first and last output pixels are (n-1)/n of the window apart.
    width = abs(red[-1] - red[0]) / 255 * (RAMP_SIZE[0] - 1) * size_x / (size_x - 1)
    height = (green[-1] - green[0]) / 255 * (RAMP_SIZE[1] - 1) * size_y / (size_y - 1)
    return width, height, bool(red[-1] < red[0])


def open_loader(shards: Path, split: str, *, backend: str, batch_size: int, rank: int = 0, world_size: int = 1,
                seed: int = 0, num_threads: int = 2, training: bool | None = None, sample_ids: bool = False,
                device: str = "cpu", image_size: int = 32, restore: dict | None = None, **augmentation):
    """``create_loader`` with the tests' defaults (CPU, 32 px); ``sample_ids`` adds every sample's
    source path to each batch (the loaders' internal option the tests use to check coverage)."""
    from pipeline.data import Augmentation, LoaderOptions
    from pipeline.data.factory import _create_loader

    return _create_loader(shards, split, augmentation=Augmentation(image_size=image_size, **augmentation),
                          options=LoaderOptions(batch_size=batch_size, backend=backend, num_threads=num_threads),
                          rank=rank, world_size=world_size, device=device, seed=seed, training=training,
                          restore=restore, sample_ids=sample_ids)


def make_cifar_shards(root: Path, records: int = 12):
    """Train and test shards of a generated CIFAR-10 binary archive (5 x ``records`` train and
    ``records`` test images, PNG members), and the archive's records by sample source."""
    from shard_fixtures import cifar_archive, write_cifar_tar

    archive = cifar_archive("cifar-10-batches-bin", records=records)
    tar = write_cifar_tar(root / "cifar-10-binary.tar.gz", archive)
    for split in ("train", "test"):
        build_shards(tar, root / "shards", split)
    return root / "shards", {f"{r.member}#{r.index}": r for split in archive.records.values() for r in split}
