"""CUB-200-2011 as a source: its folder and its .tgz (metadata before or after the images).

Every check reads the shards back with the ``webdataset`` library and compares with the truth the
generator wrote (tests/shard_fixtures.py): the split is train_test_split.txt's, the class index is
the position of the classes.txt name in the sorted names, the box is x y w h as [x, y, x+w, y+h].
"""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from shard_fixtures import CUB_TOP, cub_dataset, run_shards_main, write_cub_tar, write_files
from shard_readers import manifest, read_with_webdataset
from shards.cli import main

SMALL = ["--quiet", "--workers", "1", "--shard-size", "64kB"]


def build(src, out, split, *extra) -> int:
    return main(["build", str(src), str(out), "--split", split, *SMALL, *map(str, extra)])


def source_as(kind: str, tmp_path: Path, files: dict) -> Path:
    """The generated data set as SRC: the extracted folder (or the folder above it) or the .tgz."""
    if kind == "folder":
        return write_files(tmp_path / "raw", files) / CUB_TOP
    if kind == "parent folder":
        return write_files(tmp_path / "raw", files)
    return write_cub_tar(tmp_path / "CUB_200_2011.tgz", files, metadata_first=kind == "tgz, metadata first")


KINDS = ["folder", "parent folder", "tgz, metadata first", "tgz, metadata last"]


def check_split(out: Path, split: str, images, classes: list[str]) -> None:
    """The shards of ``split`` hold exactly its images of train_test_split.txt, as they were."""
    wanted = {image.path: image for image in images if image.is_training == (split == "train")}
    samples = read_with_webdataset(out, split)
    assert sorted(s["json"]["source"] for s in samples) == sorted(f"{CUB_TOP}/images/{p}" for p in wanted)
    for sample in samples:
        image = wanted[sample["json"]["source"].removeprefix(f"{CUB_TOP}/images/")]
        assert sample["cls"] == classes.index(image.class_name)
        assert sample["jpg"] == image.data  # upright RGB JPEGs keep their bytes
        assert sample["json"]["boxes"] == [image.box]
        assert sample["json"]["stored_size"] == list(image.size) == [sample["json"]["width"], sample["json"]["height"]]
        assert sample["json"]["class"] == image.class_name and sample["json"]["image_id"] == image.image_id
    built = manifest(out, split)
    assert built["totals"]["with_boxes"] == len(wanted) and built["totals"]["without_boxes"] == 0
    assert built["rejected"] == [] and built["build"]["boxes"] == f"{CUB_TOP}/bounding_boxes.txt"


@pytest.mark.parametrize("kind", KINDS)
def test_train_and_test_splits_are_train_test_split_txt(tmp_path, kind):
    files, images = cub_dataset()
    src = source_as(kind, tmp_path, files)
    out = tmp_path / "out"
    assert build(src, out, "train") == 0
    assert build(src, out, "test", "--classes", out / "train.json") == 0
    names = sorted({image.class_name for image in images})
    assert manifest(out, "train")["classes"] == manifest(out, "test")["classes"] == names
    assert manifest(out, "train")["build"]["source_kind"] == ("cub-folder" if "folder" in kind else "cub-tar")
    for split in ("train", "test"):
        check_split(out, split, images, names)
    ids = {split: {s["json"]["image_id"] for s in read_with_webdataset(out, split)} for split in ("train", "test")}
    lines = files[f"{CUB_TOP}/train_test_split.txt"].decode().splitlines()
    marked = {int(a): b for a, b in (line.split() for line in lines)}
    assert ids["train"] == {i for i, flag in marked.items() if flag == "1"}
    assert ids["test"] == {i for i, flag in marked.items() if flag == "0"}


