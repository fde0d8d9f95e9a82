"""Streamed tar sources (ILSVRC2012 train tar of class tars, the 21k tar.gz, tars of folders)
give the same samples as the folder they were made from; split builds cover everything once."""

import tarfile

import pytest

from shard_fixtures import make_imagefolder, make_tar_of_tars, run_shards_main
from shard_readers import manifest, read_labels_with_dali, read_with_webdataset
from shards.cli import main


def build(src, out, *extra, split="train"):
    assert main(["build", str(src), str(out), "--split", split, "--quiet", *extra]) == 0
    return manifest(out, split)


def content(out):
    """(key, label, image bytes) of every sample: what must not depend on the source layout."""
    return sorted((s["key"], s["cls"], s["jpg"]) for s in read_with_webdataset(out))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("tree"), num_classes=11, per_class=12)


@pytest.mark.parametrize("gzip", [False, True], ids=["ILSVRC2012_img_train.tar", "winter21_whole.tar.gz"])
def test_tar_of_class_tars_equals_the_folder_build(files, tmp_path, gzip):
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    archive = make_tar_of_tars(tmp_path / ("src.tar.gz" if gzip else "src.tar"), files, gzip=gzip)
    from_folder = build(tree, tmp_path / "a", "--shard-size", "100kB")
    from_tar = build(archive, tmp_path / "b", "--shard-size", "100kB")
    assert from_tar["classes"] == from_folder["classes"]
    assert from_tar["class_counts"] == from_folder["class_counts"]
    assert content(tmp_path / "b") == content(tmp_path / "a")
    assert sorted(read_labels_with_dali(tmp_path / "b")) == sorted(s[1] for s in content(tmp_path / "a"))
    assert not (tmp_path / "b" / ".build").exists()  # spill files are gone
    sources = {s["json"]["source"] for s in read_with_webdataset(tmp_path / "b")}
    assert all(".tar/" in source for source in sources)



def test_a_tar_of_folders_keeps_an_empty_class_folder_as_the_folder_build_does(tmp_path, capsys):
    # `tar cf src.tar -C tree .` of a tree with an empty class folder: the tar dropped that class,
    # so every later class had another index than in the folder's build, without a word.
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=3, per_class=4)
    (tree / "n00000001_empty").mkdir()  # sorted between the classes: the later indices move
    with tarfile.open(tmp_path / "src.tar", "w") as archive:
        archive.add(tree, arcname=".")
    assert "./n00000001_empty" in tarfile.open(tmp_path / "src.tar").getnames()
    from_folder = build(tree, tmp_path / "a")
    warned = capsys.readouterr().out
    from_tar = build(tmp_path / "src.tar", tmp_path / "b")
    assert from_folder["classes"][1] == "n00000001_empty" and from_folder["class_counts"][1] == 0
    assert (from_tar["classes"], from_tar["class_counts"]) == (from_folder["classes"], from_folder["class_counts"])
    assert content(tmp_path / "b") == content(tmp_path / "a")
    assert "1 of 4 classes have no image in this split: n00000001_empty" in warned
    assert "1 of 4 classes have no image in this split: n00000001_empty" in capsys.readouterr().out

def test_streamed_build_is_shuffled_and_deterministic(files, tmp_path):
    archive = make_tar_of_tars(tmp_path / "src.tar", files)
    first = build(archive, tmp_path / "a", "--shard-size", "100kB", "--workers", "1")
    second = build(archive, tmp_path / "b", "--shard-size", "100kB", "--workers", "2")
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    # The stream arrives one class after another; each shard must still mix them like a
    # uniformly random order would: E[distinct] = K * (1 - (1 - 1/K)^m) for K equal classes.
    samples = read_with_webdataset(tmp_path / "a")
    distinct, expected = [], []
    for shard in first["shards"]:
        labels = [s["cls"] for s in samples if s["shard"] == shard["name"]]
        distinct.append(len(set(labels)))
        expected.append(11 * (1 - (10 / 11) ** len(labels)))
    assert sum(distinct) >= 0.85 * sum(expected)  # class-sorted shards would hold ~2 classes each


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_parts_write_the_same_shards_as_one_build(files, tmp_path, layout):
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    src = tree if layout == "folder" else make_tar_of_tars(tmp_path / "src.tar", files)
    whole = build(src, tmp_path / "whole", "--shard-size", "64kB")
    parts = 3
    for part in range(parts):
        build_part = ["--shard-size", "64kB", "--num-parts", str(parts), "--part-id", str(part)]
        assert main(["build", str(src), str(tmp_path / "split"), "--split", "train", "--quiet", *build_part]) == 0
    assert not (tmp_path / "split" / "train.json").exists()
    assert main(["merge", str(tmp_path / "split")]) == 0
    merged = manifest(tmp_path / "split")
    assert len(whole["shards"]) >= parts
    for key in ("shards", "classes", "class_counts", "totals"):
        assert merged[key] == whole[key], key
    assert sorted(s["key"] for s in read_with_webdataset(tmp_path / "split")) == sorted(
        s["key"] for s in read_with_webdataset(tmp_path / "whole"))
    assert main(["verify", str(tmp_path / "split"), "--quiet"]) == 0


