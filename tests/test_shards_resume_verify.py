"""Crash safety (SIGKILL then --resume gives the uninterrupted bytes) and `verify`."""

import hashlib
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from processes import run_process
from shard_fixtures import jpeg_bytes, make_imagefolder, make_tar_of_tars, wnid
from shard_readers import manifest
from shards.cli import main
from shards.manifest import read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]


def slow_tree(root: Path, classes: int = 8, per_class: int = 40) -> dict[str, bytes]:
    """Photos big enough that re-encoding takes a few seconds in all."""
    files = {}
    for c in range(classes):
        (root / wnid(c)).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            data = jpeg_bytes(c * 1000 + n, size=(480, 360))
            (root / wnid(c) / f"{n}.JPEG").write_bytes(data)
            files[f"{wnid(c)}/{n}.JPEG"] = data
    return files


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "shards", *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_resume_after_sigkill_is_byte_identical(tmp_path, layout, start_process):
    files = slow_tree(tmp_path / "tree")
    src = tmp_path / "tree" if layout == "folder" else make_tar_of_tars(tmp_path / "src.tar", files)
    flags = ["--split", "train", "--quiet", "--workers", "1", "--resize-short", "200", "--shard-size", "64kB"]
    assert run_process(cli("build", src, tmp_path / "whole", *flags), cwd=REPO, timeout=600).returncode == 0

    out = tmp_path / "killed"
    records = out / ".build" / "train" / "shards"
    process = start_process(cli("build", src, out, *flags), cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "train.json").exists(), "the build finished before it could be killed"
    assert len(list(records.glob("*.json"))) >= 2
    for command in ("verify", "inspect"):  # what a user runs first on a folder of unknown state
        looked = run_process(cli(command, out), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert looked.returncode == 2 and looked.stderr.strip() == (
            f"error: {out}: no manifest (train.json, val.json, test.json): the build of train there has not "
            "finished (stopped, or still running); the same build command with --resume goes on from its "
            "finished shards"), looked.stderr

    again = run_process(cli("build", src, out, *flags), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert run_process(cli("build", src, out, *flags, "--resume"), cwd=REPO, timeout=600).returncode == 0
    assert snapshot(out) == snapshot(tmp_path / "whole")
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_kill_during_a_shard_leaves_no_complete_looking_shard(tmp_path):
    # The writer's temporary files are what a kill leaves behind; resume replaces them.
    make_imagefolder(tmp_path / "tree", num_classes=3, per_class=30)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet",
                 "--shard-size", "64kB", "--num-parts", "2", "--part-id", "0"]) == 0
    first = manifest(out, "train.part-0000-of-0002")["shards"][0]["name"]
    (out / f".tmp-{first}").write_bytes(b"half a shard")
    (out / first).unlink()
    assert main(["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet",
                 "--shard-size", "64kB", "--num-parts", "2", "--part-id", "0", "--resume"]) == 0
    assert (out / first).exists()



def test_resume_removes_the_temporary_files_a_kill_left_of_its_own_shards_only(tmp_path):
    # An atomic write's temporary file carries its writer's pid: no later run wrote over it, and
    # --resume left one more behind after each kill (walkthrough). Part 1 may be running meanwhile.
    make_imagefolder(tmp_path / "tree", num_classes=3, per_class=30)
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet", "--shard-size", "64kB",
            "--num-parts", "2"]
    assert main([*args, "--part-id", "0"]) == 0
    shards = manifest(out, "train.part-0000-of-0002")["shards"]
    first, last = shards[0]["name"].removesuffix(".tar"), shards[-1]["name"].removesuffix(".tar")
    (out / f"{first}.tar").unlink()
    records = out / ".build" / "train" / "shards"
    own = [out / f".tmp-{first}.idx.4242.139827058240384", out / f".tmp-{last}.tar",
           records / f".tmp-{first}.json.4242.1"]
    others = [out / f".tmp-train-{int(last[-6:]) + 1:06d}.idx.77.1", out / ".tmp-val-000000.idx.1.1"]
    for path in own + others:
        path.write_bytes(b"")
    assert main([*args, "--part-id", "0", "--resume"]) == 0
    assert (out / f"{first}.tar").exists()
    assert [path for path in own if path.exists()] == []
    assert [path for path in others if path.exists()] == others