def test_classes_are_the_sorted_names_whatever_the_classes_txt_order(tmp_path):
    names = ["digit_7", "digit_0", "digit_3"]  # classes.txt ids 1, 2, 3 in this order
    files, _ = cub_dataset(class_names=names, per_class=2)
    src = write_files(tmp_path / "birds", {k.removeprefix(f"{CUB_TOP}/"): v for k, v in files.items()})
    assert build(src, tmp_path / "out", "test") == 0  # told by its metadata files, not its folder's name
    built = manifest(tmp_path / "out", "test")
    assert built["classes"] == ["digit_0", "digit_3", "digit_7"]
    assert built["build"]["classes_from"] == "birds/classes.txt"
    for sample in read_with_webdataset(tmp_path / "out", "test"):
        assert sample["cls"] == ["digit_0", "digit_3", "digit_7"].index(sample["json"]["class"])
        assert sample["json"]["source"].startswith("birds/images/digit_")


@pytest.mark.parametrize("kind", ["folder", "tgz, metadata last"])
def test_resize_short_scales_the_boxes(tmp_path, kind):
    files, images = cub_dataset()
    src = source_as(kind, tmp_path, files)
    assert build(src, tmp_path / "out", "train", "--resize-short", 20) == 0
    by_id = {image.image_id: image for image in images}
    for sample in read_with_webdataset(tmp_path / "out", "train"):
        image = by_id[sample["json"]["image_id"]]
        width, height = image.size
        # Hand-computed: the shorter side becomes 20, the other round(side * 20 / shorter).
        stored = (round(width * 20 / height), 20) if height < width else (20, round(height * 20 / width))
        assert sample["json"]["stored_size"] == list(stored)
        assert Image.open(io.BytesIO(sample["jpg"])).size == stored
        x0, y0, x1, y1 = image.box
        sx, sy = stored[0] / width, stored[1] / height
        assert sample["json"]["boxes"] == [pytest.approx([x0 * sx, y0 * sy, x1 * sx, y1 * sy], abs=1e-9)]
        assert (sample["json"]["width"], sample["json"]["height"]) == image.size


def test_images_missing_or_unlisted_are_rejected_with_the_reason(tmp_path):
    files, images = cub_dataset()
    test_image = next(image for image in images if not image.is_training)
    del files[f"{CUB_TOP}/images/{test_image.path}"]
    files[f"{CUB_TOP}/images/stray/extra_0001.jpg"] = images[0].data
    out = tmp_path / "out"
    assert build(write_files(tmp_path / "raw", files), out, "test") == 0
    reasons = {entry["source"]: entry["reason"] for entry in manifest(out, "test")["rejected"]}
    assert reasons == {f"{CUB_TOP}/images/{test_image.path}": "listed in images.txt, missing from SRC",
                       f"{CUB_TOP}/images/stray/extra_0001.jpg": "not listed in images.txt"}
    totals = manifest(out, "test")["totals"]
    assert totals["inputs"] == totals["samples"] + 2 == sum(not image.is_training for image in images) + 1


def run_main(capsys, *args) -> tuple[int, str]:
    code, _, err = run_shards_main(capsys, *args)
    return code, err


def assert_one_error_line(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


SPOILED = {  # metadata file -> (its spoiled content, what the error names)
    "bounding_boxes.txt": (lambda text: text.replace("\n3 ", "\n3 x", 1), "bounding_boxes.txt:3"),
    "train_test_split.txt": (lambda text: text.replace("\n2 ", "\n2 7 ", 1), "train_test_split.txt:2"),
    "image_class_labels.txt": (lambda text: text.replace("\n4 1", "\n4 99", 1), "image_class_labels.txt:4"),
    "images.txt": (lambda text: text.replace("\n5 ", "\nfive ", 1), "images.txt:5"),
    "classes.txt": (lambda text: text.replace("\n2 ", "\n1 ", 1), "classes.txt:2"),
}


@pytest.mark.parametrize("kind", ["folder", "tgz, metadata last"])
@pytest.mark.parametrize("name", SPOILED)
def test_a_malformed_metadata_line_is_an_error_naming_file_and_line(tmp_path, capsys, kind, name):
    files, _ = cub_dataset()
    spoil, needle = SPOILED[name]
    path = f"{CUB_TOP}/{name}"
    files[path] = spoil(files[path].decode()).encode()
    assert files[path] != cub_dataset()[0][path]
    src = source_as(kind, tmp_path, files)
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "train", *SMALL)
    assert_one_error_line(code, err, needle)
    assert not (tmp_path / "out" / "train.json").exists()


