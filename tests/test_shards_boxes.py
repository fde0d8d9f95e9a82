"""Ground-truth boxes of ImageNet val in the shards: from LOC_val_solution.csv and from the
ILSVRC2012_bbox_val_v3 XML files (folder or .tgz), rescaled with --resize-short and turned with
EXIF orientations.

The shards are read back with the ``webdataset`` library and compared with the boxes written here
by hand; the rotated and resized cases are also checked against the pixels: the images are black
with a white box, so the decoded stored image shows where its box must be.
"""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shard_fixtures import (boxed_jpeg, cifar_archive, jpeg_bytes, make_flat_tar, make_imagefolder, make_tar_of_tars,
                            run_shards_main, voc_xml, white_box, write_cifar_tar, write_files)
from shard_readers import manifest, read_with_webdataset
from shards.cli import main

SMALL = ["--quiet", "--workers", "1", "--shard-size", "64kB"]
WNID = "n01440764"


def stem(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


def build(src, out, *extra, split="val") -> int:
    return main(["build", str(src), str(out), "--split", split, *SMALL, *map(str, extra)])


def samples_by_stem(out: Path, split: str = "val") -> dict[str, dict]:
    return {s["json"]["source"].rsplit("/", 1)[-1].split(".")[0]: s for s in read_with_webdataset(out, split)}


def write_csv(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("ImageId,PredictionString\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    return path


# Image sizes (width, height) and all boxes of each, written by hand; image 6 has none.
SIZES = {1: (40, 30), 2: (30, 44), 3: (48, 32), 4: (36, 36), 5: (44, 28), 6: (32, 40)}
BOXES = {
    1: [[1.0, 2.0, 30.0, 25.0]],
    2: [[0.0, 0.0, 29.0, 43.0], [5.0, 6.0, 7.0, 8.0]],
    3: [[10.0, 4.0, 40.0, 31.0], [12.0, 1.0, 13.0, 2.0], [0.0, 20.0, 47.0, 31.0]],
    4: [[3.0, 3.0, 3.0, 3.0]],  # one pixel: zero width in x1 - x0, inclusive ends
    5: [[2.0, 5.0, 41.0, 20.0]],
}


def val_files() -> dict[str, bytes]:
    return {f"{stem(n)}.JPEG": jpeg_bytes(600 + n, size=size) for n, size in SIZES.items()}


def loc_rows(with_boxes: bool = True) -> dict[str, str]:
    """PredictionString: "wnid x0 y0 x1 y1" per box; a lone wnid where there is no box."""
    rows = {}
    for n in SIZES:
        boxes = BOXES.get(n, []) if with_boxes else []
        rows[stem(n)] = " ".join(f"{WNID} {' '.join(f'{v:g}' for v in box)}" for box in boxes) or WNID
    return rows


def check_boxes(out: Path, expected: dict[int, list], files: dict[str, bytes]) -> None:
    samples = samples_by_stem(out)
    assert set(samples) == {stem(n) for n in SIZES}
    for n, size in SIZES.items():
        meta = samples[stem(n)]["json"]
        assert samples[stem(n)]["jpg"] == files[f"{stem(n)}.JPEG"]
        if n in expected:
            assert meta["boxes"] == expected[n] and meta["stored_size"] == list(size)
            assert all(isinstance(v, float) for box in meta["boxes"] for v in box)
        else:
            assert "boxes" not in meta and "stored_size" not in meta
    totals = manifest(out, "val")["totals"]
    assert (totals["with_boxes"], totals["without_boxes"]) == (len(expected), len(SIZES) - len(expected))


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_loc_csv_boxes_all_of_them(tmp_path, kind, capsys):
    files = val_files()
    src = write_files(tmp_path / "val", files) if kind == "folder" else make_flat_tar(tmp_path / "val.tar", files)
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows())
    capsys.readouterr()
    assert build(src, tmp_path / "out", "--labels", labels) == 0
    assert "5 samples with boxes, 1 without" in capsys.readouterr().out
    check_boxes(tmp_path / "out", BOXES, files)
    assert manifest(tmp_path / "out", "val")["build"]["boxes"] == str(labels.resolve())


def xml_source(kind: str, tmp_path: Path, annotated: dict[int, list], sizes: dict | None = None) -> Path:
    """The XML files of ``annotated`` images in the ILSVRC2012_bbox_val_v3 layout (val/<stem>.xml)."""
    files = {f"val/{stem(n)}.xml": voc_xml(stem(n), (sizes or SIZES)[n], [(WNID, box) for box in boxes])
             for n, boxes in annotated.items()}
    if kind == "folder":
        return write_files(tmp_path / "ILSVRC2012_bbox_val_v3", files)
    if kind == "val folder":
        return write_files(tmp_path / "ILSVRC2012_bbox_val_v3", files) / "val"
    archive = tmp_path / "ILSVRC2012_bbox_val_v3.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.mark.parametrize("source", ["folder", "tar"])
@pytest.mark.parametrize("kind", ["folder", "val folder", "tgz"])
def test_xml_boxes_for_some_images(tmp_path, kind, source):
    files = val_files()
    src = write_files(tmp_path / "val", files) if source == "folder" else make_flat_tar(tmp_path / "val.tar", files)
    # Labels without boxes, and an XML file for only some images: the others get no "boxes".
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows(with_boxes=False))
    annotated = {n: BOXES[n] for n in (2, 3, 5)}
    assert build(src, tmp_path / "out", "--labels", labels, "--boxes", xml_source(kind, tmp_path, annotated)) == 0
    check_boxes(tmp_path / "out", annotated, files)


def test_boxes_flag_wins_over_the_loc_csv(tmp_path):
    files = val_files()
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows())
    others = {n: [[float(n), 1.0, 9.0, 9.0]] for n in SIZES}
    xml = xml_source("tgz", tmp_path, others)
    assert build(write_files(tmp_path / "val", files), tmp_path / "out", "--labels", labels, "--boxes", xml) == 0
    check_boxes(tmp_path / "out", others, files)
    assert manifest(tmp_path / "out", "val")["build"]["boxes"] == str(xml.resolve())


