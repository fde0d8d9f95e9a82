"""User mistakes give exit status 2 and one clear message naming the problem, never a traceback.

A few cases run the real CLI (``python -m shards``) in a subprocess; the rest call ``main`` in-process.
"""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from processes import run_process
from shard_fixtures import jpeg_bytes, make_folder_tar, make_imagefolder, make_tar_of_tars, run_shards_main, wnid

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--quiet", "--workers", "1", "--shard-size", "64kB"]


def cli(*args) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)


run_main = run_shards_main  # ``main`` in-process: (exit status, stdout, stderr)


def assert_user_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert "error" in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A small ImageFolder (48 images, 2 shards at 64kB) shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("src")
    make_imagefolder(root, num_classes=12, per_class=4)
    return root


def build_args(src, out, *extra):
    return ["build", src, out, "--split", "train", *SMALL, *extra]


# SRC mistakes -----------------------------------------------------------------------------------

def test_src_missing_subprocess(tmp_path):
    result = cli(*build_args(tmp_path / "nowhere", tmp_path / "out"))
    assert_user_error(result.returncode, result.stdout, result.stderr, "nowhere", "no such file")


def test_src_regular_non_tar_file_subprocess(tmp_path):
    (tmp_path / "notes.txt").write_text("not images\n" * 100)
    result = cli(*build_args(tmp_path / "notes.txt", tmp_path / "out"))
    assert_user_error(result.returncode, result.stdout, result.stderr, "notes.txt", "neither a folder nor a tar")


def test_src_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_main(capsys, *build_args(tmp_path / "empty", tmp_path / "out"))
    assert_user_error(code, out, err, "empty")


@pytest.mark.parametrize("split, names, suggested", [
    ("train", ("train", "val"), "train"),
    ("val", ("train", "val"), "val"),
    ("val", ("Train", "validation", "test"), "validation"),
    ("train", ("train",), "train"),  # SRC's only folder
])
def test_the_folder_above_split_folders_is_refused_naming_the_split_to_give(tmp_path, capsys, split, names,
                                                                             suggested):
    # RAW/train/<wnid>/x.JPEG given as SRC would give classes named train and val.
    for name in names:
        make_imagefolder(tmp_path / "raw" / name, num_classes=2, per_class=2)
    code, out, err = run_main(capsys, "build", tmp_path / "raw", tmp_path / "out", "--split", split, *SMALL)
    assert_user_error(code, out, err, f"give {tmp_path / 'raw' / suggested} as SRC")
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(str(tmp_path / "raw" / name) in err for name in names), err
    assert not (tmp_path / "out").exists()
    # A class merely named like a split (images inside, no folders) is still a class.
    make_imagefolder(tmp_path / "classes", num_classes=2, per_class=2)
    make_imagefolder(tmp_path / "test_class", num_classes=1, per_class=2)
    (tmp_path / "test_class" / wnid(0)).rename(tmp_path / "classes" / "test")
    code, _, err = run_main(capsys, "build", tmp_path / "classes", tmp_path / "built", "--split", "train", *SMALL)
    assert code == 0, err
    assert json.loads((tmp_path / "built" / "train.json").read_text())["classes"] == sorted([wnid(0), wnid(1),
                                                                                             "test"])
    # Nor one named like a split that holds folders, among other classes (CIFAR-100 has a class
    # "train"; images may sit in subfolders of a class). Refused by the first version of the check.
    (tmp_path / "classes" / "test").rename(tmp_path / "classes" / "train")
    (tmp_path / "classes" / "train" / "freight").mkdir()
    for image in sorted((tmp_path / "classes" / "train").glob("*.*")):
        image.rename(tmp_path / "classes" / "train" / "freight" / image.name)
    code, _, err = run_main(capsys, "build", tmp_path / "classes", tmp_path / "built2", "--split", "train", *SMALL)
    assert code == 0, err
    assert json.loads((tmp_path / "built2" / "train.json").read_text())["totals"]["samples"] == 6


