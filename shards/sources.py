"""The inputs SRC holds (shards/detect.py tells what kind of source it is).

Folders (an ImageFolder tree ``SRC/<wnid>/<file>``, or a flat folder plus ``--labels``, or an
extracted CUB-200-2011) are listed up front and read by random access. Tars (the ILSVRC2012
train tar of class tars, the flat val tar plus ``--labels``, the ImageNet-21k tar or tar.gz of
synset tars, a tar of ``<wnid>/<file>``, CUB_200_2011.tgz) are read once, as a stream, with one
image in memory at a time. A CIFAR split (read and checked by shards/cifar.py) gives one input
per record: its pixel bytes. An input carries its ground-truth boxes when the source has them
(shards/boxes.py): looked up by file stem for ImageNet, from bounding_boxes.txt for CUB.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple

from .boxes import Annotation
from .cifar import CifarSplit
from .cub import CubSplit
from .detect import SourceSpec
from .errors import ShardsError
from .labels import ValLabels
from .plan import listing_summary
from .tarends import EndCheckedTarInfo, end_problem
from .walk import walk_files

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LOSSY = re.compile(r"[^A-Za-z0-9_./-]")  # what _UNSAFE replaces besides the dots and slashes of paths
_MAX_KEY = 80  # keeps "<key>.json" within a plain USTAR name (100 bytes), which every reader parses


class InputItem(NamedTuple):
    """One input file. ``locator`` is (path, offset, size), size -1 meaning the whole file."""

    key: str
    wnid: str | None
    source: str  # relative to SRC; inside an archive for tars
    locator: tuple[str, int, int]
    rejected: str | None = None  # set when the input is refused before its bytes are read
    # The fields of the sample's .json besides width, height and source; None: {"wnid": wnid}.
    details: dict | None = None
    boxes: Annotation | None = None  # its ground-truth boxes, in the source image's pixels


def sample_key(wnid: str | None, relative: str) -> str:
    """A WebDataset key (no dots, ASCII) for an input, unique within its class."""
    stem = relative.rsplit(".", 1)[0] if "." in PurePosixPath(relative).name else relative
    key = (_UNSAFE.sub("_", stem).strip("_") or "unnamed") + _hash_if_lossy(stem)
    if wnid and not key.startswith(wnid):
        key = f"{_UNSAFE.sub('_', wnid)}{_hash_if_lossy(wnid)}_{key}"
    if len(key) > _MAX_KEY:
        key = f"{key[:_MAX_KEY - 17]}_{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}"
    return key


def second_key(key: str, source: str) -> str:
    """The key of an input whose ``sample_key`` an earlier input of its class already took: names
    that differ only in what keys drop ("y.jpg" and "y.png", "x.1.jpg" and "x_1.jpg") kept one of
    the two images and rejected the other as a duplicate. A hash of the whole source path tells
    them apart; only the second one's key changes, so every other key stays as it was."""
    suffix = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
    return f"{key[:_MAX_KEY - 17]}_{suffix}"


def _hash_if_lossy(name: str) -> str:
    """``_<hash of name>`` for a name that loses more than dots and slashes to ``_UNSAFE`` (other
    letters than ASCII, spaces: "猫" and "狗" both became "unnamed", "a b" and "a_b" one key, and
    the second image was rejected as a duplicate); '' for the others, whose keys stay as before."""
    return f"_{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}" if _LOSSY.search(name) else ""


class FolderListing(NamedTuple):
    items: list[InputItem]  # in sorted order
    classes: list[str]  # its class folders
    total_bytes: int
    files: str  # the plan's source_files: its files' paths and sizes summed up (plan.listing_summary)