def test_resize_short_scales_boxes_by_hand_computed_factors(tmp_path):
    files = {f"{stem(1)}.JPEG": jpeg_bytes(1, size=(200, 100)), f"{stem(2)}.JPEG": jpeg_bytes(2, size=(90, 120)),
             f"{stem(3)}.JPEG": jpeg_bytes(3, size=(40, 30))}
    labels = write_csv(tmp_path / "LOC_val_solution.csv", {
        stem(1): f"{WNID} 10 20 150 80 {WNID} 0 0 199 99", stem(2): f"{WNID} 9 30 80 119", stem(3): f"{WNID} 1 2 3 4"})
    assert build(write_files(tmp_path / "val", files), tmp_path / "out", "--labels", labels, "--resize-short", 50) == 0
    samples = samples_by_stem(tmp_path / "out")
    expected = {  # (stored size, boxes): 200x100 -> 100x50 (x 1/2); 90x120 -> 50x67 (x 50/90, 67/120); 40x30 kept
        stem(1): ([100, 50], [[5.0, 10.0, 75.0, 40.0], [0.0, 0.0, 99.5, 49.5]]),
        stem(2): ([50, 67], [[5.0, 30 * 67 / 120, 80 * 50 / 90, 119 * 67 / 120]]),
        stem(3): ([40, 30], [[1.0, 2.0, 3.0, 4.0]]),
    }
    for name, (stored, boxes) in expected.items():
        meta = samples[name]["json"]
        assert meta["stored_size"] == stored == list(Image.open(io.BytesIO(samples[name]["jpg"])).size)
        assert meta["boxes"] == [pytest.approx(box, abs=1e-9) for box in boxes]
    assert samples[stem(2)]["json"]["boxes"][0][1] == pytest.approx(16.75)
    assert (samples[stem(2)]["json"]["width"], samples[stem(2)]["json"]["height"]) == (90, 120)


RAW_SIZE, RAW_BOX = (40, 24), [5, 3, 14, 10]  # a white box in the pixels as stored in the file


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_images_get_their_boxes_turned_as_the_pixels(tmp_path, orientation):
    files = {f"{stem(1)}.JPEG": boxed_jpeg(RAW_SIZE, RAW_BOX, orientation=orientation)}
    labels = write_csv(tmp_path / "LOC_val_solution.csv", {stem(1): f"{WNID} {' '.join(map(str, RAW_BOX))}"})
    assert build(write_files(tmp_path / "val", files), tmp_path / "out", "--labels", labels) == 0
    meta, data = samples_by_stem(tmp_path / "out")[stem(1)]["json"], samples_by_stem(tmp_path / "out")[stem(1)]["jpg"]
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert meta["boxes"] == [[float(v) for v in white_box(pixels)]]  # where the white pixels are now
    assert meta["stored_size"] == [pixels.shape[1], pixels.shape[0]]
    assert (meta["width"], meta["height"]) == RAW_SIZE
    assert meta["stored_size"] == (list(RAW_SIZE) if orientation < 5 else list(RAW_SIZE[::-1]))


