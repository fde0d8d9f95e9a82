"""The official CIFAR archives (binary and python versions, .tar.gz or extracted) as shard sources.

The archives are generated here with a few records per batch file (tests/shard_fixtures.py,
pickles written as Python 2's cPickle wrote the originals); every check compares with what was
written into them: the pixels and labels of each record, read back by the webdataset library
and by DALI's reader and CPU decoder with our index files.
"""

import codecs
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processes import run_process
from shard_fixtures import (CIFAR_ARCHIVES, cifar_archive, make_imagefolder, python2_pickle, write_cifar_folder,
                            write_cifar_tar)
from shard_readers import manifest, read_images_with_dali, read_with_webdataset, reference_index
from shards.cli import main
from shards.errors import ShardsError
from shards.unpickle import load_cifar_pickle

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--quiet", "--workers", "1", "--shard-size", "64kB"]
ARCHIVES = sorted(CIFAR_ARCHIVES)


def build(capsys, src, out, *extra, split="train") -> tuple[int, str, str]:
    """Exit status, stdout and stderr of an in-process build."""
    capsys.readouterr()
    code = main(["build", str(src), str(out), "--split", split, *SMALL, *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(*args) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def make_source(tmp_path: Path, archive, form: str) -> Path:
    """The archive as downloaded (``tar.gz``), extracted (``folder``: SRC is its top folder) or
    ``above`` (SRC is the folder it was extracted in, next to the .tar.gz)."""
    name = next(n for n, top in CIFAR_ARCHIVES.items() if top == archive.top)
    if form == "tar.gz":
        return write_cifar_tar(tmp_path / name, archive)
    top = write_cifar_folder(tmp_path / "data", archive)
    if form == "above":
        write_cifar_tar(tmp_path / "data" / name, archive)
        return top.parent
    return top


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG, read from its bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunks.append(data[position + 4:position + 8].decode())
        position += 12 + length
    return chunks


def record_by_source(archive, split: str) -> dict[str, object]:
    return {f"{r.member}#{r.index}": r for r in archive.records[split]}


# Every archive, as downloaded and extracted: exact pixels, labels, class order, totals ------------

@pytest.mark.parametrize("form", ["tar.gz", "folder", "above"])
@pytest.mark.parametrize("archive_name", ARCHIVES)
def test_every_archive_builds_its_exact_pixels_and_labels(tmp_path, capsys, archive_name, form):
    archive = cifar_archive(CIFAR_ARCHIVES[archive_name])
    code, printed, err = build(capsys, make_source(tmp_path, archive, form), tmp_path / "out")
    assert code == 0, err
    truth = record_by_source(archive, "train")
    assert f"train: {len(truth)} images in = {len(truth)} written + 0 rejected" in printed

    samples = read_with_webdataset(tmp_path / "out")
    assert sorted(s["json"]["source"] for s in samples) == sorted(truth)
    for sample in samples:
        record = truth[sample["json"]["source"]]
        assert sample["jpg"] is None and png_chunks(sample["png"])[0] == "IHDR"
        assert set(png_chunks(sample["png"])) == {"IHDR", "IDAT", "IEND"}  # pixels only, no metadata
        decoded = Image.open(io.BytesIO(sample["png"]))
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), record.image)
        assert sample["cls"] == record.fine
        expected = {"class": archive.classes["fine"][record.fine], "member": record.member, "record": record.index,
                    "source": f"{record.member}#{record.index}", "width": 32, "height": 32}
        if record.filename:
            expected["filename"] = record.filename
        if record.coarse is not None:
            expected.update(fine_label=record.fine, coarse_label=record.coarse)
        assert sample["json"] == expected

    built = manifest(tmp_path / "out")
    assert built["classes"] == archive.classes["fine"] != sorted(archive.classes["fine"])  # meta order
    meta_file = {"cifar-10-batches-bin": "batches.meta.txt", "cifar-100-binary": "fine_label_names.txt",
                 "cifar-10-batches-py": "batches.meta (label_names)", "cifar-100-python": "meta (fine_label_names)"}
    assert built["build"]["classes_from"] == f"{archive.top}/{meta_file[archive.top]}"
    assert built["build"]["source_kind"] == archive_name.removesuffix(".tar.gz")
    totals = built["totals"]
    assert totals["inputs"] == totals["samples"] == len(truth) and totals["rejected"] == 0
    assert totals["input_bytes"] == 3072 * len(truth)
    histogram = Counter(r.fine for r in truth.values())
    assert built["class_counts"] == [histogram[i] for i in range(len(archive.classes["fine"]))]


