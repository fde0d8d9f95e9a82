"""Validation sources (flat folder or flat tar + LOC csv or ILSVRC devkit) and the label mapping.

Every check reads the shards back with the ``webdataset`` library itself (not our helpers) and
compares with the truth generated here: label = position of the wnid in the sorted class list.
"""

import json
import random
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from shard_fixtures import (jpeg_bytes, make_flat_tar, make_folder_tar, make_imagefolder, make_tar_of_tars, wnid,
                            write_devkit, write_files, write_loc_csv)
from shards.cli import main

NUM_CLASSES = 14  # >= 12 for labels 10..13; wnid(13) < wnid(12): generation order != sorted order
PER_CLASS = 3


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


def read_back(out: Path, split: str) -> list[dict]:
    """Every sample of OUT/<split>-*.tar through webdataset, raw bytes as stored."""
    tars = sorted(Path(out).glob(f"{split}-*.tar"))
    listed = [s["name"] for s in json.loads((Path(out) / f"{split}.json").read_text())["shards"]]
    assert [t.name for t in tars] == sorted(listed)
    samples = []
    for tar in tars:
        for sample in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            samples.append(sample)
    return samples


def build(src, out, *extra, split="val") -> int:
    return main(["build", str(src), str(out), "--split", split, "--quiet", "--workers", "1",
                 "--shard-size", "64kB", *map(str, extra)])


def manifest(out, split="val") -> dict:
    return json.loads((Path(out) / f"{split}.json").read_text())


def val_truth(num_classes=NUM_CLASSES, per_class=PER_CLASS, seed=0):
    """Shuffled val images: (stem -> wnid, file name -> bytes); numbering starts at 1 like ILSVRC."""
    wnids = [wnid(c) for c in range(num_classes)] * per_class
    random.Random(seed).shuffle(wnids)
    truth = {val_name(i + 1): w for i, w in enumerate(wnids)}
    files = {f"{stem}.JPEG": jpeg_bytes(500 + i) for i, stem in enumerate(truth)}
    return truth, files