def test_merge_refuses_a_missing_or_foreign_part(files, tmp_path, capsys):
    import shutil

    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)

    def part(out, part_id, *extra):
        return main(["build", str(tree), str(out), "--split", "train", "--quiet", "--shard-size", "64kB",
                     "--num-parts", "3", "--part-id", str(part_id), *extra])

    out = tmp_path / "out"
    assert part(out, 0) == 0 and part(out, 2) == 0
    assert main(["merge", str(out)]) == 2
    assert "parts missing: 1 (of 3): build each missing one with --num-parts 3 --part-id N " \
        "(N = 1), then merge again" in capsys.readouterr().err
    # A part with other arguments is refused while this build is in progress...
    assert part(out, 1, "--seed", "5") == 2
    assert "seed" in capsys.readouterr().err
    # ...and merge will not mix in a part manifest of another build either.
    assert part(tmp_path / "other", 1, "--seed", "5") == 0
    shutil.copy(tmp_path / "other" / "train.part-0001-of-0003.json", out)
    assert main(["merge", str(out)]) == 2
    assert "different builds" in capsys.readouterr().err
    assert not (out / "train.json").exists()


def test_parts_started_at_the_same_time_share_out_safely(files, tmp_path, start_process):
    # A Slurm array starts every part at once on a shared OUT: plan.json is written by all.
    import subprocess
    import sys
    from pathlib import Path

    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    repo = Path(__file__).resolve().parents[1]
    common = ["--split", "train", "--quiet", "--shard-size", "64kB", "--num-parts", "4"]
    parts = [start_process([sys.executable, "-m", "shards", "build", str(tree), str(tmp_path / "out"),
                            *common, "--part-id", str(i)], cwd=repo, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for process in parts:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    assert main(["merge", str(tmp_path / "out")]) == 0
    whole = build(tree, tmp_path / "whole", "--shard-size", "64kB")
    assert manifest(tmp_path / "out")["shards"] == whole["shards"]


# A part run again with other arguments -----------------------------------------------------------
# 132 small images in 2 shards at TWO_SHARDS (part 1 of 2 owns train-000001), in 6 (folder) or 14
# (tar: its size estimate differs) at 64kB, where part 0 of 2's block would take train-000001 too.
# A part with other arguments numbers shards its own way and would write over the others' shards:
# it must be refused before it writes anything.
TWO_SHARDS = {"folder": "200kB", "tar": "400kB"}


def every_file(out):
    """Relative path -> bytes of every file in OUT: shards, indexes, manifests and build state."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def part_args(src, out, *extra):
    return ["build", src, out, "--split", "train", "--quiet", "--workers", "1", "--num-parts", "2", *extra]


@pytest.mark.parametrize("layout", ["folder", "tar"])
@pytest.mark.parametrize("again, named", [
    (["--shard-size", "64kB", "--part-id", "0"], "--shard-size: "),
    (["--num-parts", "4", "--part-id", "1"], "--num-parts: 2 -> 4"),  # its block: shard 0, part 0's
])
def test_a_part_with_other_arguments_is_refused_and_writes_nothing(files, tmp_path, capsys, layout, again, named):
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    src = tree if layout == "folder" else make_tar_of_tars(tmp_path / "src.tar", files)
    size = TWO_SHARDS[layout]
    whole = build(src, tmp_path / "whole", "--shard-size", size)
    assert [s["name"] for s in whole["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert len(build(src, tmp_path / "small", "--shard-size", "64kB")["shards"]) >= 4
    out = tmp_path / "out"
    for part in range(2):
        assert run_shards_main(capsys, *part_args(src, out, "--shard-size", size, "--part-id", part))[0] == 0
    before = every_file(out)

    for flag in (["--overwrite"], [], ["--resume"]):
        code, _, err = run_shards_main(capsys, *part_args(src, out, "--shard-size", size, *again, *flag))
        assert every_file(out) == before, flag  # part 1's shards above all, byte for byte
        line = one_error_line(err)
        assert code == 2 and named in line and "plan.json" in line, line

    assert main(["merge", str(out)]) == 0
    assert manifest(out)["shards"] == whole["shards"]
    for shard in whole["shards"]:
        assert (out / shard["name"]).read_bytes() == (tmp_path / "whole" / shard["name"]).read_bytes()


def test_a_part_with_other_arguments_may_not_join_a_complete_build(files, tmp_path, capsys):
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    out = tmp_path / "out"
    for part in range(2):
        assert run_shards_main(capsys, *part_args(tree, out, "--shard-size", "200kB", "--part-id", part))[0] == 0
    assert main(["merge", str(out)]) == 0
    before = every_file(out)
    code, _, err = run_shards_main(capsys, *part_args(tree, out, "--shard-size", "64kB", "--part-id", "0",
                                                      "--overwrite"))
    assert every_file(out) == before
    line = one_error_line(err)
    assert code == 2 and "--shard-size: 200000 -> 64000" in line and "train.json" in line, line
    # The same arguments replace this part's own shards, as before, with the same bytes.
    assert run_shards_main(capsys, *part_args(tree, out, "--shard-size", "200kB", "--part-id", "0",
                                              "--overwrite"))[0] == 0
    assert (out / "train-000001.tar").read_bytes() == before["train-000001.tar"]


def three_part_args(src, out, part_id, *extra):
    return ["build", src, out, "--split", "train", "--quiet", "--workers", "1", "--shard-size", "64kB",
            "--num-parts", "3", "--part-id", str(part_id), *extra]


def three_part_build(tmp_path, capsys, *, merged: bool):
    """A tree of images and OUT holding its build in 3 parts, merged or not: (tree, OUT)."""
    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    out = tmp_path / "out"
    for part_id in range(3):
        assert run_shards_main(capsys, *three_part_args(tree, out, part_id))[0] == 0
    if merged:
        assert main(["merge", str(out)]) == 0
    return tree, out


def test_a_part_built_again_after_merge_turns_the_build_back_into_parts(files, tmp_path, capsys):
    """A merged build with a damaged shard: its part built again with --overwrite (what the README
    says replaces only that part's own shards) removed the merged manifest while merge had deleted
    the other parts' manifests, so the build could no longer be merged (walkthrough). Now merge
    keeps them aside and the part rebuilt turns the build back into its parts; merged again, it is
    the build it was, byte for byte."""
    tree, out = three_part_build(tmp_path, capsys, merged=True)

    def part(part_id, *extra):
        return run_shards_main(capsys, *three_part_args(tree, out, part_id, *extra))

    merged = {name: data for name, data in every_file(out).items() if not name.startswith(".build/")}
    assert sorted(p.name for p in out.glob("train.part-*")) == []
    damaged = manifest(out)["shards"][len(manifest(out)["shards"]) // 2]["name"]  # a shard of part 1
    (out / damaged).write_bytes(merged[damaged][:1000])
    assert main(["verify", str(out), "--quiet"]) == 1
    capsys.readouterr()
    code, _, err = part(1, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("train.part-*")) == [f"train.part-000{i}-of-0003.json" for i in range(3)]
    assert not (out / "train.json").exists()  # parts again, until merge
    assert main(["merge", str(out)]) == 0
    assert {name: data for name, data in every_file(out).items() if not name.startswith(".build/")} == merged
    assert main(["verify", str(out), "--quiet"]) == 0
    # A merged manifest deleted by hand: its kept part manifests are a deleted build's, not brought back.
    (out / "train.json").unlink()
    assert part(1, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("train.part-*")) == ["train.part-0001-of-0003.json"]
    for part_id in (0, 2):
        assert part(part_id, "--overwrite")[0] == 0
    assert main(["merge", str(out)]) == 0
    assert {name: data for name, data in every_file(out).items() if not name.startswith(".build/")} == merged
    # One process with --overwrite replaces the whole build, the kept part manifests with it.
    assert run_shards_main(capsys, "build", tree, out, "--split", "train", "--quiet", "--shard-size", "64kB",
                           "--overwrite")[0] == 0
    assert not (out / ".build").exists()


def test_parts_rebuilt_at_once_after_merge_never_see_a_half_unmerged_build(files, tmp_path, capsys, monkeypatch):
    """A Slurm array rebuilding every part with --overwrite after a merge: while one part turns the
    build back into parts, another part's check must never find a part neither kept nor back in
    OUT (it refused the build as "merged by an older version"; review). Checked at every step."""
    import os

    import shards.outdir as outdir

    tree, out = three_part_build(tmp_path, capsys, merged=True)
    layout = outdir.OutputLayout(out, "train")
    checked = []

    def others_check():
        for other in (0, 2):
            outdir._check_parts_kept(layout, 3, other)  # raises on a half-unmerged build
        checked.append(1)

    real_replace, real_unlink = os.replace, outdir.Path.unlink

    def replace(source, target):
        others_check()
        real_replace(source, target)
        others_check()

    def unlink(path, missing_ok=False):
        others_check()
        real_unlink(path, missing_ok=missing_ok)
        others_check()

    monkeypatch.setattr(outdir.os, "replace", replace)
    monkeypatch.setattr(outdir.Path, "unlink", unlink)

    class Plan:  # what _unmerge reads of a plan
        num_parts = 3

    outdir._unmerge(layout, Plan(), 1)
    monkeypatch.undo()
    assert len(checked) >= 8  # merged manifest, part 1's kept one, two moves: before and after each
    assert sorted(p.name for p in out.glob("train.part-*")) == ["train.part-0000-of-0003.json",
                                                                "train.part-0002-of-0003.json"]


def test_a_part_of_a_build_merged_without_its_parts_kept_is_refused(files, tmp_path, capsys):
    """Merged by the version that deleted the part manifests: one part built again could not be
    merged with the others, so it is refused before anything changes, saying how to build anew."""
    import shutil

    tree, out = three_part_build(tmp_path, capsys, merged=True)
    shutil.rmtree(out / ".build")  # as the previous version left a merged build
    before = every_file(out)
    for dry_run in ([], ["--dry-run"]):
        code, _, err = run_shards_main(capsys, *three_part_args(tree, out, 1, "--overwrite", *dry_run))
        assert code == 2 and one_error_line(err) == (
            f"error: {out} holds the merged train build (train.json) without the part manifests of parts 0, 2 "
            "(merged by an older version, which deleted them): part 1 alone could not be merged with them again; "
            "to build the split anew, delete train.json and build every part with --overwrite (or the whole split "
            "in one process with --overwrite)")
        assert every_file(out) == before


def test_a_merge_that_cannot_write_its_manifest_is_one_error_and_keeps_the_parts(files, tmp_path, capsys,
                                                                                 monkeypatch):
    """A folder the user may not write (read-only, immutable, a full disk): write_text_atomic's
    PermissionError came as a traceback (walkthrough). Simulated here: root writes anywhere."""
    import shards.manifest

    tree, out = three_part_build(tmp_path, capsys, merged=False)
    before = every_file(out)

    def refused(path, manifest):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(shards.manifest, "write_manifest", refused)
    code, _, err = run_shards_main(capsys, "merge", out)
    assert code == 2 and one_error_line(err) == (
        f"error: {out}: cannot write the merged manifest there (Operation not permitted); the part manifests "
        "stay: merge again once it can be written")
    assert every_file(out) == before
    monkeypatch.undo()
    assert run_shards_main(capsys, "merge", out)[0] == 0


def test_of_parts_started_at_once_with_other_arguments_only_the_first_writes(files, tmp_path, capsys, monkeypatch):
    # Both parts found no plan.json and passed the checks; the other one recorded its plan first.
    # This one must then be refused when it comes to record its own, not replace it.
    import shards.outdir

    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    assert run_shards_main(capsys, *part_args(tree, tmp_path / "other", "--shard-size", "200kB",
                                              "--part-id", "0"))[0] == 0
    other_plan = (tmp_path / "other" / ".build" / "train" / "plan.json").read_text()
    exclusive = shards.outdir.write_text_exclusive

    def other_part_first(path, text):
        assert exclusive(path, other_plan)
        return exclusive(path, text)

    monkeypatch.setattr(shards.outdir, "write_text_exclusive", other_part_first)
    out = tmp_path / "out"
    code, _, err = run_shards_main(capsys, *part_args(tree, out, "--shard-size", "64kB", "--part-id", "1"))
    line = one_error_line(err)
    assert code == 2 and "--shard-size: 200000 -> 64000" in line, line
    assert sorted(every_file(out)) == [".build/train/plan.json"]  # no shard, record or manifest
    assert (out / ".build" / "train" / "plan.json").read_text() == other_plan
    monkeypatch.undo()
    # The winner's arguments join that build.
    assert run_shards_main(capsys, *part_args(tree, out, "--shard-size", "200kB", "--part-id", "1"))[0] == 0


def test_merge_names_the_setting_a_foreign_part_differs_in(files, tmp_path, capsys):
    import shutil

    tree = tmp_path / "tree"
    make_imagefolder(tree, num_classes=11, per_class=12)
    out = tmp_path / "out"
    for part in range(2):
        assert run_shards_main(capsys, *part_args(tree, out, "--shard-size", "200kB", "--part-id", part))[0] == 0
    assert run_shards_main(capsys, *part_args(tree, tmp_path / "other", "--shard-size", "64kB",
                                              "--part-id", "1"))[0] == 0
    shutil.copy(tmp_path / "other" / "train.part-0001-of-0002.json", out)
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "different builds" in line and "--shard-size: 200000 -> 64000" in line, line
    assert not (out / "train.json").exists()