def _split_tree(root: Path, splits=("train", "val")) -> dict[str, bytes]:
    """``root``'s files as a data set laid out by split: <split>/<wnid>/<image>, relative path -> bytes."""
    files = {}
    for split in splits:
        for name, data in make_imagefolder(root / split, num_classes=2, per_class=2, seed=len(split)).items():
            files[f"{split}/{name}"] = data
    return files


@pytest.mark.parametrize("top", ["imagenet/", ""])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_tar_of_split_folders_is_refused(tmp_path, capsys, top, split):
    """`tar cf imagenet.tar imagenet/` of RAW/imagenet/{train,val}/<wnid>/: read by first folders it
    built one class "imagenet" of train and val images mixed (or classes train and val), rc 0."""
    files = {top + name: data for name, data in _split_tree(tmp_path / "raw").items()}
    tar = tmp_path / "imagenet.tar"
    make_folder_tar(tar, files)
    code, out, err = run_main(capsys, "build", tar, tmp_path / "out", "--split", split, *SMALL)
    first = min(files)  # make_folder_tar writes them sorted
    assert_user_error(code, out, err, f"SRC {tar}: its images lie under {top}train/ (first: {first}), a split folder, "
                      f"not classes")
    assert err.strip().endswith(f"extract it and give its {top}{split} folder as SRC"), err
    assert not (tmp_path / "out").exists()


def test_a_folder_above_nested_split_folders_is_refused(tmp_path, capsys):
    """Kaggle's ImageNet extracted, ILSVRC/Data/CLS-LOC/{train,val,test}/ (test's images lie flat),
    given as SRC: one class "Data" of every split's images."""
    root = tmp_path / "ILSVRC"
    _split_tree(root / "Data" / "CLS-LOC")
    (root / "Data" / "CLS-LOC" / "test").mkdir()
    (root / "Data" / "CLS-LOC" / "test" / "ILSVRC2012_test_00000001.JPEG").write_bytes(jpeg_bytes(3))
    code, out, err = run_main(capsys, "build", root, tmp_path / "out", "--split", "val", *SMALL)
    assert_user_error(code, out, err, f"SRC {root}: its images lie under {root / 'Data' / 'CLS-LOC' / 'test'}/ "
                      "(first: Data/CLS-LOC/test/ILSVRC2012_test_00000001.JPEG), a split folder, not classes: give "
                      f"{root / 'Data' / 'CLS-LOC' / 'val'} as SRC")
    assert not (tmp_path / "out").exists()
    # Classes whose images sit in subfolders, one subfolder named like a split: still classes.
    classes = tmp_path / "classes"
    make_imagefolder(classes, num_classes=2, per_class=2)
    for image in sorted((classes / wnid(0)).glob("*.*")):
        (classes / wnid(0) / "test").mkdir(exist_ok=True)
        image.rename(classes / wnid(0) / "test" / image.name)
    code, _, err = run_main(capsys, "build", classes, tmp_path / "built", "--split", "train", *SMALL)
    assert code == 0, err
    assert json.loads((tmp_path / "built" / "train.json").read_text())["classes"] == [wnid(0), wnid(1)]