@pytest.mark.parametrize("kind", ["folder", "tgz, metadata first"])
def test_a_missing_metadata_file_is_an_error(tmp_path, capsys, kind):
    files, _ = cub_dataset()
    del files[f"{CUB_TOP}/bounding_boxes.txt"]
    src = source_as(kind, tmp_path, files)
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "train", *SMALL)
    assert_one_error_line(code, err, "bounding_boxes.txt", "CUB-200-2011 without")


@pytest.mark.parametrize("kind", ["folder", "tgz, metadata first"])
def test_a_split_without_images_names_train_test_split(tmp_path, capsys, kind):
    """Every image marked test: --split train says so (the build would only find "no files")."""
    files, images = cub_dataset()
    files[f"{CUB_TOP}/train_test_split.txt"] = "".join(f"{i.image_id} 0\n" for i in images).encode()
    src = source_as(kind, tmp_path, files)
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "train", *SMALL)
    assert_one_error_line(code, err, "train_test_split.txt marks none of the 12 images of images.txt as train")
    assert build(src, tmp_path / "out", "test") == 0  # the other split is all there


@pytest.mark.parametrize("extra, needle", [
    (["--split", "val"], "train and a test split"),
    (["--split", "train", "--boxes", "ILSVRC2012_bbox_val_v3.tgz"], "--boxes is for ImageNet"),
    (["--split", "train", "--labels", "LOC_val_solution.csv"], "--labels is for ImageNet"),
])
def test_options_that_do_not_fit_cub(tmp_path, capsys, extra, needle):
    files, _ = cub_dataset(per_class=1)
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nx,n01440764 1 2 3 4\n")
    (tmp_path / "ILSVRC2012_bbox_val_v3.tgz").write_bytes(b"")
    extra = [str(tmp_path / e) if e.endswith((".tgz", ".csv")) else e for e in extra]
    code, err = run_main(capsys, "build", source_as("folder", tmp_path, files), tmp_path / "out", *extra, *SMALL)
    assert_one_error_line(code, err, needle)


def test_classes_of_another_data_set_are_refused_before_streaming(tmp_path, capsys):
    files, _ = cub_dataset()
    other = tmp_path / "other.json"
    built = tmp_path / "built"
    assert build(write_files(tmp_path / "raw", files), built, "train") == 0
    text = json.loads((built / "train.json").read_text())
    text["classes"] = text["classes"][:-1]
    text["num_classes"] -= 1
    other.write_text(json.dumps(text))
    code, err = run_main(capsys, "build", source_as("tgz, metadata last", tmp_path, files), tmp_path / "out",
                         "--split", "test", "--classes", other, *SMALL)
    assert_one_error_line(code, err, "003.Bird_Wren", str(other))


@pytest.mark.parametrize("kind", ["folder", "tgz, metadata last"])
@pytest.mark.parametrize("other_split", [False, True])
def test_an_image_listed_twice_in_images_txt_is_an_error(tmp_path, capsys, kind, other_split):
    """A second images.txt entry of one image (a new id, its own class, box and split): keyed by
    path, it replaced the first one's class and box, or put the image in both splits, without a
    word (walkthrough). One error line naming both lines."""
    files, images = cub_dataset()
    first = images[4]
    new_id = len(images) + 1
    flag = int(first.is_training) if not other_split else 1 - int(first.is_training)
    for name, line in (("images.txt", f"{new_id} {first.path}"), ("image_class_labels.txt", f"{new_id} 2"),
                       ("train_test_split.txt", f"{new_id} {flag}"), ("bounding_boxes.txt", f"{new_id} 1 1 5 5")):
        files[f"{CUB_TOP}/{name}"] += f"{line}\n".encode()
    src = source_as(kind, tmp_path, files)
    split = "train" if first.is_training else "test"
    code, err = run_main(capsys, "build", src, tmp_path / "out", "--split", split, *SMALL)
    assert_one_error_line(code, err, f"images.txt:{len(images) + 1}: {first.path} is listed before, at line "
                                     f"{first.image_id}")
    assert not (tmp_path / "out" / f"{split}.json").exists()


