"""The official CIFAR archives (https://www.cs.toronto.edu/~kriz/cifar.html) as a source:
``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``, ``cifar-10-python.tar.gz`` and
``cifar-100-python.tar.gz`` as downloaded, or the folder each one extracts to.

Binary versions: fixed-size records, the label byte(s) then 3072 pixel bytes (the R, G and B
planes of a 32x32 image, rows in order); a CIFAR-100 record starts with its coarse label, then
its fine one. Class names: text files, one name a line. Python versions: dicts pickled by
Python 2 (read by shards/unpickle.py), ``b'data'`` (records x 3072 uint8, the same pixel
order), the labels and ``b'filenames'``; class names in a pickled meta dict. A label is the
position of its name in the meta file (the CIFAR convention), not its rank among sorted names.

A split is read whole into memory (at most 50,000 records, 150 MB) and checked before anything
is written: a damaged archive, a missing file, a record of the wrong length or a label without
a class name is an error naming the file.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ShardsError
from .tarends import EndCheckedTarInfo, end_problem
from .unpickle import load_cifar_pickle

PIXELS = 3072  # bytes of one image: R, G and B planes of SIDE x SIDE
SIDE = 32


@dataclass(frozen=True)
class LabelKind:
    """Where one kind of label of an archive lives."""

    names_file: str  # the meta file holding its class names
    names_key: bytes | None = None  # python versions: the meta dict's key (binary: one name a line)
    batch_key: bytes | None = None  # python versions: the batch dict's key
    byte: int | None = None  # binary versions: its position in a record


@dataclass(frozen=True)
class CifarLayout:
    """One of the official archives: its folder, its batch files and where its labels are."""

    top: str  # the folder every file of the archive is in
    title: str
    splits: dict[str, tuple[str, ...]]  # split -> its batch files, in order
    labels: dict[str, LabelKind]  # --label-field -> where it lives; the first is the default
    # split -> records in each of its batch files as published: a binary file cut short at a record
    # boundary still reads as whole records, and only this count tells
    official_records: dict[str, int]
    label_bytes: int = 0  # binary versions: label bytes before the pixels of a record


LAYOUTS = {  # source kind (the official archive's name) -> its layout
    "cifar-10-binary": CifarLayout(
        "cifar-10-batches-bin", "CIFAR-10 (binary version)",
        {"train": tuple(f"data_batch_{n}.bin" for n in range(1, 6)), "test": ("test_batch.bin",)},
        {"fine": LabelKind("batches.meta.txt", byte=0)}, {"train": 10_000, "test": 10_000}, label_bytes=1),
    "cifar-100-binary": CifarLayout(
        "cifar-100-binary", "CIFAR-100 (binary version)", {"train": ("train.bin",), "test": ("test.bin",)},
        {"fine": LabelKind("fine_label_names.txt", byte=1), "coarse": LabelKind("coarse_label_names.txt", byte=0)},
        {"train": 50_000, "test": 10_000}, label_bytes=2),
    "cifar-10-python": CifarLayout(
        "cifar-10-batches-py", "CIFAR-10 (python version)",
        {"train": tuple(f"data_batch_{n}" for n in range(1, 6)), "test": ("test_batch",)},
        {"fine": LabelKind("batches.meta", b"label_names", b"labels")}, {"train": 10_000, "test": 10_000}),
    "cifar-100-python": CifarLayout(
        "cifar-100-python", "CIFAR-100 (python version)", {"train": ("train",), "test": ("test",)},
        {"fine": LabelKind("meta", b"fine_label_names", b"fine_labels"),
         "coarse": LabelKind("meta", b"coarse_label_names", b"coarse_labels")},
        {"train": 50_000, "test": 10_000}),
}
KIND_BY_FOLDER = {layout.top: kind for kind, layout in LAYOUTS.items()}


@dataclass(frozen=True)
class CifarBatch:
    """The records of one batch file."""

    member: str  # "<top folder>/<file>", as in the archive
    pixels: np.ndarray  # records x PIXELS uint8
    labels: dict[str, np.ndarray]  # every label kind of the archive -> one label per record
    filenames: list[str] | None  # python versions: each record's original file name


@dataclass(frozen=True)
class CifarSplit:
    """One split of an archive, checked: every label has a class name."""

    layout: CifarLayout
    label_field: str  # the label kind that is the class
    class_names: dict[str, list[str]]  # every label kind -> its class names, in meta-file order
    batches: list[CifarBatch]
    source_bytes: int  # the archive's size, or the size of the files read from the folder
    official_records: int  # records in each of the split's batch files as published

    @property
    def classes(self) -> list[str]:
        return self.class_names[self.label_field]

    @property
    def class_source(self) -> str:
        """The meta file (and key) the class list comes from."""
        kind = self.layout.labels[self.label_field]
        key = f" ({kind.names_key.decode()})" if kind.names_key else ""
        return f"{self.layout.top}/{kind.names_file}{key}"

    @property
    def count(self) -> int:
        return sum(len(batch.pixels) for batch in self.batches)

    def unofficial_counts(self) -> list[str]:
        """A warning for each batch file that holds another number of records than the published
        one: a file cut short at a record boundary reads as whole records, or an archive that is
        not the official one (its images are built all the same; the user should know)."""
        official = self.official_records
        return [f"{batch.member} holds {len(batch.pixels):,} records, the official file {official:,}: cut short at "
                f"a record boundary, or not the official archive; building the {len(batch.pixels):,} it holds"
                for batch in self.batches if len(batch.pixels) != official]


def resolve_label_field(source_kind: str, requested: str | None) -> str:
    """The label kind that becomes the class: ``--label-field``, fine when not given."""
    layout = LAYOUTS[source_kind]
    if requested is not None and len(layout.labels) == 1:  # `fine` on CIFAR-10 was taken and dropped unsaid
        raise ShardsError(f"--label-field {requested}: {layout.title} has one label per image; --label-field "
                          "chooses between CIFAR-100's fine and coarse labels: leave it out")
    return requested or next(iter(layout.labels))


def read_cifar_split(path: Path, source_kind: str, split: str, label_field: str | None) -> CifarSplit:
    """Read and check the ``split`` batches of a CIFAR archive (``path``: the .tar.gz or the
    extracted top folder) and the class names of every label kind."""
    layout = LAYOUTS[source_kind]
    chosen = resolve_label_field(source_kind, label_field)
    if split not in layout.splits:
        raise ShardsError(f"--split {split}: {layout.title} has a train and a test split (its test batch is "
                          "the set CIFAR results are reported on): use --split test")
    meta_files = {kind.names_file for kind in layout.labels.values()}
    files = _read_files(Path(path), layout, meta_files | set(layout.splits[split]))
    names = {label: _class_names(files[kind.names_file], kind, f"{layout.top}/{kind.names_file}")
             for label, kind in layout.labels.items()}
    batches = [_batch(files[name], layout, f"{layout.top}/{name}") for name in layout.splits[split]]
    for batch in batches:
        for label, values in batch.labels.items():
            _check_labels(batch.member, values, names[label], layout, label)
    size = Path(path).stat().st_size if Path(path).is_file() else sum(len(data) for data in files.values())
    return CifarSplit(layout, chosen, names, batches, size, layout.official_records[split])


def _read_files(path: Path, layout: CifarLayout, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the ``wanted`` files of the archive's top folder, from the tar or the folder."""
    found: dict[str, bytes] = {}
    try:
        if path.is_dir():
            found = {name: (path / name).read_bytes() for name in sorted(wanted) if (path / name).is_file()}
        else:
            # A stream: a .tar.gz is decompressed once.
            with tarfile.open(path, "r|*", tarinfo=EndCheckedTarInfo) as archive:
                last = None
                for member in archive:
                    last = member.name
                    folder, _, name = member.name.removeprefix("./").partition("/")
                    if member.isfile() and folder == layout.top and name in wanted:
                        found[name] = archive.extractfile(member).read()
                problem = end_problem(archive, after=f"after {last}" if last else "at its start")
                if wanted - found.keys() and problem:  # what is missing was lost, not left out
                    raise ShardsError(f"SRC {path} {problem}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ShardsError(f"SRC {path}: the archive is damaged or unreadable ({error})") from None
    missing = sorted(wanted - found.keys())
    if missing:
        roles = {kind.names_file: "its class names" for kind in layout.labels.values()}
        listed = ", ".join(f"{layout.top}/{name} ({roles.get(name, 'a batch of records')})" for name in missing)
        raise ShardsError(f"SRC {path}: {layout.title} without {listed}: an incomplete download or extraction?")
    return found


def _bytes_keyed(obj):
    """A dict pickled with str keys and names (a user's Python 3 copy: ``'data'``, ``'fine_labels'``,
    ``'fine_label_names'``) as the official bytes-keyed one, which the rest reads."""
    if not isinstance(obj, dict) or all(isinstance(key, bytes) for key in obj):
        return obj
    as_bytes = {}
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            value = [item.encode("utf-8") for item in value]
        as_bytes[key.encode("utf-8") if isinstance(key, str) else key] = value
    return as_bytes


def _class_names(data: bytes, kind: LabelKind, source: str) -> list[str]:
    if kind.names_key is None:
        names = [line.strip() for line in _text(data, source).splitlines()]
        while names and not names[-1]:
            names.pop()  # the official text files end in blank lines
    else:
        meta = _bytes_keyed(load_cifar_pickle(data, source))
        listed = meta.get(kind.names_key) if isinstance(meta, dict) else None
        if not isinstance(listed, list) or not all(isinstance(name, bytes) for name in listed):
            raise ShardsError(f"{source}: no list of class names under {kind.names_key!r}")
        names = [_text(name, source) for name in listed]
    blank = next((position for position, name in enumerate(names) if not name), None)
    twice = sorted({name for name in names if names.count(name) > 1})
    if not names or blank is not None or twice:
        problem = ("no class names" if not names else f"class {blank} has no name" if blank is not None
                   else f"names {', '.join(twice)} more than once")
        raise ShardsError(f"{source}: {problem}; a CIFAR meta file names each class once, in label order")
    return names


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ShardsError(f"{source}: class names that are not text") from None


def _batch(data: bytes, layout: CifarLayout, member: str) -> CifarBatch:
    if layout.label_bytes:
        return _binary_batch(data, layout, member)
    return _python_batch(data, layout, member)


def _binary_batch(data: bytes, layout: CifarLayout, member: str) -> CifarBatch:
    size = layout.label_bytes + PIXELS
    if not data or len(data) % size:
        raise ShardsError(
            f"{member}: {len(data)} bytes is not a whole number of {size}-byte records ({layout.label_bytes} "
            f"label byte{'s' if layout.label_bytes > 1 else ''} + {PIXELS} pixel bytes): cut short, or not a "
            f"{layout.title} batch"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, size)
    labels = {field: records[:, kind.byte].astype(np.int64) for field, kind in layout.labels.items()}
    return CifarBatch(member, records[:, layout.label_bytes:], labels, None)


def _python_batch(data: bytes, layout: CifarLayout, member: str) -> CifarBatch:
    batch = _bytes_keyed(load_cifar_pickle(data, member))
    if not isinstance(batch, dict):
        raise ShardsError(f"{member}: a pickled {type(batch).__name__}, not a CIFAR batch (a dict)")
    missing = [key for key in (b"data", *(kind.batch_key for kind in layout.labels.values())) if key not in batch]
    if missing:  # said as missing, not as "b'data' is <class 'NoneType'>"
        raise ShardsError(f"{member}: no {' or '.join(map(repr, missing))} in it (a CIFAR batch holds its pixels as "
                          f"b'data' and its labels): not a batch of this archive's kind")
    pixels = batch.get(b"data")
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
            and pixels.shape[1] == PIXELS and len(pixels)):
        shown = f"an array {pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else repr(type(pixels))
        raise ShardsError(f"{member}: b'data' is {shown}, not records of {PIXELS} uint8 pixel bytes (one a row)")
    labels = {field: _python_labels(batch.get(kind.batch_key), len(pixels), member, kind.batch_key)
              for field, kind in layout.labels.items()}
    filenames = batch.get(b"filenames")
    if filenames is not None:
        if not (isinstance(filenames, list) and len(filenames) == len(pixels)
                and all(isinstance(name, bytes) for name in filenames)):
            raise ShardsError(f"{member}: b'filenames' is not a list of {len(pixels)} names, one per record")
        filenames = [name.decode("utf-8", "backslashreplace") for name in filenames]
    return CifarBatch(member, np.ascontiguousarray(pixels), labels, filenames)


def _python_labels(values, count: int, member: str, key: bytes) -> np.ndarray:
    if not (isinstance(values, list) and len(values) == count and all(type(v) is int for v in values)):
        raise ShardsError(f"{member}: {key!r} is not a list of {count} integer labels, one per record")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:  # past int64: out of range like any label without a class name
        huge = next(v for v in values if not -(1 << 63) <= v < 1 << 63)
        raise ShardsError(f"{member}: label {huge} under {key!r} is out of range") from None


def _check_labels(member: str, values: np.ndarray, names: list[str], layout: CifarLayout, field: str) -> None:
    bad = np.flatnonzero((values < 0) | (values >= len(names)))
    if len(bad):
        record, kind = int(bad[0]), layout.labels[field]
        which = f"{field} label" if len(layout.labels) > 1 else "label"
        raise ShardsError(f"{member}: record {record} has {which} {int(values[record])}, but "
                          f"{layout.top}/{kind.names_file} names {len(names)} classes (labels 0..{len(names) - 1})")