def test_flat_folder_without_labels(tmp_path, capsys):
    (tmp_path / "val").mkdir()
    for i in range(3):
        (tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(jpeg_bytes(i))
    code, out, err = run_main(capsys, "build", tmp_path / "val", tmp_path / "out", "--split", "val", *SMALL)
    assert_user_error(code, out, err, "--labels")


# OUT state: complete, interrupted, resumed --------------------------------------------------------

def test_complete_build_again_needs_overwrite_or_resume_subprocess(src, tmp_path):
    out = tmp_path / "out"
    assert cli(*build_args(src, out)).returncode == 0
    first = (out / "train.json").read_bytes()

    again = cli(*build_args(src, out))
    assert_user_error(again.returncode, again.stdout, again.stderr, "--overwrite")
    assert (out / "train.json").read_bytes() == first

    resumed = cli(*build_args(src, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "nothing to do" in resumed.stdout and "Traceback" not in resumed.stdout + resumed.stderr

    replaced = cli(*build_args(src, out, "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert "Traceback" not in replaced.stdout + replaced.stderr
    assert json.loads((out / "train.json").read_text())["totals"]["samples"] == 48


def test_started_part_again_needs_resume(src, tmp_path, capsys):
    out = tmp_path / "out"
    part0 = build_args(src, out, "--num-parts", "2", "--part-id", "0")
    code, _, err = run_main(capsys, *part0)
    assert code == 0, err
    assert list(out.glob("train.part-0000-of-0002.json"))

    code, out_text, err = run_main(capsys, *part0)
    assert_user_error(code, out_text, err, "--resume")

    code, _, err = run_main(capsys, *part0, "--resume")
    assert code == 0, err


def test_resume_with_another_seed_names_seed(src, tmp_path, capsys):
    out = tmp_path / "out"
    part0 = build_args(src, out, "--num-parts", "2", "--part-id", "0")
    assert run_main(capsys, *part0)[0] == 0
    code, out_text, err = run_main(capsys, *part0, "--resume", "--seed", "7")
    assert_user_error(code, out_text, err, "seed", "--resume")


def test_resume_with_another_shard_size_names_the_option_and_the_count_it_changes(src, tmp_path, capsys):
    out = tmp_path / "out"
    part0 = build_args(src, out, "--num-parts", "2", "--part-id", "0")  # 64kB: 2 shards of the 48 images
    assert run_main(capsys, *part0)[0] == 0
    code, out_text, err = run_main(capsys, *part0, "--resume", "--shard-size", "32MB")
    assert_user_error(code, out_text, err,
                      "(--shard-size: 64000 -> 32000000, num_shards: 2 -> 1 (follows --shard-size))")


def test_resume_of_complete_build_with_another_seed_names_seed(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *build_args(src, out))[0] == 0
    code, out_text, err = run_main(capsys, *build_args(src, out, "--resume", "--seed", "7"))
    assert_user_error(code, out_text, err, "seed")


def test_resume_and_overwrite_together_is_an_argparse_error(src, tmp_path, capsys):
    code, out, err = run_main(capsys, *build_args(src, tmp_path / "out", "--resume", "--overwrite"))
    assert_user_error(code, out, err, "--resume", "--overwrite")
    assert not (tmp_path / "out").exists()


# Bad flag values --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--part-id", "3", "--num-parts", "2"], "--part-id must be in [0, --num-parts=2), got 3"),
    (["--part-id", "1"], "--part-id must be in [0, --num-parts=1), got 1 (give --num-parts: how many parts"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--seed", str(2**63)], "--seed must be in [0, 2**63)"),
    (["--num-parts", "0"], "--num-parts"),
    (["--quality", "0"], "--quality"),
    (["--quality", "101"], "--quality"),
    (["--shard-size", "banana"], "--shard-size"),
    (["--shard-size", "10kB"], "--shard-size"),
    (["--workers", "0"], "--workers"),
    (["--resize-short", "0"], "--resize-short"),
    (["--seed", "one"], "--seed"),
    (["--shard-size", "9" * 400], "--shard-size"),
])
def test_bad_flag_value_names_the_flag(src, tmp_path, capsys, flags, named):
    # SMALL comes first so that the flag under test is the value argparse keeps.
    code, out, err = run_main(capsys, "build", src, tmp_path / "out", "--split", "train", *SMALL, *flags)
    assert_user_error(code, out, err, named)
    assert not list((tmp_path / "out").glob("train*"))


def test_bad_flag_value_subprocess(src, tmp_path):
    result = cli(*build_args(src, tmp_path / "out", "--shard-size", "banana"))
    assert_user_error(result.returncode, result.stdout, result.stderr, "--shard-size", "banana")


# verify / inspect / merge without a build -------------------------------------------------------

@pytest.mark.parametrize("command", ["verify", "inspect", "merge"])
@pytest.mark.parametrize("split", [None, "train"])
def test_command_on_folder_without_manifest(tmp_path, capsys, command, split):
    (tmp_path / "out").mkdir()
    args = [command, tmp_path / "out"] + (["--split", split] if split else [])
    code, out, err = run_main(capsys, *args)
    assert_user_error(code, out, err, str(tmp_path / "out"))
    assert "manifest" in err or ".json" in err


@pytest.mark.parametrize("command", ["verify", "inspect", "merge"])
def test_command_on_a_missing_folder_or_a_file(tmp_path, capsys, command):
    """A folder that is not there, and a manifest given instead of its folder, are named as such."""
    code, out, err = run_main(capsys, command, tmp_path / "nowhere")
    assert_user_error(code, out, err, f"{tmp_path / 'nowhere'}: no such folder")
    (tmp_path / "val.json").write_text("{}")
    code, out, err = run_main(capsys, command, tmp_path / "val.json")
    assert_user_error(code, out, err, f"{tmp_path / 'val.json'}: a file, not a shards folder (give the folder "
                      "holding it)")


def test_an_empty_folder_is_named_as_no_build(tmp_path, capsys):
    code, out, err = run_main(capsys, "inspect", tmp_path)
    assert_user_error(code, out, err, f"{tmp_path}: no manifest (train.json, val.json, test.json): not a folder "
                      "`python -m shards build` wrote")
    code, out, err = run_main(capsys, "merge", tmp_path)
    assert_user_error(code, out, err, f"{tmp_path}: no part manifest (train.part-*.json, val.part-*.json, "
                      "test.part-*.json): merge joins the parts of a build run with --num-parts")


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_a_parts_build_not_merged_yet_points_to_merge(src, tmp_path, capsys, command):
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "build", src, out, "--split", "train", "--num-parts", "2", "--part-id", "0",
                            *SMALL)
    assert code == 0, err
    code, printed, err = run_main(capsys, command, out)
    assert_user_error(code, printed, err, f"{out}: no manifest (train.json, val.json, test.json), but part "
                      f"manifests of train: join them first with python -m shards merge {out}")


def test_verify_without_manifest_subprocess(tmp_path):
    result = cli("verify", tmp_path)
    assert_user_error(result.returncode, result.stdout, result.stderr, ".json")


# --strict ---------------------------------------------------------------------------------------

def test_strict_stops_at_a_bad_input_naming_it(tmp_path, capsys):
    make_imagefolder(tmp_path / "src", num_classes=2, per_class=3)
    bad = tmp_path / "src" / "n00000000" / "broken.JPEG"
    bad.write_bytes(b"")
    code, out, err = run_main(capsys, *build_args(tmp_path / "src", tmp_path / "out", "--strict"))
    assert_user_error(code, out, err, "n00000000/broken.JPEG", "--strict")
    assert "empty" in err.lower()
    assert not (tmp_path / "out" / "train.json").exists()
    # Without --strict the same source builds and lists the input as rejected.
    code, _, err = run_main(capsys, *build_args(tmp_path / "src", tmp_path / "out2"))
    assert code == 0, err
    rejected = json.loads((tmp_path / "out2" / "train.json").read_text())["rejected"]
    assert [r["source"] for r in rejected] == ["n00000000/broken.JPEG"]


# OUT mistakes found while writing these tests ---------------------------------------------------

def test_out_is_a_regular_file(src, tmp_path):
    (tmp_path / "out").write_text("I am a file")
    result = cli(*build_args(src, tmp_path / "out"))
    assert_user_error(result.returncode, result.stdout, result.stderr, "out")


def test_out_inside_src(tmp_path):
    make_imagefolder(tmp_path / "src", num_classes=3, per_class=2)
    out = tmp_path / "src" / "shards"
    first = cli(*build_args(tmp_path / "src", out))
    if first.returncode == 2:  # refusing OUT inside SRC up front is a fine answer
        assert_user_error(first.returncode, first.stdout, first.stderr, "OUT")
        return
    assert first.returncode == 0, first.stderr
    again = cli(*build_args(tmp_path / "src", out, "--overwrite"))
    assert "Traceback" not in again.stdout + again.stderr
    assert again.returncode == 0, again.stderr
    classes = sorted(p.name for p in (tmp_path / "src").iterdir() if p.name != "shards")
    assert json.loads((out / "train.json").read_text())["classes"] == classes


# --help -----------------------------------------------------------------------------------------

def test_build_help_mentions_every_flag_and_an_example():
    result = cli("build", "--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    for flag in ["--split", "--labels", "--classes", "--shard-size", "--workers", "--resize-short", "--quality",
                 "--seed", "--num-parts", "--part-id", "--resume", "--overwrite", "--strict", "--quiet"]:
        assert flag in text, flag
    assert "example" in text.lower() and "python -m shards build " in text


def test_classes_manifest_without_a_class_list(src, tmp_path, capsys):
    (tmp_path / "train.json").write_text('{"classes": 5}')
    code, out, err = run_main(capsys, *build_args(src, tmp_path / "out", "--classes", tmp_path / "train.json"))
    assert_user_error(code, out, err, "--classes", "train.json")


def test_classes_given_a_labels_csv_says_what_it_takes(src, tmp_path, capsys):
    (tmp_path / "lab.csv").write_text("ImageId,PredictionString\nimg1,n01 1 2 3 4\n")
    code, out, err = run_main(capsys, *build_args(src, tmp_path / "out", "--classes", tmp_path / "lab.csv"))
    assert_user_error(code, out, err, f"--classes {tmp_path / 'lab.csv'}: not a shard manifest; --classes takes the "
                                      "train.json that `python -m shards build` wrote")
    assert "build the shards again" not in err



@pytest.mark.parametrize("built", [True, False])
def test_classes_given_a_folder_names_the_manifest_to_give(src, tmp_path, capsys, built):
    # The train build's OUT itself: the advice was to build the shards again.
    train = tmp_path / "train_out"
    if built:
        assert run_main(capsys, *build_args(src, train))[0] == 0
    else:
        train.mkdir()
    code, out, err = run_main(capsys, *build_args(src, tmp_path / "out", "--classes", train))
    wanted = f"give {train / 'train.json'}" if built else "give the train.json in the train build's OUT"
    assert_user_error(code, out, err, f"--classes {train}: a folder; --classes takes a manifest file: {wanted}")
    assert "build the shards again" not in err

def test_imagefolder_whose_class_folders_are_all_empty(tmp_path, capsys):
    for name in ("n01", "n02"):
        (tmp_path / "src" / name).mkdir(parents=True)
    code, out, err = run_main(capsys, "build", tmp_path / "src", tmp_path / "out", "--split", "train", "--quiet")
    assert_user_error(code, out, err, "no files")


@pytest.mark.parametrize("into_header", [0, 100], ids=["at_a_member", "inside_a_header"])
def test_a_tar_cut_short_is_refused_not_built_in_part(tmp_path, capsys, into_header):
    # tarfile ends quietly at a plain end of file: without the end-of-archive check, 6 of the 10
    # images were built and the build said it was complete.
    whole = make_folder_tar(tmp_path / "whole.tar", make_imagefolder(tmp_path / "images", num_classes=2, per_class=5))
    with tarfile.open(whole) as archive:
        seventh = archive.getmembers()[6].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: seventh + into_header])
    code, out, err = run_main(capsys, "build", cut, tmp_path / "out", "--split", "train", *SMALL)
    assert_user_error(code, out, err, f"SRC {cut} ends without tar's end-of-archive marker", "after 6 images")
    assert not (tmp_path / "out" / "train.json").exists()
    # The whole archive builds all 10.
    assert run_main(capsys, "build", whole, tmp_path / "out", "--split", "train", *SMALL)[0] == 0
    assert json.loads((tmp_path / "out" / "train.json").read_text())["class_counts"] == [5, 5]


def test_a_tar_with_a_damaged_header_is_named_damaged_not_cut_short(tmp_path, capsys):
    """A bit flipped in the seventh member's header: tarfile stops there as quietly as at a cut."""
    whole = make_folder_tar(tmp_path / "whole.tar", make_imagefolder(tmp_path / "images", num_classes=2, per_class=5))
    with tarfile.open(whole) as archive:
        seventh = archive.getmembers()[6].offset
    data = bytearray(whole.read_bytes())
    data[seventh + 3] ^= 0x01  # in the name field: the checksum no longer matches
    flipped = tmp_path / "flipped.tar"
    flipped.write_bytes(bytes(data))
    code, out, err = run_main(capsys, "build", flipped, tmp_path / "out", "--split", "train", *SMALL)
    assert_user_error(code, out, err, f"SRC {flipped} has a damaged tar header (its checksum fails) after 6 images: "
                      "the archive is damaged; get it again")
    assert not (tmp_path / "out" / "train.json").exists()


def test_a_class_tar_cut_short_is_rejected_with_its_lost_images_named(tmp_path, capsys):
    files = make_imagefolder(tmp_path / "images", num_classes=2, per_class=4)
    outer = make_tar_of_tars(tmp_path / "whole.tar", files)
    # The same outer tar with the second class tar cut after its first image (no end marker).
    with tarfile.open(outer) as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive}
    name = sorted(members)[1]
    with tarfile.open(fileobj=io.BytesIO(members[name])) as inner:
        second = inner.getmembers()[1].offset
    members[name] = members[name][:second]
    make_folder_tar(tmp_path / "cut.tar", members)
    code, out, err = run_main(capsys, "build", tmp_path / "cut.tar", tmp_path / "out", "--split", "train", *SMALL)
    assert code == 0, err  # other inputs build; the damaged one is listed, as any rejected input
    manifest = json.loads((tmp_path / "out" / "train.json").read_text())
    assert manifest["class_counts"] == [4, 1] and manifest["totals"]["rejected"] == 1
    (rejected,) = manifest["rejected"]
    assert rejected["source"] == name
    assert f"class tar {name} ends without tar's end-of-archive marker" in rejected["reason"]


