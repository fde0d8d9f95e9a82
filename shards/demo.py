"""The embedded demo data: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped in
the package) written as ImageFolder trees of RGB JPEGs (train, val) and as a CUB-200-2011 folder
(test: the val digits placed on a larger canvas, each with the box of its ink), then built,
verified and inspected with the real CLI. ``python -m shards.demo OUT``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .arguments import CommandParser
from .cli import main as shards_main
from .errors import ShardsError
from .manifest import load_manifest

IMAGE_SIZE = 32  # the 8x8 scans are upscaled so that crops and CutMix boxes have room
# The test split's localization images: a digit of DIGIT_SIDES px (square) at a random place on a
# black CANVAS, at least MARGIN px from each edge. The demo model (resnet10t, stride 32) has a single
# feature cell at its 32 px training size, so a CAM needs a larger input: evaluated at 64 px
# (`--image-size 64`) the canvas gives a 2x2 map and the digits appear at 45-51 px, within the
# zoom that training's RandomResizedCrop (area down to 0.35: up to 1.7x) showed the model.
CANVAS = 40
DIGIT_SIDES = (28, 32)
MARGIN = 0
# The demo's class names, index order: the ImageFolder and CUB trees are written with them, and
# training recognizes an earlier demo build by them (not_a_demo_folder).
DEMO_CLASSES = tuple(f"digit_{digit}" for digit in range(10))
INK_THRESHOLD = 64  # a pixel is ink above this (of 255): the scans' faint edges and resize ringing are not


def _split_order(count: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """The seeded order of the scans and how many of its first ones are val."""
    return np.random.default_rng(seed).permutation(count), int(count * val_fraction)


def _scan_image(pixels: np.ndarray, side: int) -> Image.Image:
    """An 8x8 scan (values 0..16) as a ``side`` x ``side`` greyscale image."""
    return Image.fromarray((pixels * (255 / 16)).astype(np.uint8), "L").resize((side, side), Image.Resampling.BICUBIC)


def write_digits_imagefolder(root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write ``root/train/digit_K/NNNN.jpg`` and ``root/val/...``; returns images per split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order, num_val = _split_order(len(digits.target), val_fraction=val_fraction, seed=seed)
    counts = {"train": 0, "val": 0}
    for rank, index in enumerate(order):
        split = "val" if rank < num_val else "train"
        folder = Path(root) / split / DEMO_CLASSES[digits.target[index]]
        folder.mkdir(parents=True, exist_ok=True)
        image = _scan_image(digits.images[index], IMAGE_SIZE)
        image.convert("RGB").save(folder / f"{index:04d}.jpg", quality=95)
        counts[split] += 1
    return counts


def write_digits_cub(folder: Path, *, val_fraction: float = 0.2, seed: int = 0) -> int:
    """Write the val digits as a CUB-200-2011 folder (images.txt, image_class_labels.txt,
    classes.txt ``digit_0..digit_9``, bounding_boxes.txt, train_test_split.txt with every image a
    test image, images/digit_K/NNNN.jpg): each digit at a seeded random size and place on a black
    CANVAS, its box the tight box of its ink, measured before JPEG encoding. Returns the images
    written. The folder appears whole or not at all."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order, num_val = _split_order(len(digits.target), val_fraction=val_fraction, seed=seed)
    rng = np.random.default_rng([seed, 1])
    partial = Path(folder).with_name(Path(folder).name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lines: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": [], "bounding_boxes.txt": [],
                                   "train_test_split.txt": []}
    for image_id, index in enumerate(sorted(order[:num_val]), start=1):
        label = int(digits.target[index])
        side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
        x, y = (int(v) for v in rng.integers(MARGIN, CANVAS - MARGIN - side + 1, size=2))
        canvas = np.zeros((CANVAS, CANVAS), np.uint8)
        canvas[y:y + side, x:x + side] = np.asarray(_scan_image(digits.images[index], side))
        rows, columns = np.nonzero(canvas > INK_THRESHOLD)
        relative = f"{DEMO_CLASSES[label]}/{index:04d}.jpg"
        (partial / "images" / DEMO_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas, "L").convert("RGB").save(partial / "images" / relative, quality=95)
        x0, y0 = columns.min(), rows.min()
        # CUB's "x y w h" reads as [x, y, x + w, y + h] (inclusive ends): w is x1 - x0.
        box = f"{x0:.1f} {y0:.1f} {columns.max() - x0:.1f} {rows.max() - y0:.1f}"
        for name, value in zip(lines, (relative, label + 1, box, 0), strict=True):
            lines[name].append(f"{image_id} {value}")
    lines["classes.txt"] = [f"{label + 1} {name}" for label, name in enumerate(DEMO_CLASSES)]
    for name, content in lines.items():
        (partial / name).write_text("\n".join(content) + "\n")
    os.replace(partial, folder)
    return num_val


def not_a_demo_folder(folder: Path) -> str | None:
    """Why the demo must not be built into ``folder`` (training with data.demo=true replaces it):
    it holds something other than an earlier demo build. None when it is missing, empty or a
    demo build (whose train manifest lists the ten digit classes)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "it is a file"
    if not any(folder.iterdir()):
        return None
    try:
        classes = list(load_manifest(folder, "train")["classes"])
    except ShardsError:
        return "it holds files but no train manifest of a demo build"
    if classes != list(DEMO_CLASSES):
        return f"it holds another build ({len(classes)} classes: {', '.join(classes[:3])}, ...)"
    return None


def build_demo_shards(out: Path, *, quiet: bool = False) -> Path:
    """Raw digits -> shards in ``out/shards`` through the real CLI (train, val, and test: the val
    digits with boxes, from a CUB-200-2011 folder); returns the shards folder."""
    raw, shards = Path(out) / "raw", Path(out) / "shards"
    if not (raw / "train").exists():
        write_digits_imagefolder(raw)
    if not (raw / "test_cub").exists():
        write_digits_cub(raw / "test_cub")
    flags = ["--shard-size", "256kB", "--overwrite", *(["--quiet"] if quiet else [])]
    same_classes = ["--classes", str(shards / "train.json")]
    for split, src, extra in (("train", "train", []), ("val", "val", same_classes), ("test", "test_cub", same_classes)):
        code = shards_main(["build", str(raw / src), str(shards), "--split", split, *flags, *extra])
        if code:
            raise SystemExit(code)
    return shards


def main(argv: list[str] | None = None) -> int:
    """Write the demo data, build, verify and inspect its shards."""
    parser = CommandParser(prog="python -m shards.demo", description=__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/demo"), help="default runs/demo")
    args = parser.parse_args(argv)
    shards = build_demo_shards(args.out)
    for command in (["verify", str(shards), "--decode"], ["inspect", str(shards)]):
        if shards_main(command):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
