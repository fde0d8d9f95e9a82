"""The file formats shards/ owns, each read and written in one module: the manifest
(shards/manifest.py), DALI's index (shards/dali_index.py) and durable writes (shards/durable.py)."""

import io
import json
import tarfile

import pytest

from shard_fixtures import make_imagefolder
from shard_readers import reference_index
from shards.cli import main
from shards.dali_index import read_index
from shards.durable import fsync_tree, write_text_atomic, write_text_exclusive


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small complete build whose manifest the tests copy and spoil."""
    root = tmp_path_factory.mktemp("formats")
    make_imagefolder(root / "src", num_classes=3, per_class=2)
    assert main(["build", str(root / "src"), str(root / "out"), "--split", "train", "--quiet"]) == 0
    return root / "out"


SPOILED = {
    "broken JSON": lambda text: text[: len(text) // 2],
    "another JSON file": lambda text: json.dumps({"classes": 5}),
    "no shard list": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "shards"}),
    "a wrong class count": lambda text: json.dumps({**json.loads(text), "num_classes": 7}),
}


@pytest.mark.parametrize("spoil", SPOILED, ids=list(SPOILED))
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_a_spoiled_manifest_is_one_error_line_naming_it(built, tmp_path, capsys, command, spoil):
    (tmp_path / "train.json").write_text(SPOILED[spoil]((built / "train.json").read_text()))
    capsys.readouterr()
    assert main([command, str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'train.json'}: not a "), captured.err
    assert "shards build" in lines[0] and "Traceback" not in captured.out


def test_the_loader_and_training_report_manifest_errors_in_their_own_types(built, tmp_path):
    from pipeline.data.checks import LoaderError, load_split_shards
    from pipeline.errors import TrainError
    from pipeline.models import read_num_classes

    assert read_num_classes(built) == 3 and load_split_shards(built, "train").num_classes == 3
    (tmp_path / "train.json").write_text(SPOILED["another JSON file"]((built / "train.json").read_text()))
    with pytest.raises(LoaderError, match=r"train\.json: not a shard manifest"):
        load_split_shards(tmp_path, "train")
    with pytest.raises(TrainError, match=rf"no shards at {tmp_path}: .*train\.json: not a shard manifest"):
        read_num_classes(tmp_path)


def test_read_index_reads_what_dalis_wds2idx_writes(tmp_path):
    # A tar written by tarfile, indexed by DALI's own tool: read_index must give tarfile's offsets.
    fields = {"cls": b"7", "jpg": b"\xff\xd8" + bytes(1500), "json": b'{"a": 1}'}
    with tarfile.open(tmp_path / "shard.tar", "w") as archive:
        for key in ("a", "b_1", "c"):
            for extension, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    reference_index(tmp_path / "shard.tar", tmp_path / "shard.idx")
    with tarfile.open(tmp_path / "shard.tar") as archive:
        members = [(m.name.split(".", 1)[1], m.offset_data, m.size, m.name) for m in archive]
    assert read_index(tmp_path / "shard.idx") == [members[i:i + 3] for i in range(0, 9, 3)]


@pytest.mark.parametrize("text", ["", "v1.3 0\n", "v1.2 2\njpg 512 10 a.jpg\n", "v1.2 1\njpg 512 a.jpg\n"])
def test_read_index_refuses_what_is_not_a_v1_2_index(tmp_path, text):
    (tmp_path / "bad.idx").write_text(text)
    with pytest.raises(ValueError):
        read_index(tmp_path / "bad.idx")


def test_write_text_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "plan.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    with pytest.raises(UnicodeEncodeError):  # fails while writing the temporary file
        write_text_atomic(path, "half \udcff")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_write_text_exclusive_never_replaces_a_file(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links (some FUSE mounts)
        def refuse(*_):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr("os.link", refuse)
    path = tmp_path / "plan.json"
    assert write_text_exclusive(path, "first\n") is True
    assert write_text_exclusive(path, "second\n") is False
    assert path.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_fsync_tree_walks_nested_folders_and_links(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "missing")  # a dangling link is skipped, not opened
    fsync_tree(tmp_path)
    assert (tmp_path / "a" / "b" / "model.safetensors").read_bytes() == b"x"