@pytest.mark.parametrize("damage", ["tar deleted", "index cut short"])
def test_inspect_of_a_damaged_shard_is_one_error_naming_verify(src, tmp_path, capsys, damage):
    out = tmp_path / "out"
    assert run_main(capsys, "build", src, out, "--split", "train", *SMALL)[0] == 0
    if damage == "tar deleted":
        (out / "train-000000.tar").unlink()
    else:
        index = out / "train-000000.idx"
        index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    code, stdout, err = run_main(capsys, "inspect", out)
    assert_user_error(code, stdout, err, f"python -m shards verify {out}` names it")
    assert len(err.strip().splitlines()) == 1


def test_a_manifest_given_as_the_shards_folder_is_named(tmp_path):
    """What training (data.shards) and evaluation (--shards) read through: the file is named, not
    'OUT/val.json/val.json: no manifest'."""
    from shards.errors import ShardsError
    from shards.manifest import load_manifest

    (tmp_path / "val.json").write_text("{}")
    with pytest.raises(ShardsError, match=r"val\.json: a file, not a shards folder \(give the folder holding it\)$"):
        load_manifest(tmp_path / "val.json", "val")


# --dry-run: the checks a build makes before it reads an image, nothing written -----------------

def test_dry_run_says_a_build_can_go_ahead_and_writes_nothing(src, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = run_main(capsys, *build_args(src, out, "--num-parts", "4", "--part-id", "2", "--dry-run"))
    assert (code, err) == (0, "")
    assert printed == f"ok: SRC {src} (imagefolder), OUT {out}: the train build part 2 of 4 can go ahead\n"
    assert not out.exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_parts_without_a_part_id_are_refused(src, tmp_path, capsys, dry_run):
    # It built part 0 (exit 0, "this part wrote no sample"): every task of an array that forgot
    # --part-id would have built the same part.
    out = tmp_path / "out"
    code, printed, err = run_main(capsys, *build_args(src, out, "--num-parts", "3", *dry_run))
    assert_user_error(code, printed, err, "--num-parts 3 needs --part-id I (0..2): the part this command builds "
                                          "(in a Slurm array: --part-id $SLURM_ARRAY_TASK_ID)")
    assert not out.exists()


def test_dry_run_refuses_what_the_build_would(src, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = run_main(capsys, *build_args(src, out, "--dry-run", "--label-field", "fine"))
    assert_user_error(code, printed, err, "--label-field is for the CIFAR archives")
    # An unfinished build (a part of two finished; the other's shards not yet), as a killed one leaves it.
    code, _, err = run_main(capsys, *build_args(src, out, "--num-parts", "2", "--part-id", "0"))
    assert code == 0, err
    for extra in ((), ("--num-parts", "2", "--part-id", "1")):
        code, printed, err = run_main(capsys, *build_args(src, out, *extra, "--dry-run"))
        assert_user_error(code, printed, err, f"{out} holds an unfinished train build: pass --resume to finish it "
                                              "or --overwrite to start again")
    code, printed, err = run_main(capsys, *build_args(src, out, "--num-parts", "2", "--part-id", "1", "--resume",
                                                      "--dry-run"))
    assert code == 0 and printed.startswith("ok: "), err
    # A complete build: only --overwrite (or --resume, which then has nothing to do) goes ahead.
    code, _, err = run_main(capsys, *build_args(src, out, "--num-parts", "2", "--part-id", "1", "--resume"))
    assert code == 0, err
    assert run_main(capsys, "merge", out)[0] == 0
    code, printed, err = run_main(capsys, *build_args(src, out, "--num-parts", "2", "--part-id", "0", "--dry-run"))
    assert_user_error(code, printed, err, f"{out} already holds a complete train build (train.json): pass "
                                          "--overwrite to replace it")
    assert run_main(capsys, *build_args(src, out, "--overwrite", "--dry-run"))[0] == 0
    # Shards some other tool wrote, with no build record.
    other = tmp_path / "other"
    other.mkdir()
    (other / "train-000000.tar").write_bytes(b"")
    code, printed, err = run_main(capsys, *build_args(src, other, "--dry-run"))
    assert_user_error(code, printed, err, f"{other} holds train shards from another tool or an older build")


def test_a_reader_that_stops_early_gets_no_traceback(demo_shards):
    """`python -m shards inspect OUT | head -3`: the pipe closed under inspect ended in a
    BrokenPipeError traceback. Here the reader is gone before the first line: exit 141 (SIGPIPE's
    status, as a shell tool's), nothing on stderr."""
    import os
    import signal

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run_process([sys.executable, "-m", "shards", "inspect", str(demo_shards)], timeout=120,
                           stdout=write_end, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == b"", done.stderr[-2000:]


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_a_stop_of_a_report_gives_no_resume_hint_and_sigterm_ends_as_ctrl_c_does(tmp_path, capsys, monkeypatch,
                                                                                command):
    # "run the same command with --resume" was printed for any command, and only for Ctrl-C: a
    # SIGTERM (a scheduler's) killed the process without a word.
    import os
    import signal

    from shards import cli

    make_imagefolder(tmp_path / "tree", num_classes=2, per_class=3)
    assert cli.main(["build", str(tmp_path / "tree"), str(tmp_path / "out"), "--split", "train", "--quiet"]) == 0
    before = signal.getsignal(signal.SIGTERM)

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(cli, "verify_shards" if command == "verify" else "inspect_shards", stopped)
    capsys.readouterr()
    assert cli.main([command, str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_a_callers_own_sigterm_handler_stays_in_charge(tmp_path, capsys, monkeypatch):
    # The trainer builds the demo's shards through shards.cli.main with its own stop handler set:
    # a SIGTERM then was the shards' "interrupted; ... --resume" and exit 143, the trainer's stop
    # never told (review).
    import os
    import signal

    from shards import cli

    make_imagefolder(tmp_path / "tree", num_classes=2, per_class=3)
    assert cli.main(["build", str(tmp_path / "tree"), str(tmp_path / "out"), "--split", "train", "--quiet"]) == 0
    told = []

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli, "verify_shards", signalled)
    before = signal.signal(signal.SIGTERM, lambda signum, frame: told.append(signum))
    try:
        assert cli.main(["verify", str(tmp_path / "out")]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    assert told == [signal.SIGTERM]