@pytest.mark.parametrize("archive_name", ["cifar-100-binary.tar.gz", "cifar-10-python.tar.gz"])
def test_an_archive_extracted_into_a_folder_of_its_own_name_builds(tmp_path, capsys, archive_name):
    """`mkdir cifar-100-binary && cd cifar-100-binary && wget ... && tar xzf ...`: SRC
    cifar-100-binary/ holds cifar-100-binary/ and the archive (was taken for the archive's own
    folder by its name, and found incomplete)."""
    archive = cifar_archive(CIFAR_ARCHIVES[archive_name])
    src = tmp_path / archive.top
    inner = write_cifar_folder(src, archive)
    assert inner == src / archive.top and inner.is_dir()
    write_cifar_tar(src / archive_name, archive)  # the download, left beside what it extracted to
    code, printed, err = build(capsys, src, tmp_path / "out")
    assert code == 0, err
    assert sorted(s["json"]["source"] for s in read_with_webdataset(tmp_path / "out")) == \
        sorted(record_by_source(archive, "train"))


def test_test_split_and_coarse_labels(tmp_path, capsys):
    archive = cifar_archive("cifar-100-python")
    src, out = make_source(tmp_path, archive, "tar.gz"), tmp_path / "out"
    assert build(capsys, src, out, "--label-field", "coarse")[0] == 0
    code, _, err = build(capsys, src, out, "--label-field", "coarse", "--classes", out / "train.json", split="test")
    assert code == 0, err
    for split in ("train", "test"):
        truth = record_by_source(archive, split)
        built = manifest(out, split)
        assert built["classes"] == archive.classes["coarse"] and built["build"]["label_field"] == "coarse"
        assert built["build"]["classes_from"] == "cifar-100-python/meta (coarse_label_names)"
        samples = read_with_webdataset(out, split)
        assert sorted(s["json"]["source"] for s in samples) == sorted(truth)
        for sample in samples:
            record = truth[sample["json"]["source"]]
            assert sample["cls"] == record.coarse and sample["json"]["fine_label"] == record.fine
            assert sample["json"]["class"] == archive.classes["coarse"][record.coarse]
    assert {r.member for r in archive.records["test"]} == {"cifar-100-python/test"}
    assert sorted(p.name for p in out.glob("*.json")) == ["test.json", "train.json"]
    capsys.readouterr()
    assert main(["verify", str(out), "--decode", "--quiet"]) == 0  # both splits, found by name
    printed = capsys.readouterr().out
    assert "train: OK: 1 shards, 15 samples checked and decoded" in printed
    assert "test: OK: 1 shards, 3 samples checked and decoded" in printed
    assert main(["inspect", str(out), "--split", "test"]) == 0


# "jpg;png": the extensions a loader reading ImageNet and CIFAR shards alike asks DALI for.
@pytest.mark.parametrize(("top", "extensions"), [("cifar-10-batches-bin", "png"), ("cifar-100-python", "jpg;png")])
def test_dali_reads_the_exact_pixels_and_labels_through_our_index(tmp_path, capsys, top, extensions):
    archive = cifar_archive(top, records=6)
    out = tmp_path / "out"
    assert build(capsys, make_source(tmp_path, archive, "tar.gz"), out)[0] == 0
    truth = record_by_source(archive, "train")
    samples = read_images_with_dali(out, image=extensions)
    assert len(samples) == len(truth) and len(manifest(out)["shards"]) > 1
    for pixels, label, meta in samples:
        record = truth.pop(meta["source"])
        np.testing.assert_array_equal(pixels, record.image)
        assert label == record.fine
    assert truth == {}  # each record exactly once
    for shard in manifest(out)["shards"]:
        assert (out / shard["index"]).read_text() == reference_index(out / shard["name"], tmp_path / "dali.idx")


def test_binary_and_python_versions_give_the_same_images_under_the_same_keys(tmp_path, capsys):
    built = {}
    for top in ("cifar-10-batches-bin", "cifar-10-batches-py"):
        out, src = tmp_path / top, tmp_path / f"src-{top}"
        src.mkdir()
        assert build(capsys, make_source(src, cifar_archive(top), "tar.gz"), out)[0] == 0
        built[top] = [(s["key"], s["cls"], s["png"], s["shard"]) for s in read_with_webdataset(out)]
    assert built["cifar-10-batches-bin"] == built["cifar-10-batches-py"]  # same order, shards and PNG bytes