def test_exif_rotation_then_resize_by_hand(tmp_path):
    # Orientation 6 (90 degrees clockwise): pixel (x, y) of the 80x48 file goes to (47 - y, x) of
    # the upright 48x80 image, so [10, 6, 29, 21] -> [26, 10, 41, 29]; --resize-short 24 halves it.
    files = {f"{stem(1)}.JPEG": boxed_jpeg((80, 48), [10, 6, 29, 21], orientation=6)}
    labels = write_csv(tmp_path / "LOC_val_solution.csv", {stem(1): f"{WNID} 10 6 29 21"})
    assert build(write_files(tmp_path / "val", files), tmp_path / "out", "--labels", labels, "--resize-short", 24) == 0
    meta = samples_by_stem(tmp_path / "out")[stem(1)]["json"]
    assert meta["stored_size"] == [24, 40] and meta["boxes"] == [[13.0, 5.0, 20.5, 14.5]]


def test_a_box_file_for_another_image_size_is_refused_and_counted(tmp_path, capsys):
    files = val_files()
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows(with_boxes=False))
    sizes = {**SIZES, 3: (96, 64)}  # image 3 is 48x32: its boxes were drawn on another copy
    xml = xml_source("folder", tmp_path, {n: BOXES[n] for n in (1, 3)}, sizes)
    capsys.readouterr()
    assert build(write_files(tmp_path / "val", files), tmp_path / "out", "--labels", labels, "--boxes", xml) == 0
    summary = capsys.readouterr().out
    assert "1 samples with boxes, 5 without, 1 of them refused (1 box file's image size differs)" in summary
    check_boxes(tmp_path / "out", {1: BOXES[1]}, files)
    assert manifest(tmp_path / "out", "val")["boxes_refused"] == [
        {"source": f"{stem(3)}.JPEG", "reason": "box file's image size differs (it says 96x64, the image is 48x32)"}]


def test_a_split_build_merges_the_box_counts(tmp_path, capsys):
    files = val_files()
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows())
    src = write_files(tmp_path / "val", files)
    for part in range(2):
        assert build(src, tmp_path / "out", "--labels", labels, "--shard-size", "64kB", "--num-parts", 2,
                     "--part-id", part) == 0
    assert main(["merge", str(tmp_path / "out")]) == 0
    check_boxes(tmp_path / "out", BOXES, files)
    capsys.readouterr()
    # Run again, with and without --split (a Slurm array submitted again with --resume ends in the
    # merge job's `merge OUT --split val`): said complete and no failure, not "merge joins the parts
    # of a build run with --num-parts" or "no val.part-*.json manifests to merge".
    tars = len(list((tmp_path / "out").glob("val-*.tar")))
    for split in ([], ["--split", "val"]):
        assert main(["merge", str(tmp_path / "out"), *split]) == 0
        assert capsys.readouterr().out == (f"val: complete already ({tars} shards, {len(files)} samples in "
                                           f"{tmp_path / 'out' / 'val.json'}); no part manifest left to merge\n")
    check_boxes(tmp_path / "out", BOXES, files)


def test_a_val_imagefolder_takes_boxes_by_file_stem(tmp_path):
    files = val_files()
    write_files(tmp_path / "val", {f"{WNID}/{name}": data for name, data in files.items()})
    xml = xml_source("tgz", tmp_path, {n: BOXES[n] for n in (1, 2)})
    assert build(tmp_path / "val", tmp_path / "out", "--boxes", xml) == 0
    check_boxes(tmp_path / "out", {n: BOXES[n] for n in (1, 2)}, files)


# Mistakes: one error line, exit status 2 ---------------------------------------------------------

def run_main(capsys, *args) -> tuple[int, str]:
    code, out, err = run_shards_main(capsys, *args)
    assert "Traceback" not in out + err
    return code, err