def list_folder(spec: SourceSpec) -> FolderListing:
    """All inputs of a folder source, its class folders, its total bytes and a summary of its files."""
    if spec.cub is not None:
        return _list_cub_folder(spec.path, spec.cub)
    items, total, sizes = [], 0, []
    classes: list[str] = []
    for directory, dirnames, filenames in walk_files(spec.path):
        relative_dir = PurePosixPath(os.path.relpath(directory, spec.path))
        if relative_dir == PurePosixPath("."):
            classes = list(dirnames)
        for name in filenames:
            path = os.path.join(directory, name)
            size, unreadable = _size(path)
            total += size
            item = _folder_item(spec, relative_dir, name, path)
            items.append(item._replace(rejected=unreadable) if unreadable and not item.rejected else item)
            sizes.append((item.source, size))
    if spec.kind == "flat-folder":
        items += missing_labelled_items(spec.labels, {label_stem(PurePosixPath(i.source).name) for i in items})
    return FolderListing(items, classes, total, listing_summary(sizes))


def _size(path: str) -> tuple[int, str | None]:
    """A file's size, or 0 and why it cannot be read (a broken link, no permission): a reason
    to reject that input, not to stop the build."""
    try:
        return os.path.getsize(path), None
    except OSError as error:
        broken = os.path.islink(path) and not os.path.exists(path)
        return 0, f"unreadable: {'a broken link' if broken else error.strerror or error}"


def _folder_item(spec: SourceSpec, relative_dir: PurePosixPath, name: str, path: str) -> InputItem:
    source = str(relative_dir / name) if str(relative_dir) != "." else name
    locator = (path, 0, -1)
    if spec.kind == "flat-folder":
        return _labelled_item(spec, source, name, locator)
    if str(relative_dir) == ".":
        return InputItem(sample_key(None, name), None, source, locator, "not inside a class folder")
    wnid, _, inside = source.partition("/")
    return InputItem(sample_key(wnid, inside), wnid, source, locator, _label_disagrees(spec, wnid, name),
                     boxes=_boxes_of(spec, name))


def label_stem(name: str) -> str:
    """What --labels knows an image by: its file name up to the first dot."""
    return name.split(".")[0]


def _labelled_item(spec: SourceSpec, source: str, name: str, locator) -> InputItem:
    labels: ValLabels = spec.labels
    stem = label_stem(name)
    wnid = labels.wnid_by_stem.get(stem)
    reason = None if wnid else f"no label: {stem} is not in {labels.source}"
    return InputItem(sample_key(None, name), wnid, source, locator, reason, boxes=_boxes_of(spec, name))


def _label_disagrees(spec: SourceSpec, wnid: str, name: str) -> str | None:
    """Why an image in class folder ``wnid`` is rejected: --labels gives it another class. Labelled
    by its folder, it went into the shards under a class --labels denies, with the boxes --labels
    drew for the other class (walkthrough: a val set sorted into folders by a faulty script)."""
    labelled = spec.labels.wnid_by_stem.get(label_stem(PurePosixPath(name).name)) if spec.labels else None
    if labelled is None or labelled == wnid:
        return None
    return f"in class folder {wnid}, but {spec.labels.source} labels it {labelled}"


def _boxes_of(spec: SourceSpec, name: str) -> Annotation | None:
    """An ImageNet image's boxes, by the stem of its file name (as its labels are found)."""
    return spec.boxes.by_stem.get(PurePosixPath(name).name.split(".")[0]) if spec.boxes else None


def _list_cub_folder(root: Path, cub: CubSplit) -> FolderListing:
    """The inputs of an extracted CUB-200-2011: its split's images, then what images.txt and
    images/ disagree on."""
    items, total, seen, sizes = [], 0, set(), []
    images = root / "images"
    for directory, _, filenames in walk_files(images):
        for name in filenames:
            path = os.path.join(directory, name)
            relative = PurePosixPath(os.path.relpath(path, images)).as_posix()
            item = cub_item(cub, relative, f"{cub.root}images/{relative}", (path, 0, -1))
            if item is not None:
                seen.add(relative)
                size, unreadable = (0, None) if item.rejected else _size(path)
                items.append(item._replace(rejected=unreadable) if unreadable else item)
                total += size
                sizes.append((relative, size))
    return FolderListing(items + missing_cub_items(cub, seen), cub.classes, total, listing_summary(sizes))


