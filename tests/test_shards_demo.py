"""The README's main command: the digits demo data built, verified and inspected; never over other data."""

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processes import run_process
from shard_fixtures import jpeg_bytes, make_imagefolder
from shard_readers import manifest, read_with_webdataset
from shards.cli import main
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


def demo(out: Path):
    return run_process([sys.executable, "-m", "shards.demo", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)


def every_file(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused_untouched(out: Path, before: dict[str, bytes], *named: str) -> None:
    result = demo(out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(name in lines[0] for name in named), lines[0]
    assert every_file(out) == before  # nothing written, replaced or removed


def test_demo_refuses_a_users_own_images_in_out_raw(tmp_path):
    # The demo's layout (train/val of ten digit_N folders), but someone's own images.
    for split, count in (("train", 3), ("val", 1)):
        for digit in range(10):
            folder = tmp_path / "raw" / split / f"digit_{digit}"
            folder.mkdir(parents=True)
            for n in range(count):
                (folder / f"scan_{n}.jpg").write_bytes(jpeg_bytes(digit * 10 + n))
    before = every_file(tmp_path)
    assert_refused_untouched(tmp_path, before, str(tmp_path / "raw"), "scan_0.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_demo_refuses_to_replace_another_build_in_out_shards(tmp_path):
    make_imagefolder(tmp_path / "mine", num_classes=3, per_class=4)
    assert main(["build", str(tmp_path / "mine"), str(tmp_path / "out" / "shards"), "--split", "train",
                 "--quiet"]) == 0
    before = every_file(tmp_path / "out")
    assert_refused_untouched(tmp_path / "out", before, str(tmp_path / "out" / "shards"), "3 classes")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shards"]  # no raw/ written either


@pytest.mark.slow
def test_demo_again_rebuilds_an_earlier_demo_and_writes_its_missing_digits(tmp_path):
    assert demo(tmp_path).returncode == 0
    threes = tmp_path / "raw" / "train" / "digit_3"
    kept = every_file(threes)
    shutil.rmtree(threes)  # as an interrupted first demo leaves it
    again = demo(tmp_path)
    assert again.returncode == 0, again.stderr
    assert every_file(threes) == kept
    shards = tmp_path / "shards"
    assert manifest(shards, "train")["totals"]["samples"] + manifest(shards, "val")["totals"]["samples"] == 1797
