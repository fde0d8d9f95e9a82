"""The embedded demo data: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped in
the package) written to OUT/raw as ImageFolder trees of RGB JPEGs (train, val) and as a
CUB-200-2011 folder (test: the val digits placed on a larger canvas, each with the box of its
ink), then built into OUT/shards, verified and inspected with the real CLI: python -m shards.demo
OUT. An OUT/raw or OUT/shards holding anything but an earlier demo's files is refused."""
# The docstring is the --help description: plain text, as argparse prints it as it is.

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

# numpy, Pillow, the manifest (numpy) and the build (tqdm) are imported where they are used:
# `python -m shards.demo` run by a Python without the project's packages then ends in main's one
# error line, not an import traceback from this module's top.
from .arguments import CommandParser, path
from .errors import ShardsError, dependencies_required

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

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
VAL_FRACTION, SEED = 0.2, 0  # the demo's split of the scans (an earlier demo's raw/ is recognised by it)
INK_THRESHOLD = 64  # a pixel is ink above this (of 255): the scans' faint edges and resize ringing are not


def _split_order(count: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """The seeded order of the scans and how many of its first ones are val."""
    import numpy as np

    return np.random.default_rng(seed).permutation(count), int(count * val_fraction)


def _scan_image(pixels: np.ndarray, side: int) -> Image.Image:
    """An 8x8 scan (values 0..16) as a ``side`` x ``side`` greyscale image."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((pixels * (255 / 16)).astype(np.uint8), "L").resize((side, side), Image.Resampling.BICUBIC)


def _digit_files(targets: np.ndarray, *, val_fraction: float, seed: int) -> list[tuple[int, str, str]]:
    """(scan index, split, path inside the split folder) of every digit image the demo writes."""
    order, num_val = _split_order(len(targets), val_fraction=val_fraction, seed=seed)
    return [(int(index), "val" if rank < num_val else "train", f"{DEMO_CLASSES[targets[index]]}/{index:04d}.jpg")
            for rank, index in enumerate(order)]


def write_digits_imagefolder(root: Path, *, val_fraction: float = VAL_FRACTION, seed: int = SEED) -> dict[str, int]:
    """Write ``root/train/digit_K/NNNN.jpg`` and ``root/val/...``; returns images per split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {"train": 0, "val": 0}
    for index, split, relative in _digit_files(digits.target, val_fraction=val_fraction, seed=seed):
        path = Path(root) / split / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _scan_image(digits.images[index], IMAGE_SIZE).convert("RGB").save(path, quality=95)
        counts[split] += 1
    return counts


def write_digits_cub(folder: Path, *, val_fraction: float = VAL_FRACTION, seed: int = SEED) -> int:
    """Write the val digits as a CUB-200-2011 folder (images.txt, image_class_labels.txt,
    classes.txt ``digit_0..digit_9``, bounding_boxes.txt, train_test_split.txt with every image a
    test image, images/digit_K/NNNN.jpg): each digit at a seeded random size and place on a black
    CANVAS, its box the tight box of its ink, measured before JPEG encoding. Returns the images
    written. The folder appears whole or not at all."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    val = sorted((index, relative) for index, split, relative
                 in _digit_files(digits.target, val_fraction=val_fraction, seed=seed) if split == "val")
    rng = np.random.default_rng([seed, 1])
    partial = Path(folder).with_name(Path(folder).name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lines: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": [], "bounding_boxes.txt": [],
                                   "train_test_split.txt": []}
    for image_id, (index, relative) in enumerate(val, start=1):
        label = int(digits.target[index])
        side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
        x, y = (int(v) for v in rng.integers(MARGIN, CANVAS - MARGIN - side + 1, size=2))
        canvas = np.zeros((CANVAS, CANVAS), np.uint8)
        canvas[y:y + side, x:x + side] = np.asarray(_scan_image(digits.images[index], side))
        rows, columns = np.nonzero(canvas > INK_THRESHOLD)
        (partial / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
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
    return len(val)


# The build settings build_demo_shards gives, as a manifest records them: an earlier demo build is
# told from a user's build of digit_0..digit_9 folders by them and its images per class.
DEMO_BUILD = {"shard_size": 256_000, "seed": 0, "num_parts": 1}
# What a demo build (train, val and test splits) leaves in its shards folder: manifests, shards and
# their indexes, the build's state folder and atomic writes' temporary files (named .tmp-...).
_DEMO_BUILD_FILE = re.compile(r"(train|val|test)(\.json|-\d{6}\.(tar|idx)|\.part-\d{4}-of-\d{4}\.json)")


def not_a_demo_folder(folder: Path) -> str | None:
    """Why the demo must not be built into ``folder`` (training with data.demo=true replaces it):
    it holds something other than an earlier demo build. None when it is missing, empty or a
    demo build: only files a build writes, and a train manifest of the ten digit classes with the
    demo's images per class. Class names alone let a user's own build of digit_0..digit_9 folders
    (MNIST laid out so) be replaced, with a notes file beside it (walkthrough)."""
    from .manifest import load_manifest

    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "it is a file"
    entries = sorted(folder.iterdir())
    if not entries:
        return None
    stray = next((entry.name for entry in entries if not (
        entry.is_dir() if entry.name == ".build" else
        entry.is_file() and (_DEMO_BUILD_FILE.fullmatch(entry.name) or entry.name.startswith(".tmp-")))), None)
    if stray is not None:
        return f"it holds {stray}, which a demo build does not write"
    try:
        manifest = load_manifest(folder, "train")
    except ShardsError:
        return "it holds files but no train manifest of a demo build"
    classes = list(manifest["classes"])
    if classes != list(DEMO_CLASSES):
        return f"it holds another build ({len(classes)} classes: {', '.join(classes[:3])}, ...)"
    built = {key: manifest["build"].get(key) for key in DEMO_BUILD}
    if built != DEMO_BUILD:
        return (f"it holds another build of classes named as the demo's ({_settings(built)}; the demo's: "
                f"{_settings(DEMO_BUILD)})")
    demo = _demo_train_counts()
    if list(manifest["class_counts"]) != demo:
        return (f"it holds another build of classes named as the demo's ({manifest['totals']['samples']} train "
                f"images, {', '.join(map(str, manifest['class_counts'][:3]))}, ... per class; the demo's "
                f"{sum(demo)}: {', '.join(map(str, demo[:3]))}, ...)")
    return None


def _settings(values: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def _demo_train_counts() -> list[int]:
    """Train images per class of the demo's split of the digits (every scan is written and built)."""
    from sklearn.datasets import load_digits

    counts = [0] * len(DEMO_CLASSES)
    targets = load_digits().target
    for index, split, _ in _digit_files(targets, val_fraction=VAL_FRACTION, seed=SEED):
        counts[int(targets[index])] += split == "train"
    return counts


_CUB_FILES = ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "train_test_split.txt", "classes.txt")


