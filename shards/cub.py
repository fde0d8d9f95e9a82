"""CUB-200-2011 (Caltech-UCSD Birds) as a source: ``CUB_200_2011.tgz`` as downloaded, or the
``CUB_200_2011/`` folder it extracts to (any folder holding its metadata files).

The metadata are five text files of numbered lines beside ``images/<class>/<file>.jpg``:
``images.txt`` (``<image_id> <path under images/>``), ``image_class_labels.txt`` (``<image_id>
<class_id>``), ``classes.txt`` (``<class_id> <name>``, e.g. ``1 001.Black_footed_Albatross``),
``bounding_boxes.txt`` (``<image_id> <x> <y> <width> <height>``, one box per image) and
``train_test_split.txt`` (``<image_id> <is_training_image>``, 1 = train). ``--split train`` is the
images marked 1, ``--split test`` the others.

Classes are the ``classes.txt`` names in sorted order, the rule of every other non-CIFAR source
(timm/torchvision's ImageFolder), so ``--classes OUT/train.json`` means the same thing for every
source; the official names start with a zero-padded class id (``001.``), so for the real data set
sorted order is also ``classes.txt`` order and a class index is ``class_id - 1``, as in
wsolevaluation's CUB metadata.

The metadata are read and checked whole before any image: from a folder directly, from the
archive by a first pass over its stream that stops once it has the five files (they are small;
it reads the whole stream only when they come after the images).
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .boxes import box_from_xywh
from .errors import ShardsError

TOP = "CUB_200_2011"  # the archive's top folder
KINDS = ("cub-folder", "cub-tar")
# Together these tell a CUB folder whatever its name; the tar is told by its top folder.
MARKERS = ("images.txt", "bounding_boxes.txt", "train_test_split.txt")
_FILES = {  # metadata file -> the fields after the number each line starts with
    "images.txt": ("path",),
    "image_class_labels.txt": ("class_id",),
    "classes.txt": ("name",),
    "bounding_boxes.txt": ("x", "y", "width", "height"),
    "train_test_split.txt": ("is_training_image",),
}
_SPLITS = {"train": "1", "test": "0"}


class CubImage(NamedTuple):
    """One image of the data set."""

    image_id: int
    class_name: str
    box: list[float]  # [x0, y0, x1, y1]


@dataclass(frozen=True)
class CubSplit:
    """One split of CUB-200-2011, its metadata checked."""

    root: str  # the path prefix of its files: "CUB_200_2011/" (a tar's members; a folder's name)
    classes: list[str]  # every classes.txt name, sorted
    images: dict[str, CubImage]  # this split's images by their images.txt path (under images/)
    others: frozenset[str]  # the other split's paths: not inputs of this build
    warnings: tuple[str, ...] = ()  # said before the build: metadata lines of images images.txt lacks

    @property
    def class_source(self) -> str:
        return f"{self.root}classes.txt"

    @property
    def box_source(self) -> str:
        return f"{self.root}bounding_boxes.txt"


def find_cub_root(folder: Path) -> Path | None:
    """The extracted CUB-200-2011 ``folder`` is, or holds as ``CUB_200_2011/``; None when neither."""
    if folder.resolve().name == TOP or all((folder / name).is_file() for name in MARKERS):
        return folder
    return folder / TOP if (folder / TOP).is_dir() else None


def read_cub_split(path: Path, kind: str, split: str) -> CubSplit:
    """Read and check the metadata of CUB-200-2011 (``path``: the folder or the archive) and keep ``split``."""
    if split not in _SPLITS:
        raise ShardsError(f"--split {split}: CUB-200-2011 has a train and a test split (train_test_split.txt)")
    if kind == "cub-folder":
        root, files = f"{path.name}/", _folder_files(path)
    else:
        root, files = _archive_files(path)
    where = f"{path}/" if kind == "cub-folder" else f"{path}:{root}"
    tables = {name: _numbered_lines(data, f"{where}{name}", _FILES[name]) for name, data in files.items()}
    names = {number: fields[0] for number, (fields, _) in tables["classes.txt"].items()}
    if len(set(names.values())) != len(names):
        raise ShardsError(f"{where}classes.txt: a class name is given twice")
    images, others, listed = {}, set(), {}
    for image_id, ((relative,), line) in tables["images.txt"].items():
        if relative in listed:
            # Keyed by path, the later entry replaced the earlier (its class and box) or put one
            # image in both splits, without a word (walkthrough).
            raise ShardsError(f"{where}images.txt:{line}: {relative} is listed before, at line {listed[relative]}: "
                              "one image in two entries would take another's class and box, or be in both splits")
        listed[relative] = line
        (class_id,), label_line = _entry(tables, "image_class_labels.txt", image_id, relative, where)
        (marked,), split_line = _entry(tables, "train_test_split.txt", image_id, relative, where)
        values, box_line = _entry(tables, "bounding_boxes.txt", image_id, relative, where)
        if class_id not in names:
            raise ShardsError(f"{where}image_class_labels.txt:{label_line}: class {class_id} is not in classes.txt")
        if marked not in _SPLITS.values():
            raise ShardsError(f"{where}train_test_split.txt:{split_line}: is_training_image is {marked!r}, not 1 or 0")
        box = box_from_xywh(list(values), f"{where}bounding_boxes.txt:{box_line}")
        if marked == _SPLITS[split]:
            images[relative] = CubImage(int(image_id), names[class_id], box)
        else:
            others.add(relative)
    if not images:  # said here: the build would only find "no files", which is not the problem
        raise ShardsError(f"--split {split}: {where}train_test_split.txt marks none of the {len(others)} images of "
                          f"images.txt as {split} (is_training_image {_SPLITS[split]})")
    return CubSplit(root, sorted(names.values()), images, frozenset(others), _unlisted(tables, where))


def _unlisted(tables: dict, where: str) -> tuple[str, ...]:
    """One warning for the lines of the other metadata files for image ids images.txt does not have
    (images.txt cut down to a subset, or ids off by one): those lines are left out."""
    found = {name: {number for number in tables[name] if number not in tables["images.txt"]}
             for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")}
    ids = sorted(set().union(*found.values()), key=int)
    if not ids:
        return ()
    files = ", ".join(f"{name} ({len(numbers)})" for name, numbers in found.items() if numbers)
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return (f"{where.rstrip('/')}: lines of {files} for {len(ids)} image(s) that images.txt does not list "
            f"(image {shown}): left out",)


def _entry(tables: dict, name: str, image_id: str, relative: str, where: str):
    """(fields, line) of ``image_id`` in the metadata file ``name``."""
    if image_id not in tables[name]:
        raise ShardsError(f"{where}{name}: no line for image {image_id} ({relative}) of images.txt")
    return tables[name][image_id]


def _numbered_lines(data: bytes, where: str, fields: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], int]]:
    """``number -> (fields, line)`` of a metadata file; a line of another shape is an error naming it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ShardsError(f"{where}: not a text file") from None
    entries: dict[str, tuple[tuple[str, ...], int]] = {}
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        # A path or class name is the rest of the line; numbers are separated by blanks.
        parts = content.split(maxsplit=1 if fields[-1] in ("path", "name") else -1)
        if len(parts) != 1 + len(fields) or not parts[0].isdigit() or parts[0] in entries:
            shape = " ".join(f"<{field}>" for field in ("number", *fields))
            problem = "its number was given before" if parts[0] in entries else f"expected '{shape}'"
            raise ShardsError(f"{where}:{line}: {problem}, got {content.strip()!r}")
        entries[parts[0]] = (tuple(part.strip() for part in parts[1:]), line)
    return entries