def cub_item(cub: CubSplit, relative: str, source: str, locator) -> InputItem | None:
    """The input of the file ``images/<relative>`` of CUB-200-2011, None when it is the other split's."""
    image = cub.images.get(relative)
    key = sample_key(None, relative)  # the same for the folder and the .tgz: they shuffle alike
    if image is None:
        return None if relative in cub.others else InputItem(key, None, source, locator, "not listed in images.txt")
    details = {"class": image.class_name, "image_id": image.image_id}
    return InputItem(key, image.class_name, source, locator, details=details, boxes=Annotation([image.box]))


MISSING_FROM_SRC = "missing from SRC"  # the end of the reason of an input listed but not in SRC


def is_missing(item: InputItem) -> bool:
    """Whether ``item`` is an image a list (--labels, CUB's images.txt) names but SRC lacks."""
    return bool(item.rejected) and item.rejected.endswith(MISSING_FROM_SRC)


def missing_labelled_items(labels: ValLabels, seen: set[str]) -> list[InputItem]:
    """The images --labels lists but SRC lacks (a val set extracted in part), as rejected inputs:
    the build's summary counts and names them, as a CUB image missing from SRC. A build with
    --classes keeps only those of its classes (``build.py``): a val subset of a train subset's
    classes lacks the others' images by design."""
    return [InputItem(sample_key(None, stem), wnid, stem, ("", 0, 0),
                      f"listed in {labels.source}, {MISSING_FROM_SRC}")
            for stem, wnid in sorted(labels.wnid_by_stem.items()) if stem not in seen]


def missing_cub_items(cub: CubSplit, seen: set[str]) -> list[InputItem]:
    """The images of the split that images.txt lists but SRC lacks, as rejected inputs."""
    return [InputItem(sample_key(None, relative), image.class_name, f"{cub.root}images/{relative}", ("", 0, 0),
                      f"listed in images.txt, {MISSING_FROM_SRC}")
            for relative, image in sorted(cub.images.items()) if relative not in seen]


