"""A shards folder without the split's manifest: the error says what is there instead (another
split, the shards one or two folders down, an unfinished build, unmerged parts), not only how to
build them (which sent a user who gave a run folder to build shards into it)."""

import shutil

import pytest

from pipeline.mix.__main__ import main as mix_main
from shards.errors import ShardsError
from shards.manifest import load_manifest


def _refusal(folder, split="train") -> str:
    with pytest.raises(ShardsError) as raised:
        load_manifest(folder, split)
    message = str(raised.value)
    assert message.startswith(f"{folder / (split + '.json')}: no manifest for split {split!r}") and "\n" not in message
    return message


def test_each_missing_manifest_says_what_the_folder_holds(demo_shards, tmp_path):
    assert _refusal(tmp_path / "absent").endswith(
        f"(no folder {tmp_path / 'absent'}); build the shards with `python -m shards build SRC {tmp_path / 'absent'} "
        "--split train`")
    (tmp_path / "empty").mkdir()
    assert _refusal(tmp_path / "empty").endswith("; build the shards with "
                                                 f"`python -m shards build SRC {tmp_path / 'empty'} --split train`")
    # A run folder (the demo builds its shards in RUN/data/shards) with its train and val manifests.
    shards = tmp_path / "run" / "data" / "shards"
    shards.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(demo_shards / f"{split}.json", shards / f"{split}.json")
    (tmp_path / "run" / "config.yaml").write_text("data:\n  shards: data/shards\n")
    # A split the shards lack lists those they have.
    assert _refusal(shards, "test").endswith(f"; {shards} has train, val")
    assert _refusal(tmp_path / "run").endswith(f"; shards are in {shards}: give that folder")
    # Shards whose manifest is gone.
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "train-000000.tar").write_bytes(b"")
    assert _refusal(tmp_path / "lost").endswith(", though train-*.tar shards are there (the manifest deleted or "
                                                "lost?); readers need it to check them: build the shards with "
                                                f"`python -m shards build SRC {tmp_path / 'lost'} --split train` again")
    # A build that stopped before writing its manifest, and one of parts not merged yet.
    (tmp_path / "stopped" / ".build" / "train").mkdir(parents=True)
    (tmp_path / "stopped" / ".build" / "train" / "plan.json").write_text("{}")
    assert "its build there has not finished (stopped, or still running); the same build command with --resume" \
        in _refusal(tmp_path / "stopped")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "train.part-0000-of-0002.json").write_text("{}")
    assert _refusal(tmp_path / "parts").endswith(f"yet, but part manifests are there: run `python -m shards merge "
                                                 f"{tmp_path / 'parts'}`")


def test_preview_of_a_split_the_shards_lack_lists_theirs(demo_shards, tmp_path, capsys):
    code = mix_main(["preview", str(demo_shards), "--split", "bogus", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == (f"error: SHARDS_DIR: {demo_shards / 'bogus.json'}: no manifest for split 'bogus'; "
                   f"{demo_shards} has train, val, test\n")