@pytest.fixture
def built(tmp_path):
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=4, per_class=10)
    # Passes the header check (markers intact) but its scan uses undefined Huffman tables.
    data = bytearray(jpeg_bytes(99, size=(64, 48)))
    sos = data.index(b"\xff\xda")
    for c in range(data[sos + 4]):
        data[sos + 6 + 2 * c] = 0x33
    (tree / wnid(0) / "broken.JPEG").write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["build", str(tree), str(out), "--split", "train", "--quiet", "--shard-size", "64kB"]) == 0
    return out


def test_verify_passes_a_good_build_and_decode_finds_hidden_damage(built, capsys):
    assert main(["verify", str(built), "--quiet"]) == 0
    assert main(["verify", str(built), "--quiet", "--decode"]) == 1
    assert "broken" in capsys.readouterr().out


def test_verify_names_a_corrupted_shard(built, capsys):
    shard = manifest(built)["shards"][-1]["name"]
    with open(built / shard, "r+b") as file:
        file.seek(700)
        byte = file.read(1)
        file.seek(700)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert main(["verify", str(built), "--quiet"]) == 1
    assert f"BAD {shard}: sha256" in capsys.readouterr().out


def test_verify_finds_a_stale_index(built, capsys):
    shards = manifest(built)["shards"]
    assert len(shards) >= 2
    (built / shards[0]["index"]).write_text((built / shards[1]["index"]).read_text())
    assert main(["verify", str(built), "--quiet"]) == 1
    assert f"BAD {shards[0]['name']}: index does not match" in capsys.readouterr().out


def _cut_index(built, shard, lines):
    (built / shard["index"]).write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # the header, a line, a bit
    return f"unreadable: the index lists 2 samples where its header says {len(lines) - 1}: cut short or damaged"


