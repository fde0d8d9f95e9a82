"""The README's main command: the digits demo data built, verified and inspected."""

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from processes import run_process
from shard_readers import manifest, read_with_webdataset
from shards.demo import CANVAS, INK_THRESHOLD

REPO = Path(__file__).resolve().parents[1]


def test_demo_builds_verifies_and_inspects(tmp_path):
    result = run_process([sys.executable, "-m", "shards.demo", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "train: OK" in result.stdout and "val: OK" in result.stdout and "test: OK" in result.stdout
    shards = tmp_path / "shards"
    train, val, test = manifest(shards, "train"), manifest(shards, "val"), manifest(shards, "test")
    assert train["classes"] == val["classes"] == test["classes"] == [f"digit_{d}" for d in range(10)]
    assert train["totals"]["samples"] + val["totals"]["samples"] == 1797  # every scan of sklearn's digits
    for sample in read_with_webdataset(shards, "val"):
        assert sample["cls"] == int(sample["json"]["wnid"].removeprefix("digit_"))
    check_test_split(shards, val)


def check_test_split(shards: Path, val: dict) -> None:
    """The test split: the val digits again (same files, labels), each with one box around its ink."""
    test = manifest(shards, "test")
    assert test["build"]["source_kind"] == "cub-folder" and test["build"]["split"] == "test"
    assert test["class_counts"] == val["class_counts"]
    assert test["totals"]["with_boxes"] == test["totals"]["samples"] == val["totals"]["samples"]
    samples = read_with_webdataset(shards, "test")
    val_files = {s["json"]["source"] for s in read_with_webdataset(shards, "val")}
    assert {s["json"]["source"].removeprefix("test_cub/images/") for s in samples} == val_files
    for sample in samples:
        meta = sample["json"]
        assert sample["cls"] == int(meta["class"].removeprefix("digit_"))
        [box] = meta["boxes"]
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("L"))
        assert meta["stored_size"] == [pixels.shape[1], pixels.shape[0]] == [CANVAS, CANVAS]
        rows, columns = np.nonzero(pixels > INK_THRESHOLD)
        ink = [columns.min(), rows.min(), columns.max(), rows.max()]  # inclusive ends, as the box
        assert max(abs(a - b) for a, b in zip(box, ink, strict=True)) <= 2, (meta, ink)  # JPEG moves edges a pixel
        assert 0 <= min(box) and max(box) <= CANVAS - 1, box