def _folder_files(folder: Path) -> dict[str, bytes]:
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise ShardsError(f"SRC {folder}: CUB-200-2011 without {', '.join(missing)}: an incomplete extraction?")
    return {name: (folder / name).read_bytes() for name in _FILES}


def _archive_files(path: Path) -> tuple[str, dict[str, bytes]]:
    """The member prefix of the metadata files and their bytes: a first pass over the stream that
    stops as soon as all five are in (the images are skipped, never held)."""
    found: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                folder, _, name = member.name.removeprefix("./").rpartition("/")
                if member.isfile() and name in _FILES:
                    files = found.setdefault(f"{folder}/" if folder else "", {})
                    files[name] = archive.extractfile(member).read()
                    if len(files) == len(_FILES):
                        return f"{folder}/" if folder else "", files
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ShardsError(f"SRC {path}: the archive is damaged or unreadable ({error})") from None
    prefix, files = max(found.items(), key=lambda entry: len(entry[1]), default=(f"{TOP}/", {}))
    missing = ", ".join(f"{prefix}{name}" for name in _FILES if name not in files)
    raise ShardsError(f"SRC {path}: CUB-200-2011 without {missing}: an incomplete download?")


def is_cub_member(name: str) -> bool:
    """Whether a tar member's name marks CUB-200-2011: its top folder, or a metadata file no
    other source has (``images.txt`` alone is too common a name)."""
    return name.split("/")[0] == TOP or PurePosixPath(name).name in ("bounding_boxes.txt", "train_test_split.txt")