def _cut_tar(built, shard, lines):
    """The tar cut after its first member, the manifest's size and sha256 made to match it."""
    import hashlib
    import json
    import tarfile

    tar = built / shard["name"]
    with tarfile.open(tar) as archive:
        second = archive.getmembers()[1]
    cut = tar.read_bytes()[:second.offset]
    tar.write_bytes(cut)
    record = json.loads((built / "train.json").read_text())
    entry = next(entry for entry in record["shards"] if entry["name"] == shard["name"])
    entry.update(bytes=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    (built / "train.json").write_text(json.dumps(record))
    members = sum(len(line.split()) // 4 for line in lines[1:])
    return (f"the tar holds 1 member where its index lists {members}: the tar cut short (or the index of "
            "another tar)")


def _empty_index(built, shard, lines):
    (built / shard["index"]).write_text("")
    return "unreadable: the index is empty"


def _not_an_index(built, shard, lines):
    (built / shard["index"]).write_text("garbage\n")
    return "unreadable: not a v1.2 index: its first line is 'garbage'"


@pytest.mark.parametrize("damage", [_cut_index, _empty_index, _not_an_index, _cut_tar],
                         ids=["index cut short", "empty index", "not an index", "tar cut at a member"])
def test_verify_says_which_file_was_cut_short(built, capsys, damage):
    """An index cut short read "header 'v1.2 77' should be 'v1.2 4' for the 4 lines below it", an
    empty one "header '' should be 'v1.2 0'", and a tar cut at a member's end (its manifest entry
    made to match) "index does not match the tar at member 30 (None): stale index?" (walkthrough)."""
    shard = manifest(built)["shards"][0]
    problem = damage(built, shard, (built / shard["index"]).read_text().splitlines())
    assert main(["verify", str(built), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert f"BAD {shard['name']}: {problem}\n" in out, out


def test_inspect_reports_counts_and_shuffle(built, capsys):
    assert main(["inspect", str(built)]) == 0
    text = capsys.readouterr().out
    assert "41 samples" in text and "4 classes" in text and "uniformly random order gives" in text


def test_inspect_of_equal_classes_says_so(tmp_path, capsys):
    """Every class the same size: "min 3 (n00000000) ... max 3 (n00000000)" named one class as both."""
    out = _clean_build(tmp_path)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "  images per class: 3 in every class\n" in capsys.readouterr().out


def _clean_build(tmp_path) -> Path:
    make_imagefolder(tmp_path / "tree", num_classes=2, per_class=3)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet"]) == 0
    return out


def _patch_member(out: Path, extension: str, data: bytes) -> str:
    """Overwrite the first ``extension`` member of the first shard in place with ``data`` (no
    longer than it: a JPEG padded by a COM segment, a label digit for a digit) and record the
    new sha256 in the manifest, as a build that wrote it would: only the sample's content is wrong."""
    record = manifest(out)["shards"][0]
    with tarfile.open(out / record["name"]) as archive:
        member = next(m for m in archive if m.name.endswith(f".{extension}"))
    if len(data) != member.size:
        padding = member.size - len(data) - 4  # a COM segment (FF FE, 2-byte length) after SOI
        assert data[:2] == b"\xff\xd8" and 0 <= padding < 65534
        data = data[:2] + b"\xff\xfe" + (padding + 2).to_bytes(2, "big") + b"\0" * padding + data[2:]
    assert len(data) == member.size
    with open(out / record["name"], "r+b") as file:
        file.seek(member.offset_data)
        file.write(data)
    written = read_manifest(out / "train.json")
    written["shards"][0]["sha256"] = hashlib.sha256((out / record["name"]).read_bytes()).hexdigest()
    write_manifest(out / "train.json", written)
    return member.name


def test_verify_decode_refuses_a_greyscale_jpeg(tmp_path, capsys):
    # The loaders take 3-channel images: a mode L JPEG decodes but is not an RGB JPEG.
    out = _clean_build(tmp_path)
    assert main(["verify", str(out), "--quiet", "--decode"]) == 0
    name = _patch_member(out, "jpg", jpeg_bytes(5, size=(8, 8), mode="L"))
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet"]) == 0  # sizes, sha256 and index still agree
    assert main(["verify", str(out), "--quiet", "--decode"]) == 1
    assert f"{name}: JPEG L, not an RGB JPEG" in capsys.readouterr().out


def test_verify_refuses_a_label_equal_to_the_class_count(tmp_path, capsys):
    out = _clean_build(tmp_path)
    assert manifest(out)["num_classes"] == 2
    name = _patch_member(out, "cls", b"2")  # labels are 0 and 1: 2 is one past the last class
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet"]) == 1
    assert f"{name}: label b'2' is not in [0, 2)" in capsys.readouterr().out


def test_resume_refuses_a_source_folder_whose_files_changed(tmp_path, capsys):
    """Files moved between classes keep SRC's size and file count (and so the shard count): the
    finished shards kept images no longer there and the rest went on from the new listing, a
    build of neither listing that `verify` passed."""
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=3, per_class=12)
    out = tmp_path / "out"
    args = ["build", str(tree), str(out), "--split", "train", "--quiet", "--shard-size", "64kB", "--num-parts", "2"]
    assert main([*args, "--part-id", "0"]) == 0  # an unfinished build: part 1's shards are not written yet
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # The last files of class 2 moved to class 1 under names sorted after its own: the first
    # images, which the size estimate reads, stay the same.
    moved = sorted((tree / wnid(2)).iterdir())[-3:]
    for path in moved:
        path.rename(tree / wnid(1) / f"zz-{path.name}")
    capsys.readouterr()
    for part in ("0", "1"):
        assert main([*args, "--part-id", part, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "SRC's files (added, removed, moved or resized since): '36 files, digest " in err, err
        assert "num_shards" not in err, err  # the listing is what tells the change here
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    for path in moved:  # put back: the build goes on, to what one uninterrupted build writes
        (tree / wnid(1) / f"zz-{path.name}").rename(path)
    assert main([*args, "--part-id", "1", "--resume"]) == 0 and main(["merge", str(out)]) == 0
    assert main(["build", str(tree), str(tmp_path / "whole"), "--split", "train", "--quiet", "--shard-size",
                 "64kB"]) == 0
    assert manifest(out)["shards"] == manifest(tmp_path / "whole")["shards"]


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_build_leaves_no_worker_running(tmp_path, start_process, kill):
    # Its --workers processes and the forkserver ran on for good, reparented to init (they hold
    # the write ends of their own queue and of the forkserver's "alive" pipe).
    from processes import TAG_VARIABLE, processes_with

    slow_tree(tmp_path / "tree", classes=6, per_class=30)
    out = tmp_path / "out"
    process = start_process(cli("build", tmp_path / "tree", out, "--split", "train", "--quiet", "--workers", "2",
                                "--resize-short", "200", "--shard-size", "64kB"), cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    records = out / ".build" / "train" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(records.glob("*.json")):
        time.sleep(0.01)
    assert len(processes_with(TAG_VARIABLE, process.test_tag)) >= 3, "no workers running to be left behind"
    process.send_signal(kill)
    process.wait(timeout=60)
    assert not (out / "train.json").exists(), "the build finished before it could be killed"
    if kill == signal.SIGTERM:  # a scheduler's stop ends as Ctrl-C does: it died with no hint, semaphores "leaked"
        assert (process.returncode, process.stderr.read()) == (
            128 + signal.SIGTERM, "interrupted; run the same command with --resume to finish\n")
    deadline = time.monotonic() + 60  # a hang guard: the workers end within a moment
    while time.monotonic() < deadline and processes_with(TAG_VARIABLE, process.test_tag):
        time.sleep(0.1)
    assert processes_with(TAG_VARIABLE, process.test_tag) == []


def _shuffled_build(tmp_path, capsys) -> Path:
    make_imagefolder(tmp_path / "tree", num_classes=4, per_class=20)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet",
                 "--shard-size", "64kB"]) == 0
    assert len(manifest(out)["shards"]) >= 3
    capsys.readouterr()
    return out


def _spoil(out: Path, change) -> None:
    written = read_manifest(out / "train.json")
    change(written)
    write_manifest(out / "train.json", written)


def test_verify_counts_the_samples_it_checked_and_finds_a_shard_left_out_of_the_list(tmp_path, capsys):
    out = _shuffled_build(tmp_path, capsys)
    shards = manifest(out)["shards"]
    assert main(["verify", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == f"train: OK: {len(shards)} shards, 80 samples checked\n"
    dropped = shards[1]
    _spoil(out, lambda m: m["shards"].remove(dropped))
    assert main(["verify", str(out), "--quiet"]) == 1
    left = 80 - dropped["samples"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"BAD train.json: lists {len(shards) - 1} shards, its build wrote {len(shards)} (not "
                         f"listed: {dropped['name']})",
                         f"BAD train.json: its totals say 80 samples, its shards hold {left}"]
    # The dropped shard's labels are not in the listed ones: the per-class counts differ too.
    assert lines[2].startswith("BAD train.json: its class_counts are not the labels in its shards (class ")
    assert lines[3:] == [f"note: {dropped['name']} is not in train.json (left from another build?)",
                         f"train: 3 BAD: {len(shards) - 1} shards, {left} samples checked"]


def test_verify_finds_manifest_sums_that_are_not_its_shards(tmp_path, capsys):
    out = _shuffled_build(tmp_path, capsys)
    _spoil(out, lambda m: m["totals"].update(samples=81))
    assert main(["verify", str(out), "--quiet"]) == 1
    assert "BAD train.json: its totals say 81 samples, its shards hold 80\n" in capsys.readouterr().out
    _spoil(out, lambda m: m["totals"].update(samples=80))
    assert manifest(out)["class_counts"] == [20, 20, 20, 20]  # make_imagefolder's, counted by hand
    _spoil(out, lambda m: m.update(class_counts=[20, 25, 20, 20]))
    assert main(["verify", str(out), "--quiet"]) == 1
    assert capsys.readouterr().out == ("BAD train.json: its class_counts are not the labels in its shards "
                                       f"(class 1: 25 there, 20 in the shards)\n"
                                       f"train: 1 BAD: {len(manifest(out)['shards'])} shards, 80 samples checked\n")


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_a_build_begun_by_the_previous_version_resumes_and_merges(tmp_path, capsys, layout):
    """Its plan.json and part manifests have no source_files: every --resume was refused, blaming
    SRC's files ("'(absent)' -> None" for a tar), and so was --resume of its complete build."""
    files = make_imagefolder(tmp_path / "tree", num_classes=3, per_class=12)
    src = tmp_path / "tree" if layout == "folder" else make_tar_of_tars(tmp_path / "src.tar", files)
    out = tmp_path / "out"
    args = ["build", str(src), str(out), "--split", "train", "--quiet", "--shard-size", "64kB", "--num-parts", "2"]
    assert main([*args, "--part-id", "0"]) == 0

    def as_the_previous_version_wrote_it(path, field=None):
        data = json.loads(path.read_text())
        (data[field] if field else data).pop("source_files", None)
        path.write_text(json.dumps(data))

    as_the_previous_version_wrote_it(out / ".build" / "train" / "plan.json")
    as_the_previous_version_wrote_it(out / "train.part-0000-of-0002.json", "build")
    capsys.readouterr()
    assert main([*args, "--part-id", "1", "--resume"]) == 0, capsys.readouterr().err
    assert main(["merge", str(out)]) == 0, capsys.readouterr().err
    as_the_previous_version_wrote_it(out / "train.json", "build")
    assert main([*args, "--part-id", "0", "--resume"]) == 0  # complete: nothing to do
    assert "the build is already complete; nothing to do" in capsys.readouterr().out
    assert main(["build", str(src), str(tmp_path / "whole"), "--split", "train", "--quiet", "--shard-size",
                 "64kB"]) == 0
    assert manifest(out)["shards"] == manifest(tmp_path / "whole")["shards"]


def test_verify_names_class_counts_of_another_length(tmp_path, capsys):
    # A StopIteration traceback: the first difference was looked for in the shorter list only.
    out = _shuffled_build(tmp_path, capsys)
    _spoil(out, lambda m: m["class_counts"].append(0))
    assert main(["verify", str(out), "--quiet"]) == 1
    assert "BAD train.json: its class_counts count 5 classes, its class list 4\n" in capsys.readouterr().out


def test_merge_compares_parts_of_other_listings_whatever_part_lacks_the_field(tmp_path, capsys):
    # With part 0 of an earlier version (no source_files) as the only reference, parts 1 and 2 of
    # different listings were never compared with each other (a review).
    make_imagefolder(tmp_path / "tree", num_classes=3, per_class=12)
    out = tmp_path / "out"
    for part in range(3):
        assert main(["build", str(tmp_path / "tree"), str(out), "--split", "train", "--quiet", "--shard-size", "64kB",
                     "--num-parts", "3", "--part-id", str(part)]) == 0
    first, last = out / "train.part-0000-of-0003.json", out / "train.part-0002-of-0003.json"
    _spoil_part(first, lambda m: m["build"].pop("source_files"))
    _spoil_part(last, lambda m: m["build"].update(source_files="36 files, digest 0123456789abcdef"))
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.part-0002-of-0003.json: its build differ from train.part-0001-of-0003.json's (SRC's files" in err
    assert not (out / "train.json").exists()


def _spoil_part(path: Path, change) -> None:
    written = read_manifest(path)
    change(written)
    write_manifest(path, written)