def write_flat_folder(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def check_samples(samples, truth, files, classes):
    """Labels are sorted-class indices of the true wnid, bytes pass through, metadata is right."""
    assert len(samples) == len(files)
    seen = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        source = meta["source"]
        stem = source.split(".")[0]
        seen.add(source)
        expected = classes.index(truth[stem])
        assert sample["cls"] == str(expected).encode()  # plain ASCII decimal
        assert meta["wnid"] == truth[stem]
        assert sample["jpg"] == files[source]  # pass-through of the original bytes
    assert seen == set(files)
    labels = [int(s["cls"]) for s in samples]
    assert {10, 11} <= set(labels)  # multi-digit labels occur
    return labels


def test_flat_folder_with_loc_csv(tmp_path):
    truth, files = val_truth()
    src = write_flat_folder(tmp_path / "val", files)
    labels_csv = write_loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    assert build(src, tmp_path / "out", "--labels", labels_csv) == 0

    classes = sorted(set(truth.values()))
    assert classes != [wnid(c) for c in range(NUM_CLASSES)]  # sorting matters for these wnids
    built = manifest(tmp_path / "out")
    assert built["classes"] == classes and built["num_classes"] == NUM_CLASSES
    labels = check_samples(read_back(tmp_path / "out", "val"), truth, files, classes)
    assert built["class_counts"] == [labels.count(i) for i in range(NUM_CLASSES)] == [PER_CLASS] * NUM_CLASSES
    assert built["totals"]["samples"] == built["totals"]["inputs"] == len(files)
    assert built["totals"]["rejected"] == 0 and built["rejected"] == []


def _devkit_as(kind: str, tmp_path: Path, classes: list[str], truth: dict) -> Path:
    gt = [truth[val_name(i + 1)] for i in range(len(truth))]
    devkit = write_devkit(tmp_path / "devkit", classes, gt)  # .../ILSVRC2012_devkit_t12
    if kind == "folder":
        return devkit
    if kind == "data":
        return devkit / "data"
    if kind == "parent":
        return tmp_path / "devkit"
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(devkit, arcname="ILSVRC2012_devkit_t12")
    return archive


@pytest.mark.parametrize("kind", ["folder", "data", "parent", "tar.gz"])
def test_flat_tar_with_devkit_labels_are_sorted_indices_not_ids(tmp_path, kind):
    truth, files = val_truth(seed=1)
    classes = sorted(set(truth.values()))
    src = make_flat_tar(tmp_path / "ILSVRC2012_img_val.tar", files)
    labels = _devkit_as(kind, tmp_path, classes, truth)
    assert build(src, tmp_path / "out", "--labels", labels) == 0

    built = manifest(tmp_path / "out")
    # The devkit's non-leaf synset (n99999999) is not a class.
    assert built["classes"] == classes and built["num_classes"] == NUM_CLASSES
    samples = read_back(tmp_path / "out", "val")
    check_samples(samples, truth, files, classes)

    # ILSVRC2012_ID - 1 from the ground truth file must NOT be the label.
    gt_ids = [int(line) for line in
              (tmp_path / "devkit/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
              .read_text().split()]
    differing = 0
    for sample in samples:
        number = int(json.loads(sample["json"])["source"].split(".")[0].rsplit("_", 1)[1])
        differing += int(sample["cls"]) != gt_ids[number - 1] - 1
    assert differing > len(samples) // 2


def test_flat_folder_with_devkit(tmp_path):
    truth, files = val_truth(seed=2)
    classes = sorted(set(truth.values()))
    src = write_flat_folder(tmp_path / "val", files)
    assert build(src, tmp_path / "out", "--labels", _devkit_as("folder", tmp_path, classes, truth)) == 0
    check_samples(read_back(tmp_path / "out", "val"), truth, files, classes)


# --classes: the val build uses the train build's class map --------------------------------------

SUBSET = [1, 4, 10, 12, 13]  # generation indices of the wnids the val labels use


def _subset_val(tmp_path: Path, kind: str, extra_wnid: str | None = None):
    """A val source whose labels use only SUBSET (plus ``extra_wnid`` once, if given)."""
    wnids = [wnid(c) for c in SUBSET] * 3
    if extra_wnid:
        wnids.append(extra_wnid)
    random.Random(3).shuffle(wnids)
    truth = {val_name(i + 1): w for i, w in enumerate(wnids)}
    files = {f"{stem}.JPEG": jpeg_bytes(900 + i) for i, stem in enumerate(truth)}
    if kind == "folder+csv":
        src = write_flat_folder(tmp_path / "val", files)
        labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    else:
        src = make_flat_tar(tmp_path / "val.tar", files)
        labels = _devkit_as("tar.gz", tmp_path, sorted(set(wnids)), truth)
    return src, labels, truth, files


@pytest.fixture
def train_build(tmp_path):
    make_imagefolder(tmp_path / "train", NUM_CLASSES, 2)
    out = tmp_path / "out"
    assert build(tmp_path / "train", out, split="train") == 0
    return out


@pytest.mark.parametrize("kind", ["folder+csv", "tar+devkit"])
def test_classes_from_train_manifest_keep_train_indices(tmp_path, train_build, kind):
    train_classes = manifest(train_build, "train")["classes"]
    assert train_classes == sorted(wnid(c) for c in range(NUM_CLASSES))
    src, labels, truth, files = _subset_val(tmp_path, kind)
    assert build(src, train_build, "--labels", labels, "--classes", train_build / "train.json") == 0

    built = manifest(train_build)
    assert built["classes"] == train_classes and built["num_classes"] == NUM_CLASSES
    samples = read_back(train_build, "val")
    assert len(samples) == len(files)
    subset = sorted(set(truth.values()))
    reindexed = 0
    for sample in samples:
        true_wnid = truth[json.loads(sample["json"])["source"].split(".")[0]]
        assert int(sample["cls"]) == train_classes.index(true_wnid)
        assert sample["cls"] == str(train_classes.index(true_wnid)).encode()
        reindexed += train_classes.index(true_wnid) != subset.index(true_wnid)
    assert reindexed > len(samples) // 2  # re-indexing within the subset would be caught
    assert sum(built["class_counts"]) == len(files)
    assert [i for i, n in enumerate(built["class_counts"]) if n] == sorted(train_classes.index(w) for w in subset)


@pytest.mark.parametrize("kind", ["folder+csv", "tar+devkit"])
def test_val_class_missing_from_train_is_an_error(tmp_path, train_build, kind, capsys):
    stranger = wnid(4242)
    assert stranger not in manifest(train_build, "train")["classes"]
    src, labels, _, _ = _subset_val(tmp_path, kind, extra_wnid=stranger)
    capsys.readouterr()
    assert build(src, train_build, "--labels", labels, "--classes", train_build / "train.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and stranger in err and "Traceback" not in err
    assert not (train_build / "val.json").exists()



@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_class_names_in_another_unicode_normalization_are_said_to_be(tmp_path, capsys, kind):
    # Train written on Linux (NFC), val copied from a Mac (NFD folder names): the error named
    # classes that look exactly like those of train.json (walkthrough).
    import unicodedata

    nfc = unicodedata.normalize("NFC", "caf\u00e9")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    write_files(tmp_path / "train", {f"{nfc}/a.JPEG": jpeg_bytes(1), "plain/b.JPEG": jpeg_bytes(2)})
    val = {f"{nfd}/c.JPEG": jpeg_bytes(3), "plain/d.JPEG": jpeg_bytes(4)}
    src = write_files(tmp_path / "val", val) if kind == "folder" else make_folder_tar(tmp_path / "val.tar", val)
    assert build(tmp_path / "train", tmp_path / "out", split="train") == 0
    capsys.readouterr()
    assert build(src, tmp_path / "out", "--classes", tmp_path / "out" / "train.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert ("differ from a listed class only in Unicode normalization, NFD against NFC, as macOS writes folder "
            "names: rename them to the list's form") in err

# Unlabelled images and bad label files ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_image_without_label_row_is_rejected(tmp_path, kind):
    truth, files = val_truth(seed=4)
    orphan = "ILSVRC2012_val_00099999.JPEG"
    all_files = {**files, orphan: jpeg_bytes(77)}
    if kind == "folder":
        src = write_flat_folder(tmp_path / "val", all_files)
    else:
        src = make_flat_tar(tmp_path / "val.tar", all_files)
    labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    assert build(src, tmp_path / "out", "--labels", labels) == 0

    built = manifest(tmp_path / "out")
    totals = built["totals"]
    assert totals["inputs"] == len(all_files) == totals["samples"] + totals["rejected"]
    assert totals["rejected"] == 1 and totals["samples"] == len(files)
    [entry] = built["rejected"]
    assert entry["source"] == orphan and "label" in entry["reason"]
    samples = read_back(tmp_path / "out", "val")
    assert orphan not in {json.loads(s["json"])["source"] for s in samples}
    check_samples(samples, truth, files, sorted(set(truth.values())))


@pytest.mark.parametrize("kind", ["folder", "folder tar", "tar of class tars"])
def test_an_image_whose_class_folder_its_label_denies_is_rejected(tmp_path, kind):
    # Val sorted into <wnid>/ folders (a script's work), LOC csv given for its boxes: the folder
    # labelled every image, silently, with the boxes the csv drew for another class.
    truth, files = val_truth(seed=5)
    stems = sorted(truth)
    misplaced = {stem: wnid(0) for stem in stems[:4] if truth[stem] != wnid(0)}  # sorted into wnid(0)'s folder
    assert len(misplaced) >= 2
    sorted_files = {f"{misplaced.get(stem, truth[stem])}/{stem}.JPEG": files[f"{stem}.JPEG"] for stem in stems}
    if kind == "folder":
        src = write_files(tmp_path / "val", sorted_files)
    elif kind == "folder tar":
        src = make_folder_tar(tmp_path / "val.tar", sorted_files)
    else:
        src = make_tar_of_tars(tmp_path / "val.tar", sorted_files)
    labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    assert build(src, tmp_path / "out", "--labels", labels) == 0

    built = manifest(tmp_path / "out")
    assert sorted((entry["source"], entry["reason"]) for entry in built["rejected"]) == sorted(
        (f"{folder}/{stem}.JPEG" if kind != "tar of class tars" else f"{folder}.tar/{stem}.JPEG",
         f"in class folder {folder}, but {labels} labels it {truth[stem]}")
        for stem, folder in misplaced.items())
    samples = read_back(tmp_path / "out", "val")
    assert sorted(json.loads(sample["json"])["source"].rsplit("/", 1)[-1] for sample in samples) == [
        f"{stem}.JPEG" for stem in stems if stem not in misplaced]
    classes = sorted(set(truth.values()))
    for sample in samples:  # the rest keep their folder's label, which the csv agrees with
        assert int(sample["cls"]) == classes.index(json.loads(sample["json"])["wnid"])

def _devkit(tmp_path: Path) -> Path:
    truth, _ = val_truth()
    return write_devkit(tmp_path / "devkit", sorted(set(truth.values())), list(truth.values()))


def _bad_label_file(kind: str, tmp_path: Path) -> Path:
    if kind == "csv-wrong-header":
        path = tmp_path / "LOC_val_solution.csv"
        path.write_text("image,label\nILSVRC2012_val_00000001,n01440764\n")
    elif kind == "random-text":
        path = tmp_path / "labels.txt"
        path.write_text("the quick brown fox\njumps over the lazy dog\n")
    elif kind == "devkit-without-meta":
        path = _devkit(tmp_path)
        (path / "data" / "meta.mat").unlink()
    elif kind == "devkit-garbage-meta":
        path = _devkit(tmp_path)
        (path / "data" / "meta.mat").write_text("not a mat file")
    elif kind == "csv-bad-row":
        path = tmp_path / "LOC_val_solution.csv"
        path.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001\n")
    elif kind == "not-a-tar.tar.gz":
        path = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
        path.write_text("hello")
    elif kind == "devkit-garbage-ground-truth":
        path = _devkit(tmp_path)
        (path / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("n01440764\nn01443537\n")
    elif kind == "csv-binary":
        path = tmp_path / "LOC_val_solution.csv"
        path.write_bytes(bytes(range(256)) * 4)
    else:
        raise AssertionError(kind)
    return path




@pytest.mark.parametrize("kind", [
    "csv-wrong-header", "random-text", "devkit-without-meta", "devkit-garbage-meta", "csv-bad-row",
    "not-a-tar.tar.gz",
    "devkit-garbage-ground-truth",
    "csv-binary",
])
def test_bad_label_file_gives_one_line_error(tmp_path, kind, capsys):
    truth, files = val_truth(num_classes=2, per_class=1)
    src = write_flat_folder(tmp_path / "val", files)
    labels = _bad_label_file(kind, tmp_path)
    capsys.readouterr()
    try:
        code = build(src, tmp_path / "out", "--labels", labels)
    except Exception as error:  # what the user would see as a traceback
        pytest.fail(f"uncaught {type(error).__name__}: {error}")
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(labels) in lines[0] or labels.name in lines[0]
    assert not (tmp_path / "out" / "val.json").exists()


def test_loc_csv_saved_with_a_byte_order_mark_is_read(tmp_path):
    from shard_fixtures import write_loc_csv
    from shards.labels import load_val_labels

    path = write_loc_csv(tmp_path / "LOC_val_solution.csv", {"ILSVRC2012_val_00000001": "n01440764"})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheet programs save it
    assert load_val_labels(path).wnid_by_stem == {"ILSVRC2012_val_00000001": "n01440764"}


@pytest.mark.parametrize("second, message", [
    ("n02000000 10 20 30 40", "class n02000000 where line 2 has n01440764"),
    ("n01440764 11 20 30 40", "other boxes than line 2"),
])
def test_a_loc_csv_row_repeated_with_other_content_is_refused(tmp_path, second, message):
    """A second row for an image used to win over the first without a word (a wrong label)."""
    from shards.errors import ShardsError
    from shards.labels import load_val_labels

    path = tmp_path / "LOC_val_solution.csv"
    stem = "ILSVRC2012_val_00000001"
    path.write_text(f"ImageId,PredictionString\n{stem},n01440764 10 20 30 40\n"
                    f"ILSVRC2012_val_00000002,n01440764\n{stem},{second}\n")
    with pytest.raises(ShardsError) as error:
        load_val_labels(path)
    assert str(error.value) == f"--labels {path}:4: {stem} again, with {message}; keep one row per image"
    # The same row twice says nothing new: read as once.
    path.write_text(f"ImageId,PredictionString\n{stem},n01440764 10 20 30 40\n{stem},n01440764 10 20 30 40\n")
    labels = load_val_labels(path)
    assert labels.wnid_by_stem == {stem: "n01440764"} and len(labels.boxes.by_stem[stem].boxes) == 1


def test_a_val_image_of_a_class_the_train_build_lacks_is_one_error_line_after_the_bar(tmp_path, capsys):
    """Found while streaming (a --labels file may name classes whose images SRC lacks): the error
    was printed into the progress bar's line and the bar drawn again after it, and it said "of SRC"
    for a class that --labels gave (walkthrough)."""
    truth, files = val_truth()
    classes = sorted(set(truth.values()))
    from shards.manifest import write_manifest

    (tmp_path / "train").mkdir()
    write_manifest(tmp_path / "train" / "train.json", {  # a train build of one class less
        "format": "cutmix-shards/1", "split": "train", "num_classes": len(classes) - 1, "classes": classes[1:],
        "shards": [], "totals": {}, "rejected": [], "build": {}})
    src = make_flat_tar(tmp_path / "ILSVRC2012_img_val.tar", files)
    labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    capsys.readouterr()
    code = main(["build", str(src), str(tmp_path / "out"), "--split", "val", "--labels", str(labels),
                 "--classes", str(tmp_path / "train" / "train.json")])  # no --quiet: the bar is drawn
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert code == 2 and last.startswith("error: ") and "\r" not in last, repr(err[-600:])
    assert f"class {classes[0]} (its label in {labels}) is not in {tmp_path / 'train' / 'train.json'}: SRC holds " \
        "images of classes the build does not have; give SRC with only the images of its classes" in last


def test_verify_finds_a_split_built_with_another_class_list_than_train(tmp_path, capsys):
    """Val built first from a labels file of other classes, train built after into the same OUT:
    each split verified OK on its own, the mismatch found only when training started (walkthrough)."""
    truth, files = val_truth()
    classes = sorted(set(truth.values()))
    src = make_flat_tar(tmp_path / "ILSVRC2012_img_val.tar", files)
    other = {stem: ("n09999999" if w == classes[0] else w) for stem, w in truth.items()}
    assert build(src, tmp_path / "out", "--labels", write_loc_csv(tmp_path / "other.csv", other)) == 0
    train = tmp_path / "train_tree"
    for wnid_name in classes:  # a train tree of the val's true classes
        (train / wnid_name).mkdir(parents=True)
        (train / wnid_name / "a.JPEG").write_bytes(jpeg_bytes(len(wnid_name)))
    assert build(train, tmp_path / "out", split="train") == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "out"), "--quiet"]) == 1
    out = capsys.readouterr().out
    moved = sorted(set(other.values()))
    assert (f"BAD val.json: another class list than train.json (class 0 is {classes[0]!r} in train, {moved[0]!r} "
            f"there): its labels mean other classes; build it again with --classes {tmp_path / 'out' / 'train.json'} "
            "--overwrite") in out, out
    assert main(["verify", str(tmp_path / "out"), "--split", "val", "--quiet"]) == 1