def test_metadata_lines_of_images_not_in_images_txt_are_said(tmp_path, capsys):
    """images.txt cut down to a subset (or ids off by one): the other files' lines of ids it lacks
    were left out without a word (walkthrough). A warning per file, naming the ids; the build of
    the listed images goes ahead."""
    files, images = cub_dataset()
    text = files[f"{CUB_TOP}/images.txt"].decode().splitlines(keepends=True)
    dropped = images[1]  # a train image (id 2)
    files[f"{CUB_TOP}/images.txt"] = "".join(line for line in text if not line.startswith("2 ")).encode()
    del files[f"{CUB_TOP}/images/{dropped.path}"]
    code, err = run_main(capsys, "build", source_as("folder", tmp_path, files), tmp_path / "out", "--split", "train",
                         *SMALL)
    assert code == 0, err
    where = tmp_path / "raw" / CUB_TOP
    assert err.splitlines() == [f"warning: {where}: lines of image_class_labels.txt (1), train_test_split.txt (1), "
                                "bounding_boxes.txt (1) for 1 image(s) that images.txt does not list (image 2): "
                                "left out"]
    assert dropped.image_id not in {s["json"]["image_id"] for s in read_with_webdataset(tmp_path / "out", "train")}


def test_a_box_that_does_not_fit_its_image_is_refused_and_the_image_kept(tmp_path):
    """bounding_boxes.txt of the full-size images kept for copies resized since: the boxes reached
    past the images, were stored, and the evaluation dropped those samples, blaming its crop
    (walkthrough). Refused per image (recorded with the reason), the image written without it; a
    box whose far edge is the image's edge (CUB's x + width) or one pixel past it is kept, and so is
    a one-pixel box on the last column in 1-based ends (reviewer)."""
    files, images = cub_dataset()
    train = [image for image in images if image.is_training]
    past, edge = train[0], train[1]
    width, height = past.size
    last = train[2]
    boxes = {past.image_id: f"{width / 2} 2 {width} 5",  # reaches half the width past the right edge
             edge.image_id: f"0 0 {edge.size[0] + 1} {edge.size[1]}",
             last.image_id: f"{last.size[0]} {last.size[1]} 0 0"}
    lines = files[f"{CUB_TOP}/bounding_boxes.txt"].decode().splitlines()
    pairs = (line.split(" ", 1) for line in lines)
    files[f"{CUB_TOP}/bounding_boxes.txt"] = "".join(f"{n} {boxes.get(int(n), rest)}\n" for n, rest in pairs).encode()
    out = tmp_path / "out"
    assert build(write_files(tmp_path / "raw", files), out, "train") == 0
    built = manifest(out, "train")
    reason = (f"a box reaches past the image (box {width / 2:g} 2 {1.5 * width:g} 7 of a {width}x{height} image: the "
              "annotations of another copy of it?)")
    assert built["boxes_refused"] == [{"source": f"{CUB_TOP}/images/{past.path}", "reason": reason}]
    assert built["totals"]["with_boxes"] == len(train) - 1 and built["totals"]["without_boxes"] == 1
    samples = {s["json"]["image_id"]: s["json"] for s in read_with_webdataset(out, "train")}
    assert "boxes" not in samples[past.image_id]
    assert samples[edge.image_id]["boxes"] == [[0.0, 0.0, edge.size[0] + 1.0, float(edge.size[1])]]
    assert samples[last.image_id]["boxes"] == [[float(last.size[0]), float(last.size[1])] * 2]