def assert_one_error_line(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _not_val(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "tar of class tars":
        return make_tar_of_tars(tmp_path / "train.tar", make_imagefolder(tmp_path / "f", 2, 2)), "val"
    if kind == "cifar":
        return write_cifar_tar(tmp_path / "cifar-10-binary.tar.gz", cifar_archive("cifar-10-batches-bin")), "train"
    make_imagefolder(tmp_path / "train", 2, 2)
    return tmp_path / "train", "train"


@pytest.mark.parametrize("kind", ["tar of class tars", "cifar", "train imagefolder"])
def test_boxes_with_a_source_that_is_not_imagenet_val(tmp_path, capsys, kind):
    src, split = _not_val(kind, tmp_path)
    xml = xml_source("tgz", tmp_path, {1: BOXES[1]})
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", split, "--boxes", xml, *SMALL)
    assert_one_error_line(code, err, "--boxes is for ImageNet validation images")


BAD_XML = {  # XML text -> what the error names (file:line)
    "not well-formed": (lambda xml: xml.replace("</bndbox>", "</bndbx>", 1), ":23:"),
    "no xmax": (lambda xml: xml.replace("<xmax>30</xmax>", "", 1), ":18:"),
    "xmin not a number": (lambda xml: xml.replace("<xmin>1</xmin>", "<xmin>one</xmin>", 1), ":18:"),
    "xmax < xmin": (lambda xml: xml.replace("<xmax>30</xmax>", "<xmax>0</xmax>", 1), ":18:"),
    "no size": (lambda xml: xml.replace("<width>40</width>", "", 1), ":7:"),
    "not VOC": (lambda xml: "<root/>\n", ":1:"),
}


@pytest.mark.parametrize("kind", ["folder", "tgz"])
@pytest.mark.parametrize("spoil", BAD_XML)
def test_a_malformed_xml_file_is_an_error_naming_file_and_line(tmp_path, capsys, kind, spoil):
    folder = xml_source("folder", tmp_path, {1: BOXES[1], 2: BOXES[2]})
    path = folder / "val" / f"{stem(1)}.xml"
    change, line = BAD_XML[spoil]
    path.write_text(change(path.read_text()))
    if kind == "tgz":
        with tarfile.open(tmp_path / "bbox.tgz", "w:gz") as tar:
            tar.add(folder / "val", arcname="val")
        folder = tmp_path / "bbox.tgz"
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows(with_boxes=False))
    src = write_files(tmp_path / "val", val_files())
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "val",
                         "--labels", labels, "--boxes", folder, *SMALL)
    assert_one_error_line(code, err, f"{stem(1)}.xml{line}")
    assert not (tmp_path / "out" / "val.json").exists()


@pytest.mark.parametrize("row, line", [
    (f"{WNID} 1 2 3", 3), (f"{WNID} 1 2 3 4 5", 3), (f"{WNID} a b c d", 3), (f"{WNID} 9 2 3 4", 3),
    (f"{WNID} 1 2 3 4 {WNID} 1 2 3", 3), ("1 2 3 4 5", 3),
])
def test_a_malformed_loc_csv_row_is_an_error_naming_file_and_line(tmp_path, capsys, row, line):
    labels = write_csv(tmp_path / "LOC_val_solution.csv", {stem(1): f"{WNID} 1 2 3 4", stem(2): row})
    src = write_files(tmp_path / "val", val_files())
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "val",
                         "--labels", labels, *SMALL)
    assert_one_error_line(code, err, f"{labels}:{line}")


def test_unusable_boxes_paths(tmp_path, capsys):
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows(with_boxes=False))
    src = write_files(tmp_path / "val", val_files())
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.tgz").write_text("not an archive")
    twice = xml_source("folder", tmp_path, {1: BOXES[1]})
    (twice / f"{stem(1)}.xml").write_bytes((twice / "val" / f"{stem(1)}.xml").read_bytes())
    for path, needle in [(tmp_path / "nowhere", "no such file or folder"), (tmp_path / "empty", "no .xml files"),
                         (tmp_path / "notes.tgz", "not a readable folder or .tgz"), (twice, "two annotations of")]:
        code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "val", "--labels", labels,
                             "--boxes", path, *SMALL)
        assert_one_error_line(code, err, f"--boxes {path}", needle)


def test_boxes_flag_through_the_real_cli(tmp_path):
    from processes import run_process

    files = val_files()
    labels = write_csv(tmp_path / "LOC_val_solution.csv", loc_rows(with_boxes=False))
    xml = xml_source("tgz", tmp_path, {4: BOXES[4]})
    src = make_flat_tar(tmp_path / "val.tar", files)
    result = run_process([sys.executable, "-m", "shards", "build", str(src), str(tmp_path / "out"), "--split", "val",
                          "--labels", str(labels), "--boxes", str(xml), *SMALL],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"boxes from {xml.resolve()}: 1 samples with boxes, 5 without" in result.stdout
    assert json.loads((tmp_path / "out" / "val.json").read_text())["totals"]["with_boxes"] == 1
