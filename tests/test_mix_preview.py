"""`python -m pipeline.mix preview` on a tiny shard written here with webdataset's TarWriter."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from processes import run_process

from pipeline.mix.__main__ import main
from pipeline.mix.preview import caption, load_preview_batch

# Flat colours survive JPEG and resizing, so the loaded pixels can be checked against them.
SAMPLES = [((200, 30, 30), 3, (40, 30)), ((30, 200, 30), 123, (25, 50)), ((30, 30, 200), 7, (32, 32)),
           ((220, 220, 40), 0, (60, 20)), ((40, 220, 220), 45, (33, 21)), ((128, 128, 128), 3, (20, 20))]  # fmt: skip


def jpeg_bytes(colour, size):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def shards_dir(tmp_path):
    """Two shards in our format (shards/): <key>.jpg (RGB JPEG) and <key>.cls (ASCII decimal)."""
    for shard, samples in enumerate((SAMPLES[:4], SAMPLES[4:])):
        with webdataset.TarWriter(str(tmp_path / f"train-{shard:06d}.tar")) as writer:
            for index, (colour, label, size) in enumerate(samples):
                writer.write({"__key__": f"{shard}_{index:04d}", "jpg": jpeg_bytes(colour, size),
                              "cls": str(label).encode("ascii")})  # fmt: skip
    return tmp_path


def test_loader_reads_labels_and_pixels(shards_dir):
    images, labels = load_preview_batch(shards_dir, split="train", batch_size=6, size=16)
    assert images.dtype == torch.uint8 and images.shape == (6, 16, 16, 3)
    assert labels.tolist() == [label for _, label, _ in SAMPLES]
    for image, (colour, _, _) in zip(images, SAMPLES):
        assert np.allclose(image.float().mean(dim=(0, 1)).numpy(), colour, atol=6)


@pytest.mark.parametrize(
    "options",
    [
        ["--mode", "cutmix"],
        ["--mode", "mixup", "--partner", "roll"],
        ["--mode", "cutout", "--cutout-size", "12"],
        ["--mode", "cutmix_or_mixup", "--per", "elem", "--label-smoothing", "0.1"],
    ],
)
def test_preview_writes_a_grid(shards_dir, tmp_path, options):
    out = tmp_path / "grid" / "preview.png"
    assert main(["preview", str(shards_dir), "--out", str(out), "--batch-size", "6", "--size", "32", *options]) == 0
    with Image.open(out) as picture:
        width, height = picture.size
        # 4 columns by 2 rows of images with captions: a picture, not an empty canvas.
        assert width > 400 and height > 200
        assert np.asarray(picture.convert("L")).std() > 10


def test_module_entry_point(shards_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run_process(
        [sys.executable, "-m", "pipeline.mix", "preview", str(shards_dir), "--out", str(out), "--batch-size", "4"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_caption_shows_label_weights():
    row = torch.tensor([0.0, 0.62, 0.0, 0.38])
    assert caption(row, mode="cutmix") == "cutmix\n1: 0.62 | 3: 0.38"
    smoothed = torch.tensor([0.025, 0.925, 0.025, 0.025])
    assert caption(smoothed, mode="none") == "none\n1: 0.93"


@pytest.mark.parametrize(
    "options, name",
    [
        (["--cutmix-alpha", "0"], "cutmix_alpha"),
        (["--mode", "cutout"], "cutout_size"),
        (["--batch-size", "1"], "batch_size"),
        (["--batch-size", "40"], "batch_size"),
        (["--split", "val"], "shards_dir"),
        (["--partner", "flip", "--batch-size", "5"], "batch_size"),
    ],
)
def test_preview_errors_name_the_argument(shards_dir, tmp_path, capsys, options, name):
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", str(shards_dir), "--out", str(tmp_path / "x.png"), *options])
    assert exit_info.value.code == 2
    assert f"error: {name}:" in capsys.readouterr().err
