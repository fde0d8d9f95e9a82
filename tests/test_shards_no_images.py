"""A SRC without images is named as such before any work, and a build that writes nothing fails.

Sources are written by the tests (folders and tars of non-image files, images that are all
broken); the expected counts come from how they were made.
"""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from processes import run_process
from shard_fixtures import (bad_inputs, jpeg_bytes, make_foldered_tar, make_imagefolder, make_tar_of_tars,
                            png_bytes, wnid)
from shard_readers import manifest, read_with_webdataset
from shards.cli import main
from shards.detect import detect_source
from shards.errors import ShardsError

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--quiet", "--workers", "1", "--shard-size", "64kB"]


def cli(*args) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)


def build(capsys, src, out, *extra) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of an in-process build."""
    capsys.readouterr()
    code = main(["build", str(src), str(out), "--split", "train", *SMALL, *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """No manifest, no shard, no build state: OUT as a fresh build would find it."""
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert leftovers == [], leftovers


# Sources that hold no images: refused at detection, before OUT is touched ------------------------

def test_tar_of_non_image_files_names_what_it_holds(tmp_path, capsys):
    files = {f"annotations/{wnid(i)}_{n}.xml": b"<annotation/>" for i in range(2) for n in range(3)}
    files["annotations/readme.txt"] = b"bounding boxes\n"
    archive = make_foldered_tar(tmp_path / "boxes.tar.gz", files, gzip=True)
    code, _, err = build(capsys, archive, tmp_path / "out")
    assert code == 2
    line = one_error_line(err)
    assert "a tar whose 7 files are `annotations/*.xml` (6), `annotations/*.txt` (1), not images" in line
    assert "not a layout `shards build` knows" in line
    assert not (tmp_path / "out").exists()


def test_tar_of_class_tars_holding_no_images(tmp_path, capsys):
    files = {f"{wnid(i)}/{wnid(i)}_{n}.npy": b"\x93NUMPY" + bytes(40) for i in range(2) for n in range(2)}
    code, _, err = build(capsys, make_tar_of_tars(tmp_path / "train.tar", files), tmp_path / "out")
    assert code == 2
    assert f"`{wnid(0)}.tar/*.npy` (2), `{wnid(1)}.tar/*.npy` (2), not images" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_folder_of_non_image_files_names_what_it_holds(tmp_path, capsys):
    for i in range(3):
        (tmp_path / "src" / wnid(i)).mkdir(parents=True)
        (tmp_path / "src" / wnid(i) / "features.npy").write_bytes(b"\x93NUMPY" + bytes(100))
    code, _, err = build(capsys, tmp_path / "src", tmp_path / "out")
    assert code == 2
    line = one_error_line(err)
    assert f"a folder whose 3 files are `{wnid(0)}/*.npy` (1), `{wnid(1)}/*.npy` (1), `{wnid(2)}/*.npy` (1)" in line
    assert not (tmp_path / "out").exists()


def test_detection_reads_only_the_start_of_a_tar(tmp_path):
    # Cut short archives: only a reader that goes to the end would notice (the build does, later).
    images = {f"{wnid(0)}/{n}.JPEG": jpeg_bytes(n) for n in range(40)}
    whole = make_foldered_tar(tmp_path / "images.tar.gz", images, gzip=True).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    assert detect_source(tmp_path / "cut.tar.gz", None).kind == "foldered-tar"

    rng = np.random.default_rng(0)  # incompressible, so half the .gz is about half the files
    blobs = {f"data/{n:03d}.bin": rng.bytes(4000) for n in range(100)}
    whole = make_foldered_tar(tmp_path / "blobs.tar.gz", blobs, gzip=True).read_bytes()
    (tmp_path / "blobs-cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ShardsError, match=r"a tar whose first 32 files are `data/\*\.bin` \(32\), not images"):
        detect_source(tmp_path / "blobs-cut.tar.gz", None)
    with pytest.raises(EOFError):  # the cut is really there, past what detection read
        gzip.decompress((tmp_path / "blobs-cut.tar.gz").read_bytes())


def test_images_without_an_image_extension_are_still_images(tmp_path, capsys):
    # The extension is a hint: JPEG and PNG bytes in files named otherwise are built.
    files = {}
    for i in range(2):
        (tmp_path / "src" / wnid(i)).mkdir(parents=True)
        for n in range(3):
            files[f"{wnid(i)}/{n}.dat"] = png_bytes(10 * i + n) if n == 0 else jpeg_bytes(10 * i + n)
            (tmp_path / "src" / wnid(i) / f"{n}.dat").write_bytes(files[f"{wnid(i)}/{n}.dat"])
    code, _, err = build(capsys, tmp_path / "src", tmp_path / "out")
    assert code == 0, err
    samples = read_with_webdataset(tmp_path / "out")
    assert sorted(s["json"]["source"] for s in samples) == sorted(files)


# Every input rejected: exit 2, the reasons counted, no manifest ----------------------------------

def broken_imagefolder(root: Path) -> dict[str, int]:
    """Two classes of images that are all rejected; returns the expected count per reason."""
    cases = bad_inputs()
    for i in range(2):
        (root / wnid(i)).mkdir(parents=True)
        (root / wnid(i) / "empty.JPEG").write_bytes(cases["empty.JPEG"][0])
        (root / wnid(i) / "truncated.JPEG").write_bytes(cases["truncated.JPEG"][0])
    (root / wnid(0) / "text.JPEG").write_bytes(cases["text.JPEG"][0])
    return {"empty file": 2, "undecodable": 2, "not an image": 1}


def assert_counted(line: str, src, kind: str, expected: dict[str, int]) -> None:
    inputs = sum(expected.values())
    assert f"SRC {Path(src).resolve()} ({kind}): 0 of {inputs} inputs written; rejected: " in line
    for reason, count in expected.items():
        assert f"{count} {reason} (e.g. " in line, (reason, line)


def test_folder_whose_every_image_is_rejected_subprocess(tmp_path):
    expected = broken_imagefolder(tmp_path / "src")
    result = cli("build", tmp_path / "src", tmp_path / "out", "--split", "train", *SMALL)
    assert result.returncode == 2, result.stderr
    assert_counted(one_error_line(result.stderr), tmp_path / "src", "imagefolder", expected)
    assert "Traceback" not in result.stdout + result.stderr
    assert_nothing_written(tmp_path / "out")


def test_streamed_tar_whose_every_image_is_rejected(tmp_path, capsys):
    cases = bad_inputs()
    files = {f"{wnid(i)}/{n}.JPEG": cases[n][0] for i in range(3) for n in ("empty.JPEG", "truncated.JPEG")}
    archive = make_foldered_tar(tmp_path / "train.tar", files)
    code, _, err = build(capsys, archive, tmp_path / "out")
    assert code == 2
    assert_counted(one_error_line(err), archive, "foldered-tar", {"empty file": 3, "undecodable": 3})
    assert_nothing_written(tmp_path / "out")


def test_after_a_failed_build_the_fixed_source_builds_without_flags(tmp_path, capsys):
    broken_imagefolder(tmp_path / "src")
    assert build(capsys, tmp_path / "src", tmp_path / "out")[0] == 2
    good = make_imagefolder(tmp_path / "good", num_classes=2, per_class=3)
    code, _, err = build(capsys, tmp_path / "good", tmp_path / "out")
    assert code == 0, err
    assert manifest(tmp_path / "out")["totals"]["samples"] == len(good)


def test_split_build_whose_every_image_is_rejected_fails_at_merge(tmp_path, capsys):
    expected = broken_imagefolder(tmp_path / "src")
    out = tmp_path / "out"
    for part in range(2):  # a part may write nothing: each one succeeds
        code, _, err = build(capsys, tmp_path / "src", out, "--shard-size", "64000", "--num-parts", 2,
                          "--part-id", part)
        assert code == 0, err
    parts = sorted(p.name for p in out.glob("train.part-*.json"))
    assert parts == ["train.part-0000-of-0002.json", "train.part-0001-of-0002.json"]
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    assert_counted(one_error_line(capsys.readouterr().err), tmp_path / "src", "imagefolder", expected)
    assert not (out / "train.json").exists()
    # The part manifests stay: they list every rejected input with its reason.
    rejected = [r for p in parts for r in json.loads((out / p).read_text())["rejected"]]
    assert len(rejected) == sum(expected.values())


def test_a_part_that_writes_nothing_is_fine_when_the_whole_wrote_something(tmp_path, capsys):
    make_imagefolder(tmp_path / "src", num_classes=2, per_class=2)
    out = tmp_path / "out"
    printed = []
    for part in range(2):  # one shard for two parts: part 0 gets no shard, so writes nothing
        code, printed_out, err = build(capsys, tmp_path / "src", out, "--shard-size", "10MB", "--num-parts", 2,
                                       "--part-id", part)
        assert code == 0, err
        printed.append(printed_out)
    assert "this part wrote no sample" in printed[0] and "no sample" not in printed[1]
    assert main(["merge", str(out)]) == 0
    assert manifest(out)["totals"]["samples"] == 4
