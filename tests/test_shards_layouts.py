"""Sources a user points one folder too high or too deep, and splits that do not fit together
(found by a walkthrough with the real layouts): each was built without a word into a data set
with wrong classes, both splits in one, or val labels meaning other classes."""

from __future__ import annotations

import json
from pathlib import Path

from shard_fixtures import (cifar_archive, cub_dataset, jpeg_bytes, make_flat_tar, make_folder_tar, make_imagefolder,
                            run_shards_main, wnid, write_cifar_tar, write_files, write_loc_csv)


def _flat_val(root: Path, count: int) -> dict[str, bytes]:
    files = {f"ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(500 + n) for n in range(1, count + 1)}
    write_files(root, files)
    return files


def test_train_class_folders_beside_a_flat_val_folder_are_refused(tmp_path, capsys):
    # The official tars extracted without sorting val: RAW/train/<wnid>/..., RAW/val/<image>. Read as
    # an ImageFolder: two classes, "train" and "val", the val images inside the training set.
    raw = tmp_path / "raw"
    make_imagefolder(raw / "train", 3, 2)
    _flat_val(raw / "val", 4)
    code, _, err = run_shards_main(capsys, "build", raw, tmp_path / "out", "--split", "train", "--quiet")
    assert code == 2 and not (tmp_path / "out" / "train.json").exists()
    assert err.strip() == (f"error: SRC {raw}: its classes train, val are split folders: SRC is the folder above a "
                           f"data set's splits; give the split's own folder as SRC ({raw / 'train'})")


def test_a_tar_of_split_folders_is_refused_while_streaming_and_leaves_no_build(tmp_path, capsys):
    # `tar cf clsloc.tar -C CLS-LOC test train val` (Kaggle's layout): the first member is test/<image>,
    # so the tar reads as flat "test" images at first; the second split-named "class" stops it.
    files = {f"test/ILSVRC2012_test_{n:08d}.JPEG": jpeg_bytes(n) for n in range(3)}
    files.update({f"train/{wnid(c)}/{wnid(c)}_{n}.JPEG": jpeg_bytes(100 + 10 * c + n)
                  for c in range(2) for n in range(2)})
    files.update({f"val/ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(200 + n) for n in range(2)})
    source = make_folder_tar(tmp_path / "clsloc.tar", files)
    out = tmp_path / "out"
    code, _, err = run_shards_main(capsys, "build", source, out, "--split", "train", "--quiet")
    assert code == 2 and err.strip() == (f"error: SRC {source}: its classes test, train are split folders: SRC is "
                                         "the tar above a data set's splits; extract it and give its train/ folder "
                                         "as SRC"), err
    # Pass 1 failed: nothing of it can be resumed, and nothing is left to make the mended command
    # "a different build in progress".
    assert not (out / ".build" / "train").exists() and not list(out.glob("train-*"))
    good = make_folder_tar(tmp_path / "train.tar", {k.removeprefix("train/"): v for k, v in files.items()
                                                    if k.startswith("train/")})
    code, _, err = run_shards_main(capsys, "build", good, out, "--split", "train", "--quiet")
    assert code == 0, err
    assert json.loads((out / "train.json").read_text())["classes"] == [wnid(0), wnid(1)]


def test_a_class_merely_named_train_among_others_is_still_a_class(tmp_path, capsys):
    # CIFAR-100 and COCO have a class "train": one split-named class is not a split folder.
    raw = tmp_path / "raw"
    for index, name in enumerate(("bus", "train", "tram")):
        write_files(raw / name, {f"{name}_{n}.JPEG": jpeg_bytes(10 * index + n) for n in range(2)})
    code, _, err = run_shards_main(capsys, "build", raw, tmp_path / "out", "--split", "train", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "train.json").read_text())["classes"] == ["bus", "train", "tram"]


def test_a_val_split_with_another_class_list_than_train_is_refused_at_build(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_imagefolder(raw / "train", 3, 2)
    assert run_shards_main(capsys, "build", raw / "train", out, "--split", "train", "--quiet")[0] == 0
    make_imagefolder(raw / "val", 2, 2, seed=1)  # two of the three classes: its labels would shift
    code, _, err = run_shards_main(capsys, "build", raw / "val", out, "--split", "val", "--quiet")
    assert code == 2 and not (out / "val.json").exists()
    assert err.strip() == (f"error: {out / 'train.json'}: the train split has another class list (3 classes there, "
                           f"2 in SRC {raw / 'val'}'s class folders): this val split's labels would mean other "
                           f"classes; build it with --classes {out / 'train.json'}")
    code, _, err = run_shards_main(capsys, "build", raw / "val", out, "--split", "val", "--quiet",
                                   "--classes", out / "train.json")
    assert code == 0, err
    assert json.loads((out / "val.json").read_text())["classes"] == [wnid(0), wnid(1), wnid(2)]


def test_a_cifar100_test_split_of_the_other_label_field_names_the_field(tmp_path, capsys):
    source = write_cifar_tar(tmp_path / "cifar-100-python.tar.gz", cifar_archive("cifar-100-python"))
    out = tmp_path / "out"
    assert run_shards_main(capsys, "build", source, out, "--split", "train", "--label-field", "coarse",
                           "--quiet")[0] == 0
    code, _, err = run_shards_main(capsys, "build", source, out, "--split", "test", "--quiet")
    assert code == 2 and not (out / "test.json").exists()
    assert err.rstrip().endswith(f"build it with --classes {out / 'train.json'} (they are its coarse labels: give "
                                 "--label-field coarse)"), err
    # What that advice said before: --classes alone, refused for the fine labels; now it names the field too.
    code, _, err = run_shards_main(capsys, "build", source, out, "--split", "test", "--quiet",
                                   "--classes", out / "train.json")
    assert code == 2 and err.rstrip().endswith("(they are its coarse labels: give --label-field coarse)"), err
    code, _, err = run_shards_main(capsys, "build", source, out, "--split", "test", "--quiet",
                                   "--label-field", "coarse")
    assert code == 0, err


def _missing_rejections(out: Path) -> list[str]:
    manifest = json.loads((out / "val.json").read_text())
    return sorted(r["source"] for r in manifest["rejected"] if "missing from SRC" in r["reason"])


def test_labelled_images_missing_from_src_are_counted_as_rejected(tmp_path, capsys):
    # A val set extracted in part: 3 of the 8 labelled images absent. Was "5 images in = 5 written"
    # without a word about the 3; now they are rejected inputs the summary names (as CUB's are).
    files = _flat_val(tmp_path / "val", 8)
    labels = {Path(name).stem: wnid(n % 2) for n, name in enumerate(sorted(files))}
    csv = write_loc_csv(tmp_path / "LOC_val_solution.csv", labels)
    gone = sorted(labels)[:3]
    for stem in gone:
        (tmp_path / "val" / f"{stem}.JPEG").unlink()
    kept = {name: data for name, data in files.items() if Path(name).stem not in gone}
    flat = make_flat_tar(tmp_path / "val.tar", kept)
    for source, out in ((tmp_path / "val", tmp_path / "from_folder"), (flat, tmp_path / "from_tar")):
        code, stdout, err = run_shards_main(capsys, "build", source, out, "--split", "val", "--labels", csv,
                                            "--quiet")
        assert code == 0, err
        assert "8 images in = 5 written + 3 rejected" in stdout, stdout
        assert _missing_rejections(out) == gone


def test_the_images_folder_of_cub_is_refused_naming_its_parent(tmp_path, capsys):
    files, _ = cub_dataset()
    root = write_files(tmp_path / "cub", files)
    images = next(root.rglob("images"))
    code, _, err = run_shards_main(capsys, "build", images, tmp_path / "out", "--split", "train", "--quiet")
    assert code == 2 and not (tmp_path / "out").exists()
    assert err.strip() == (f"error: SRC {images}: the images folder of an extracted CUB-200-2011; give the folder "
                           f"above it, {images.parent}, as SRC (--split picks the images of train_test_split.txt)")


def test_a_val_subset_with_the_full_labels_and_the_train_subsets_classes_builds(tmp_path, capsys):
    # A 2-class train subset; the full val labels (8 images of 4 classes), of which only the subset's
    # classes' images are extracted. The other classes' images are not missing, they are not wanted:
    # they were counted as inputs of classes outside --classes and the build was refused (a review).
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_imagefolder(raw / "train", 2, 2)
    assert run_shards_main(capsys, "build", raw / "train", out, "--split", "train", "--quiet")[0] == 0
    labels = {f"ILSVRC2012_val_{n:08d}": wnid(n % 4) for n in range(1, 9)}
    csv = write_loc_csv(tmp_path / "LOC_val_solution.csv", labels)
    wanted = sorted(stem for stem, label in labels.items() if label in (wnid(0), wnid(1)))
    kept = {f"{stem}.JPEG": jpeg_bytes(500 + n) for n, stem in enumerate(wanted[1:])}  # one of them missing
    write_files(tmp_path / "val", kept)
    flat = make_flat_tar(tmp_path / "val.tar", kept)
    for source in (tmp_path / "val", flat):
        code, stdout, err = run_shards_main(capsys, "build", source, out, "--split", "val", "--labels", csv,
                                            "--classes", out / "train.json", "--quiet", "--overwrite")
        assert code == 0, err
        assert "4 images in = 3 written + 1 rejected" in stdout, stdout
        assert _missing_rejections(out) == wanted[:1]