@pytest.mark.parametrize("top", ["cifar-10-batches-py", "cifar-100-python"])
def test_a_copy_pickled_with_str_keys_builds_the_same_shards(tmp_path, capsys, top):
    """A user's Python 3 copy of the archive, its dicts pickled with str keys and names ('data',
    'fine_label_names'): it was refused as having no class names; it builds the shards of the
    official bytes-keyed files, byte for byte."""
    archive = cifar_archive(top)
    repickled = {}
    for name, data in archive.files.items():
        try:
            loaded = pickle.loads(data, encoding="bytes")
        except Exception:  # noqa: BLE001 - the text files of the archive
            repickled[name] = data
            continue
        as_str = {key.decode(): [v.decode() for v in value] if isinstance(value, list) and value
                  and isinstance(value[0], bytes) else value for key, value in loaded.items()}
        repickled[name] = pickle.dumps(as_str, protocol=4)
    assert repickled != archive.files
    built = {}
    for form, files in (("official", archive.files), ("str-keyed", repickled)):
        (tmp_path / form).mkdir()
        src = write_cifar_tar(tmp_path / form / "archive.tar.gz", archive, files)
        for split in ("train", "test"):
            code, _, err = build(capsys, src, tmp_path / form / "out", split=split)
            assert code == 0, err
        built[form] = {p.name: p.read_bytes() for p in (tmp_path / form / "out").glob("*.tar")}
    assert built["official"] and built["official"] == built["str-keyed"]


def test_one_file_of_an_extracted_archive_names_its_folder(tmp_path, capsys):
    """SRC .../cifar-100-python/test (a batch file) said "neither a folder nor a tar archive"."""
    top = write_cifar_folder(tmp_path / "data", cifar_archive("cifar-100-python"))
    code, out, err = build(capsys, top / "test", tmp_path / "out", split="test")
    assert code == 2 and one_error_line(err) == (
        f"error: SRC {top / 'test'}: a file of the extracted CIFAR archive; give its folder, {top}, or the archive "
        "as downloaded as SRC (--split picks the batches)")


def test_split_build_and_workers_give_the_same_shards(tmp_path, capsys):
    src = make_source(tmp_path, cifar_archive("cifar-100-binary", records=8), "tar.gz")
    assert build(capsys, src, tmp_path / "one")[0] == 0
    for part in range(2):
        code, _, err = build(capsys, src, tmp_path / "parts", "--num-parts", 2, "--part-id", part, "--workers", 2)
        assert code == 0, err
    assert main(["merge", str(tmp_path / "parts")]) == 0
    one, parts = manifest(tmp_path / "one"), manifest(tmp_path / "parts")
    assert len(one["shards"]) >= 2 and one["shards"] == parts["shards"]
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["name"]).read_bytes() == (tmp_path / "parts" / shard["name"]).read_bytes()


def test_verify_decode_finds_a_damaged_png(tmp_path, capsys):
    out = tmp_path / "out"
    assert build(capsys, make_source(tmp_path, cifar_archive("cifar-10-batches-bin"), "tar.gz"), out)[0] == 0
    built = manifest(out)
    shard = built["shards"][0]
    tar = bytearray((out / shard["name"]).read_bytes())
    start = tar.index(b"IDAT") + 40  # inside the first image's compressed pixels
    tar[start:start + 64] = bytes(64)
    (out / shard["name"]).write_bytes(tar)
    shard["sha256"] = hashlib.sha256(tar).hexdigest()  # damage that only a decode can see
    (out / "train.json").write_text(json.dumps(built))
    assert main(["verify", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet", "--decode"]) == 1
    assert f"BAD {shard['name']}: " in capsys.readouterr().out


# Each problem is one error line, exit 2, and nothing written ----------------------------------------

def cut_tar(tmp_path, archive):
    whole = write_cifar_tar(tmp_path / "whole.tar.gz", archive).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])
    return tmp_path / "cut.tar.gz"


def spoiled(name: str, change):
    """A source builder: the archive with file ``name`` changed (None: removed)."""
    def make(tmp_path, archive):
        files = dict(archive.files)
        member = f"{archive.top}/{name}"
        if change is None:
            del files[member]
        else:
            files[member] = change(files[member])
        return write_cifar_tar(tmp_path / "spoiled.tar.gz", archive, files)
    return make