def _expected_raw_files() -> dict[str, set[str]]:
    """The files the demo writes in each folder of ``out/raw``, by path inside that folder. The
    names hold the scan's index, so a folder of other images never matches them by chance."""
    from sklearn.datasets import load_digits

    by_split: dict[str, set[str]] = {"train": set(), "val": set()}
    for _, split, relative in _digit_files(load_digits().target, val_fraction=VAL_FRACTION, seed=SEED):
        by_split[split].add(relative)
    cub = {*_CUB_FILES, *(f"images/{relative}" for relative in by_split["val"])}
    # test_cub.partial: what an interrupted write_digits_cub leaves (it removes it first).
    return {**by_split, "test_cub": cub, "test_cub.partial": cub}


def _files_under(folder: Path) -> Iterator[str]:
    """Every file below ``folder``, as a path relative to it, in sorted order (errors name the first)."""
    for directory, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(directory, name).relative_to(folder).as_posix()


def _not_demo_digits(raw: Path, expected: dict[str, set[str]]) -> str | None:
    """Why ``raw`` must not be used as the demo's raw digits (the demo builds whatever is there
    and writes test_cub into it): it holds something the demo does not write. None when it is
    missing or holds only (some of) the demo's own files."""
    if not raw.exists():
        return None
    if not raw.is_dir():
        return "it is a file"
    for entry in sorted(raw.iterdir()):
        if entry.name not in expected or not entry.is_dir():
            return f"it holds {entry.name}, which the demo does not write"
        stray = next((f for f in _files_under(entry) if f not in expected[entry.name]), None)
        if stray is not None:
            return f"{entry.name}/{stray} is not one of the demo's digits"
    return None


def _check_demo_output(raw: Path, shards: Path, expected: dict[str, set[str]]) -> None:
    """Refuse, before anything is written, an ``out`` whose raw/ or shards/ the demo would build
    from or replace while they hold someone's own data."""
    for folder, why, what in ((raw, _not_demo_digits(raw, expected), "the demo writes its digits there"),
                              (shards, not_a_demo_folder(shards), "the demo replaces its builds")):
        if why:
            raise ShardsError(f"{folder}: {why}; {what}: give another OUT, or remove {folder}")


def build_demo_shards(out: Path, *, quiet: bool = False) -> Path:
    """Raw digits -> shards in ``out/shards`` through the real CLI (train, val, and test: the val
    digits with boxes, from a CUB-200-2011 folder); returns the shards folder. Refuses (ShardsError)
    an ``out`` holding other data than an earlier demo's, and writes the digits it lacks."""
    from .cli import main as shards_main

    raw, shards = Path(out) / "raw", Path(out) / "shards"
    expected = _expected_raw_files()
    _check_demo_output(raw, shards, expected)
    if any(set(_files_under(raw / split)) != expected[split] for split in ("train", "val")):
        write_digits_imagefolder(raw)  # missing or cut short (an interrupted demo): all of it, same bytes
    if not (raw / "test_cub").exists():
        write_digits_cub(raw / "test_cub")
    flags = ["--shard-size", str(DEMO_BUILD["shard_size"]), "--seed", str(DEMO_BUILD["seed"]), "--overwrite",
             *(["--quiet"] if quiet else [])]
    same_classes = ["--classes", str(shards / "train.json")]
    for split, src, extra in (("train", "train", []), ("val", "val", same_classes), ("test", "test_cub", same_classes)):
        code = shards_main(["build", str(raw / src), str(shards), "--split", split, *flags, *extra])
        if code:
            raise SystemExit(code)
    return shards


def main(argv: list[str] | None = None) -> int:
    """Write the demo data, build, verify and inspect its shards."""
    parser = CommandParser(prog="python -m shards.demo", description=__doc__)
    parser.add_argument("out", type=path, nargs="?", default=Path("runs/demo"), help="default runs/demo")
    args = parser.parse_args(argv)
    with dependencies_required():
        from .cli import main as shards_main

        try:
            shards = build_demo_shards(args.out)
        except ShardsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    for command in (["verify", str(shards), "--decode"], ["inspect", str(shards)]):
        if shards_main(command):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
