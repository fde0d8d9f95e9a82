"""The embedded demo data: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped in
the package) written as ImageFolder trees of RGB JPEGs, then built, verified and inspected
with the real CLI. ``python -m shards.demo OUT``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .cli import main as shards_main

IMAGE_SIZE = 32  # the 8x8 scans are upscaled so that crops and CutMix boxes have room


def write_digits_imagefolder(root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write ``root/train/digit_K/NNNN.jpg`` and ``root/val/...``; returns images per split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    num_val = int(len(order) * val_fraction)
    counts = {"train": 0, "val": 0}
    for rank, index in enumerate(order):
        split = "val" if rank < num_val else "train"
        folder = Path(root) / split / f"digit_{digits.target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        image.convert("RGB").save(folder / f"{index:04d}.jpg", quality=95)
        counts[split] += 1
    return counts


def build_demo_shards(out: Path, *, quiet: bool = False) -> Path:
    """Raw digits -> shards in ``out/shards`` through the real CLI; returns the shards folder."""
    raw, shards = Path(out) / "raw", Path(out) / "shards"
    if not (raw / "train").exists():
        write_digits_imagefolder(raw)
    flags = ["--shard-size", "256kB", "--overwrite", *(["--quiet"] if quiet else [])]
    for split, extra in (("train", []), ("val", ["--classes", str(shards / "train.json")])):
        code = shards_main(["build", str(raw / split), str(shards), "--split", split, *flags, *extra])
        if code:
            raise SystemExit(code)
    return shards


def main(argv: list[str] | None = None) -> int:
    """Write the demo data, build, verify and inspect its shards."""
    parser = argparse.ArgumentParser(prog="python -m shards.demo", description=__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/demo"), help="default runs/demo")
    args = parser.parse_args(argv)
    shards = build_demo_shards(args.out)
    for command in (["verify", str(shards), "--decode"], ["inspect", str(shards)]):
        if shards_main(command):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