def bad_header(name: str):
    """A source builder: the .tar.gz with the tar header of file ``name`` overwritten in its name
    field (its checksum then fails), the data after it intact: a bit flipped in transit."""
    def make(tmp_path, archive):
        plain = tmp_path / "plain.tar"
        write_cifar_tar(tmp_path / "whole.tar.gz", archive)
        plain.write_bytes(gzip.decompress((tmp_path / "whole.tar.gz").read_bytes()))
        with tarfile.open(plain) as tar:
            offset = tar.getmember(f"{archive.top}/{name}").offset
        data = bytearray(plain.read_bytes())
        data[offset] ^= 0x20
        (tmp_path / "flipped.tar.gz").write_bytes(gzip.compress(bytes(data)))
        return tmp_path / "flipped.tar.gz"
    return make


def set_byte(position: int, value: int):
    return lambda data: data[:position] + bytes([value]) + data[position + 1:]


def python_batch(change):
    """A python-version batch file re-pickled (as Python 2 did) after ``change`` to its dict."""
    def spoil(data):
        batch = pickle.loads(data, encoding="bytes")
        change(batch)
        return python2_pickle(batch)
    return spoil


def two_archives(tmp_path, archive):
    write_cifar_folder(tmp_path / "data", archive)
    write_cifar_folder(tmp_path / "data", cifar_archive("cifar-100-binary"))
    return tmp_path / "data"


def source_as_is(tmp_path, archive):
    return write_cifar_tar(tmp_path / "cifar.tar.gz", archive)