class _CountingReader:
    """A raw file that counts the bytes read, for progress on compressed streams."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self._file.close()


def _check_ended_at_marker(archive: tarfile.TarFile, what: str, *, images: int) -> None:
    problem = end_problem(archive, after=f"after {images} images")
    if problem:
        raise ShardsError(f"{what} {problem}")


class TarStream:
    """Iterates a tar source as ``(InputItem, bytes)`` with one image in memory at a time.

    ``class_names`` holds the class tars or folders seen so far; ``bytes_read`` the
    position in the (possibly compressed) archive file.
    """

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.class_names: set[str] = set()
        self._reader = _CountingReader(spec.path)
        self._cub_seen: set[str] = set()
        self._label_seen: set[str] = set()  # a flat tar's file stems, for missing_labelled_items

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read

    def __iter__(self) -> Iterator[tuple[InputItem, bytes]]:
        try:
            images = 0
            with tarfile.open(fileobj=self._reader, mode="r|*", tarinfo=EndCheckedTarInfo) as archive:
                for member in archive:
                    if member.isfile():
                        for item in self._member(archive, member):
                            images += 1
                            yield item
                    elif member.isdir() and self.spec.kind == "foldered-tar":
                        self._class_folder(member.name)
                _check_ended_at_marker(archive, f"SRC {self.spec.path}", images=images)
            if self.spec.cub is not None:
                yield from ((item, b"") for item in missing_cub_items(self.spec.cub, self._cub_seen))
            if self.spec.kind == "flat-tar":
                yield from ((item, b"") for item in missing_labelled_items(self.spec.labels, self._label_seen))
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardsError(f"SRC {self.spec.path}: the archive is damaged ({error})") from None
        finally:
            self._reader.close()

    def _class_folder(self, name: str) -> None:
        """A ``<wnid>/`` folder entry: a class even when it holds no image, as in a folder source
        (which warns of it). Dropped, the tar gave the classes after it other indices than the
        same folders unpacked, without a word (walkthrough)."""
        name = name.removeprefix("./").rstrip("/")
        if name not in ("", ".") and "/" not in name:
            self.class_names.add(name)

    def _member(self, archive, member) -> Iterator[tuple[InputItem, bytes]]:
        name = member.name.removeprefix("./")
        if self.spec.kind == "tar-of-tars":
            yield from self._class_tar(archive, member, name)
            return
        if self.spec.cub is not None:
            yield from self._cub_member(archive, member, name)
            return
        data = archive.extractfile(member).read()
        if self.spec.kind == "flat-tar":
            self._label_seen.add(label_stem(PurePosixPath(name).name))
            yield _labelled_item(self.spec, name, PurePosixPath(name).name, ("", 0, 0)), data
            return
        wnid, _, inside = name.partition("/")
        if not inside:
            yield InputItem(sample_key(None, name), None, name, ("", 0, 0), "not inside a class folder"), b""
            return
        self.class_names.add(wnid)
        rejected = _label_disagrees(self.spec, wnid, inside)
        yield (InputItem(sample_key(wnid, inside), wnid, name, ("", 0, 0), rejected, boxes=_boxes_of(self.spec, name)),
               b"" if rejected else data)

    def _cub_member(self, archive, member, name) -> Iterator[tuple[InputItem, bytes]]:
        images = f"{self.spec.cub.root}images/"
        if not name.startswith(images):
            return  # the metadata (read before the stream), parts/, attributes/, README
        relative = name[len(images):]
        item = cub_item(self.spec.cub, relative, name, ("", 0, 0))
        if item is None:  # the other split's image, skipped unread
            return
        if item.rejected:
            yield item, b""
            return
        self._cub_seen.add(relative)
        yield item, archive.extractfile(member).read()

    def _class_tar(self, archive, member, name) -> Iterator[tuple[InputItem, bytes]]:
        if not name.endswith(".tar"):
            yield InputItem(sample_key(None, name), None, name, ("", 0, 0), "not a class tar"), b""
            return
        wnid = PurePosixPath(name).name[: -len(".tar")]
        self.class_names.add(wnid)
        try:
            with tarfile.open(fileobj=archive.extractfile(member), mode="r|", tarinfo=EndCheckedTarInfo) as inner:
                images = 0
                for image in inner:
                    if image.isfile():
                        inside = image.name.removeprefix("./")
                        rejected = _label_disagrees(self.spec, wnid, inside)
                        item = InputItem(sample_key(wnid, inside), wnid, f"{name}/{inside}", ("", 0, 0), rejected)
                        images += 1
                        yield item, b"" if rejected else inner.extractfile(image).read()
                _check_ended_at_marker(inner, f"class tar {name}", images=images)
        except (tarfile.TarError, ShardsError) as error:
            reason = f"damaged class tar, its remaining images are lost ({error})"
            yield InputItem(sample_key(wnid, name), wnid, name, ("", 0, 0), reason), b""


def cifar_inputs(split: CifarSplit) -> Iterator[tuple[InputItem, bytes]]:
    """The records of a CIFAR split in archive order, each an input whose bytes are its pixels.

    Keys are ``<batch file>_<record>`` in both versions of an archive (``data_batch_1_00042``), so
    the binary and python versions of the same data shuffle alike. The class name stands where
    other sources have a wnid.
    """
    several = len(split.class_names) > 1  # CIFAR-100: both labels go into the .json
    for batch in split.batches:
        stem = PurePosixPath(batch.member).name.removesuffix(".bin")
        for record, pixels in enumerate(batch.pixels):
            name = split.classes[int(batch.labels[split.label_field][record])]
            details = {"class": name, "member": batch.member, "record": record}
            if batch.filenames is not None:
                details["filename"] = batch.filenames[record]
            if several:
                details.update({f"{field}_label": int(labels[record]) for field, labels in batch.labels.items()})
            item = InputItem(f"{stem}_{record:05d}", name, f"{batch.member}#{record}", ("", 0, 0), details=details)
            yield item, pixels.tobytes()