RECORD = 3073  # CIFAR-10 binary: 1 label byte + 3072 pixel bytes
ERRORS = {
    "truncated archive": ("cifar-10-batches-bin", cut_tar, [], "the archive is damaged"),
    "a header damaged inside the archive": (
        "cifar-10-batches-bin", bad_header("data_batch_3.bin"), [],
        "has a damaged tar header (its checksum fails) after cifar-10-batches-bin/batches.meta.txt: the archive is "
        "damaged; get it again"),
    "record of the wrong length": (
        "cifar-10-batches-bin", spoiled("data_batch_2.bin", lambda data: data + b"12345"), [],
        f"cifar-10-batches-bin/data_batch_2.bin: {3 * RECORD + 5} bytes is not a whole number of {RECORD}-byte "
        "records (1 label byte + 3072 pixel bytes)"),
    "label out of range": (
        "cifar-10-batches-bin", spoiled("data_batch_4.bin", set_byte(RECORD, 10)), [],
        "cifar-10-batches-bin/data_batch_4.bin: record 1 has label 10, but cifar-10-batches-bin/batches.meta.txt "
        "names 10 classes (labels 0..9)"),
    "coarse label out of range": (
        "cifar-100-binary", spoiled("train.bin", set_byte(2 * 3074, 20)), [],
        "cifar-100-binary/train.bin: record 2 has coarse label 20, but cifar-100-binary/coarse_label_names.txt "
        "names 20 classes"),
    "python label out of range": (
        "cifar-100-python", spoiled("train", python_batch(lambda b: b[b"fine_labels"].__setitem__(4, 100))), [],
        "cifar-100-python/train: record 4 has fine label 100, but cifar-100-python/meta names 100 classes"),
    "python records of the wrong length": (
        "cifar-10-batches-py", spoiled("data_batch_1", python_batch(lambda b: b.update({b"data": b[b"data"][:, 1:]}))),
        [], "cifar-10-batches-py/data_batch_1: b'data' is an array uint8 (3, 3071), not records of 3072 uint8 pixel"),
    "labels missing from a python batch": (
        "cifar-10-batches-py", spoiled("data_batch_5", python_batch(lambda b: b.pop(b"labels"))), [],
        "cifar-10-batches-py/data_batch_5: no b'labels' in it (a CIFAR batch holds its pixels as b'data' and its "
        "labels): not a batch of this archive's kind"),
    "pixels missing from a python batch": (  # said as "b'data' is <class 'NoneType'>" (walkthrough)
        "cifar-10-batches-py", spoiled("data_batch_2", python_batch(lambda b: b.pop(b"data"))), [],
        "cifar-10-batches-py/data_batch_2: no b'data' in it"),
    "missing meta file": (
        "cifar-10-batches-bin", spoiled("batches.meta.txt", None), [],
        "CIFAR-10 (binary version) without cifar-10-batches-bin/batches.meta.txt (its class names)"),
    "missing python meta file": (
        "cifar-100-python", spoiled("meta", None), [],
        "CIFAR-100 (python version) without cifar-100-python/meta (its class names)"),
    "missing batch": (
        "cifar-10-batches-py", spoiled("data_batch_3", None), [],
        "without cifar-10-batches-py/data_batch_3 (a batch of records)"),
    "meta naming a class twice": (
        "cifar-10-batches-bin", spoiled("batches.meta.txt", lambda data: data.replace(b"class_37", b"class_00")), [],
        "cifar-10-batches-bin/batches.meta.txt: names class_00 more than once"),
    "coarse labels of CIFAR-10": (
        "cifar-10-batches-py", source_as_is, ["--label-field", "coarse"],
        "--label-field coarse: CIFAR-10 (python version) has one label per image"),
    "fine labels of CIFAR-10": (  # taken, and dropped from the record unsaid (walkthrough)
        "cifar-10-batches-py", source_as_is, ["--label-field", "fine"],
        "--label-field fine: CIFAR-10 (python version) has one label per image; --label-field chooses between "
        "CIFAR-100's fine and coarse labels: leave it out"),
    "a val split": ("cifar-10-batches-bin", source_as_is, ["--split", "val"], "use --split test"),
    "resizing": ("cifar-10-batches-bin", source_as_is, ["--resize-short", "24"], "--resize-short does not apply"),
    "two extracted archives": ("cifar-10-batches-py", two_archives, [],
                               "holds 2 extracted CIFAR archives (cifar-10-batches-py, cifar-100-binary)"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_each_problem_is_one_clear_error(tmp_path, capsys, case):
    top, make, extra, expected = ERRORS[case]
    src = make(tmp_path, cifar_archive(top))
    code, printed, err = build(capsys, src, tmp_path / "out", *extra)  # a later --split wins
    assert code == 2 and printed == ""
    assert expected in one_error_line(err), err
    assert not (tmp_path / "out").exists()


def test_a_batch_file_of_another_record_count_is_built_with_a_warning(tmp_path, capsys):
    """A binary batch cut short at a record boundary is whole records all the same: only the
    published count (10,000 per CIFAR-10 file) tells. Each file is named, before the build, and
    every record it holds is built."""
    archive = cifar_archive("cifar-10-batches-bin")  # 3 records a file
    files = dict(archive.files)
    files["cifar-10-batches-bin/data_batch_2.bin"] = files["cifar-10-batches-bin/data_batch_2.bin"][:2 * RECORD]
    code, printed, err = build(capsys, write_cifar_tar(tmp_path / "cut.tar.gz", archive, files), tmp_path / "out")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    counts = [3, 2, 3, 3, 3]
    assert warnings == [f"warning: cifar-10-batches-bin/data_batch_{n}.bin holds {count} records, the official file "
                        f"10,000: cut short at a record boundary, or not the official archive; building the {count} it "
                        "holds" for n, count in enumerate(counts, 1)]
    assert f"train: {sum(counts)} images in = {sum(counts)} written" in printed


def test_the_published_record_counts_raise_no_warning(tmp_path):
    """CIFAR-10's test batch at its published 10,000 records reads without a warning; one record
    fewer is named (the split is read alone: no shards are built)."""
    from shards.cifar import read_cifar_split

    top = tmp_path / "cifar-10-batches-bin"
    top.mkdir()
    (top / "batches.meta.txt").write_text("".join(f"class_{n}\n" for n in range(10)) + "\n")
    records = np.random.default_rng(0).integers(0, 256, (10_000, RECORD), dtype=np.uint8)
    records[:, 0] %= 10
    (top / "test_batch.bin").write_bytes(records.tobytes())
    split = read_cifar_split(top, "cifar-10-binary", "test", None)
    assert split.count == 10_000 and split.unofficial_counts() == []
    (top / "test_batch.bin").write_bytes(records[:-1].tobytes())
    assert [line.split(",")[0] for line in read_cifar_split(top, "cifar-10-binary", "test", None).unofficial_counts()] \
        == ["cifar-10-batches-bin/test_batch.bin holds 9"]


def test_classes_of_another_label_field_are_refused(tmp_path, capsys):
    src, out = make_source(tmp_path, cifar_archive("cifar-100-binary"), "tar.gz"), tmp_path / "out"
    assert build(capsys, src, out, "--label-field", "coarse")[0] == 0
    code, _, err = build(capsys, src, out, "--classes", out / "train.json", split="test")
    assert code == 2
    assert "classes are not the 100 of cifar-100-binary/fine_label_names.txt" in one_error_line(err)
    assert not (out / "test.json").exists()


def test_another_data_sets_test_split_is_named_as_such(tmp_path, capsys):
    """CIFAR-10's test batch into a CIFAR-100 folder: the advice was --classes OUT/train.json, which
    the next build refused in turn (its classes are not SRC's): no class in common says what it is."""
    out = tmp_path / "out"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    assert build(capsys, make_source(tmp_path / "a", cifar_archive("cifar-100-python"), "tar.gz"), out)[0] == 0
    code, _, err = build(capsys, make_source(tmp_path / "b", cifar_archive("cifar-10-batches-py"), "tar.gz"), out,
                         split="test")
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"error: {out / 'train.json'}: the train split has another class list ("), line
    assert line.endswith("): SRC is another data set than the train split's; give that data set's test split, or "
                         "another OUT"), line
    assert not (out / "test.json").exists()


def test_label_field_is_for_cifar_only(tmp_path, capsys):
    make_imagefolder(tmp_path / "src", num_classes=2, per_class=2)
    code, _, err = build(capsys, tmp_path / "src", tmp_path / "out", "--label-field", "fine")
    assert code == 2 and "--label-field is for the CIFAR archives" in one_error_line(err)


# The python versions are unpickled by a loader that runs nothing --------------------------------

class RunsCode:
    """What a malicious pickle does: a global called while loading."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


def test_a_pickle_that_would_run_code_is_refused_subprocess(tmp_path):
    marker = tmp_path / "MARKER"
    payload = pickle.dumps(RunsCode(os.system, f"touch {marker}"), protocol=2)
    (tmp_path / "payload.pickle").write_bytes(payload)
    archive = cifar_archive("cifar-10-batches-py")
    files = {**archive.files, "cifar-10-batches-py/data_batch_2": payload}
    src = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", archive, files)
    result = cli("build", src, tmp_path / "out", "--split", "train", *SMALL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = one_error_line(result.stderr)
    assert "cifar-10-batches-py/data_batch_2: refused to unpickle: it calls for posix.system" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is live: the standard unpickler runs it.
    loader = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    run_process([sys.executable, "-c", loader, str(tmp_path / "payload.pickle")], timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_the_unpickler_refuses_every_global_but_numpy_arrays(tmp_path, protocol):
    made = tmp_path / "made"
    with pytest.raises(ShardsError, match=r"^batch: refused to unpickle: it calls for posix\.mkdir, "):
        load_cifar_pickle(pickle.dumps([RunsCode(os.mkdir, str(made))], protocol=protocol), "batch")
    assert not made.exists()


def test_the_unpickler_reads_what_python_2_and_3_wrote():
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 9],
             b"filenames": [b"a.png", b"b.png"]}
    loaded = load_cifar_pickle(python2_pickle(batch), "batch")
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"] == [3, 9] and loaded[b"filenames"] == [b"a.png", b"b.png"]
    # Python 3 writes bytes at protocol 2 as calls of _codecs.encode(text, 'latin1') (a user's re-pickled
    # copy), an empty one as bytes(): read as the standard unpickler reads them, at every protocol.
    batch[b"empty"] = b""
    for protocol in range(2, 6):
        payload = pickle.dumps(batch, protocol=protocol)
        loaded, reference = load_cifar_pickle(payload, "batch"), pickle.loads(payload, encoding="bytes")
        np.testing.assert_array_equal(loaded[b"data"], reference[b"data"])
        assert {k: v for k, v in loaded.items() if k != b"data"} == {k: v for k, v in reference.items() if k != b"data"}
    fortran = np.asfortranarray(batch[b"data"])  # protocol 5 keeps the memory order
    assert load_cifar_pickle(pickle.dumps(fortran, protocol=5), "batch").flags.f_contiguous
    np.testing.assert_array_equal(load_cifar_pickle(pickle.dumps(fortran, protocol=5), "batch"), batch[b"data"])
    # Only those calls: another codec, a size for bytes to allocate, a dtype numpy never writes as text.
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    for call, shown in (((codecs.encode, ("abc", "rot13")), "_codecs.encode called with (str, 'rot13')"),
                        ((bytes, (10**9,)), "bytes called with 1 argument(s)"),
                        ((frombuffer, (b"ab", "uint8", (2,), "C")), "numpy's _frombuffer called with other")):
        with pytest.raises(ShardsError, match=rf"^batch: not a readable pickle \(UnpicklingError: {re.escape(shown)}"):
            load_cifar_pickle(pickle.dumps([RunsCode(call[0], *call[1])], protocol=2), "batch")
    with pytest.raises(ShardsError, match=r"^batch: not a readable pickle"):
        load_cifar_pickle(python2_pickle(batch)[:-100], "batch")
