"""What SRC is: its layout, told from its first files before any work is done.

Only the first files are looked at (a 140 GB tar is not read to its end, and a .tar.gz is read
as a stream), but enough of them to tell whether SRC holds images at all: a source that holds
none (a folder of annotations, a tar of feature files) is an error that says what it does hold,
not a build that rejects every input. The official CIFAR archives, which hold pixel arrays
rather than image files, are told by their top folder (shards/cifar.py reads them), and so is
CUB-200-2011 (shards/cub.py), whose folder may also be told by its metadata files.
"""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .boxes import BoxTable
from .cifar import KIND_BY_FOLDER, LAYOUTS
from .cub import CubSplit, find_cub_root, is_cub_member
from .errors import ShardsError
from .labels import ValLabels
from .walk import walk_files

# The extension is only a hint (ImageNet has a PNG named .JPEG): a file named otherwise still
# counts as an image when its first bytes are those of a format Pillow reads.
_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff",
                               ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")
_SAMPLE_FILES = 32  # files looked at before deciding that SRC holds no images...
_SAMPLE_BYTES = 64 << 20  # ...nor further into a tar than this (a .tar.gz is decompressed to get there)
# Folder names of a data set's splits, and the --split each one is.
_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLIT_NAMES = _SPLIT_FOLDERS  # folder name (lower case) -> the split it names
_KNOWN_LAYOUTS = ("not a layout `shards build` knows (an ImageFolder tree SRC/<wnid>/<image>, a tar of class "
                  "tars, a tar of <wnid>/<image>, a flat folder or tar of images with --labels, an official "
                  "CIFAR archive, CUB_200_2011.tgz or the folder either extracts to)")


@dataclass(frozen=True)
class SourceSpec:
    """The detected kind of SRC."""

    # imagefolder | flat-folder | tar-of-tars | flat-tar | foldered-tar | cub-folder | cub-tar | a key of cifar.LAYOUTS
    kind: str
    path: Path  # for an extracted CIFAR archive or CUB-200-2011, its top folder (SRC may be the folder above)
    labels: ValLabels | None
    # Set by the build once the split is known (shards/build.py): ImageNet boxes by file stem
    # (--boxes, or the LOC csv's), and a CUB split's metadata.
    boxes: BoxTable | None = None
    cub: CubSplit | None = None

    @property
    def streaming(self) -> bool:
        return self.kind.endswith("tar") or self.kind == "tar-of-tars"

    @property
    def is_cifar(self) -> bool:
        return self.kind in LAYOUTS


def detect_source(path: Path, labels: ValLabels | None, split: str | None = None) -> SourceSpec:
    """Name the kind of SRC, or explain why it is none of the supported ones; ``split`` (the
    build's) picks the folder to suggest when SRC is the folder above a data set's splits."""
    path = Path(path)
    if not path.exists():
        raise ShardsError(f"SRC {path}: no such file or folder")
    if path.is_dir():
        cifar = _cifar_folder(path)
        if cifar:
            return SourceSpec(KIND_BY_FOLDER[cifar.resolve().name], cifar, labels)
        cub = find_cub_root(path)
        if cub:
            return SourceSpec("cub-folder", cub, labels)
        if find_cub_root(path.resolve().parent) == path.resolve().parent and path.name == "images":
            # Read as an ImageFolder it would give both CUB splits as one, without boxes.
            raise ShardsError(f"SRC {path}: the images folder of an extracted CUB-200-2011; give the folder above it, "
                              f"{path.resolve().parent}, as SRC (--split picks the images of train_test_split.txt)")
        kind, first_image = _folder_kind(path)
        if kind == "imagefolder":
            _refuse_split_folders(path, split)
            _refuse_nested_split(path, first_image, split, in_tar=False)
    elif tarfile.is_tarfile(path) or path.name.endswith((".tar.gz", ".tgz")):
        kind, first_image = _tar_kind(path)
        if kind == "foldered-tar":
            _refuse_nested_split(path, first_image, split, in_tar=True)
    elif path.resolve().parent.name in KIND_BY_FOLDER:  # `.../cifar-100-python/test`: one file of the archive
        raise ShardsError(f"SRC {path}: a file of the extracted CIFAR archive; give its folder, "
                          f"{path.parent}, or the archive as downloaded as SRC (--split picks the batches)")
    else:
        raise ShardsError(f"SRC {path}: neither a folder nor a tar archive")
    if kind.startswith("flat") and labels is None:
        raise ShardsError(
            f"SRC {path} holds images without class folders ({kind}): give --labels "
            "LOC_val_solution.csv or the ILSVRC2012 devkit"
        )
    return SourceSpec(kind, path, labels)


def _cifar_folder(path: Path) -> Path | None:
    """The extracted CIFAR archive ``path`` is, or holds as a subfolder (the folder ``tar xzf`` ran in)."""
    if path.resolve().name in KIND_BY_FOLDER:
        # Extracted inside a folder of its own name (`tar xzf` run in cifar-10-batches-py/, the
        # downloaded .tar.gz beside it): the inner folder, when the outer one lacks its files.
        nested = path / path.resolve().name
        if nested.is_dir():
            inner_files = [child.name for child in nested.iterdir() if child.is_file()]
            if inner_files and not any((path / name).is_file() for name in inner_files):
                return nested
        return path
    found = sorted(child.name for child in path.iterdir() if child.name in KIND_BY_FOLDER and child.is_dir())
    if len(found) > 1:
        raise ShardsError(f"SRC {path} holds {len(found)} extracted CIFAR archives ({', '.join(found)}): "
                          "give the one to build as SRC")
    return path / found[0] if found else None


def _refuse_split_folders(path: Path, split: str | None) -> None:
    """Refuse the folder above a data set's splits (RAW/train/<wnid>/..., RAW/val/...): read as an
    ImageFolder it would give classes named train and val, each holding every image of its split.
    A split folder is told by its name and by holding folders (a class holds images); and by
    company: two of them, or one that is SRC's only folder. A single class merely named like a
    split among others (CIFAR-100 and COCO have a class "train") may hold folders of its own."""
    with os.scandir(path) as entries:
        folders = [entry for entry in entries if entry.is_dir()]
    splits = sorted(entry.name for entry in folders
                    if entry.name.lower() in _SPLIT_FOLDERS and _holds_folders(entry.path))
    if not (len(splits) >= 2 or (splits and len(folders) == 1)):
        return
    wanted = [name for name in splits if _SPLIT_FOLDERS[name.lower()] == split]
    named = ", ".join(str(path / name) for name in splits)
    verb = "looks like a split folder" if len(splits) == 1 else "look like split folders"
    raise ShardsError(f"{named} {verb}, not classes: give {path / (wanted or splits)[0]} as SRC")


def _refuse_nested_split(path: Path, first_image: str, split: str | None, *, in_tar: bool) -> None:
    """Refuse a source whose images lie under a split folder below its top (``imagenet/train/<wnid>/``
    in a tar of the extracted folder, ``Data/CLS-LOC/train/<wnid>/`` of Kaggle's ImageNet): the class
    of an image is its first folder, so every image would be in one class named ``imagenet`` or
    ``Data``, or in classes named train and val. Told from the first image (a tar has not been read
    further); a class folder merely named like a split (``train/<image>``) is a class. In a folder,
    SRC's own split folders are ``_refuse_split_folders``' to tell (by company: CIFAR-100 has a class
    "train", which may hold subfolders), and a split-named folder without folders below it counts
    only beside another one (``Data/CLS-LOC/test/<image>`` beside ``train/``); a tar has no such
    company to look at, so ``train/<folder>/<image>`` first in a tar is taken as a split folder."""
    folders = PurePosixPath(first_image).parts[:-1]
    at = next((i for i, name in enumerate(folders) if name.lower() in _SPLIT_FOLDERS), None)
    if at is None or len(folders) < 2:
        return
    above = PurePosixPath(*folders[:at])
    if not in_tar:
        beside = [name for name in os.listdir(path / above)
                  if name.lower() in _SPLIT_FOLDERS and (path / above / name).is_dir()]
        if at == 0 or (at == len(folders) - 1 and len(beside) < 2):
            return
    found = folders[at]
    wanted = next((name for name in _SPLIT_FOLDERS if _SPLIT_FOLDERS[name] == split), found)
    if in_tar:
        under = PurePosixPath(*folders[:at + 1])
        raise ShardsError(f"SRC {path}: its images lie under {under}/ (first: {first_image}), a split folder, not "
                          f"classes: a tar of <wnid>/<image> is read by its first folder as the class; extract it "
                          f"and give its {above / wanted} folder as SRC")
    give = next((path / above / name for name in sorted(beside) if _SPLIT_FOLDERS[name.lower()] == split),
                path / above / found)
    raise ShardsError(f"SRC {path}: its images lie under {path / above / found}/ (first: {first_image}), a split "
                      f"folder, not classes: give {give} as SRC")


def _holds_folders(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(entry.is_dir() for entry in entries)
    except OSError:  # unreadable: no evidence (the build rejects its files, with why)
        return False


def _looks_like_image(name: str, read_head: Callable[[], bytes]) -> bool:
    """Whether a file is an image by its extension or, failing that, its first 16 bytes."""
    if PurePosixPath(name).suffix.lower() in _IMAGE_EXTENSIONS:
        return True
    head = read_head()
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _folder_kind(path: Path) -> tuple[str, str]:
    """The kind of a folder source and its first image's path relative to it."""
    with os.scandir(path) as entries:
        has_folders = any(entry.is_dir() for entry in entries)
    looked_at = []
    files = _folder_files(path)
    for relative, full in islice(files, _SAMPLE_FILES):
        if _looks_like_image(relative, lambda: _head(full)):
            return ("imagefolder" if has_folders else "flat-folder"), relative
        looked_at.append(relative)
    if not looked_at:
        raise ShardsError(f"SRC {path}: no files in it or its class folders")
    complete = next(files, None) is None
    raise _holds_no_images(path, "folder", looked_at, complete)


def _folder_files(folder: Path) -> Iterator[tuple[str, str]]:
    """(path relative to ``folder``, full path) of its files, in the order the build lists them."""
    for directory, _, filenames in walk_files(folder):
        for name in filenames:
            full = os.path.join(directory, name)
            yield os.path.relpath(full, folder), full


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(16)
    except OSError:
        return b""  # unreadable: no evidence of an image (the build rejects it with the reason)


def _tar_kind(path: Path) -> tuple[str, str]:
    """The kind of a tar source and the name of its first image (or of the file that told the kind)."""
    looked_at: list[str] = []
    complete = False
    try:
        with tarfile.open(path, "r|*") as archive:
            for name, in_class_tar, is_image, end in _tar_files(archive):
                if name.split("/")[0] in KIND_BY_FOLDER and not in_class_tar:
                    return KIND_BY_FOLDER[name.split("/")[0]], name
                if is_cub_member(name) and not in_class_tar:
                    return "cub-tar", name
                if is_image:
                    return ("tar-of-tars" if in_class_tar else "foldered-tar" if "/" in name else "flat-tar"), name
                looked_at.append(name)
                if len(looked_at) == _SAMPLE_FILES or end > _SAMPLE_BYTES:
                    break
            else:
                complete = True
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardsError(f"SRC {path}: not a readable tar archive ({error})") from None
    if not looked_at:
        raise ShardsError(f"SRC {path}: the archive holds no files")
    raise _holds_no_images(path, "tar", looked_at, complete)


def _tar_files(archive: tarfile.TarFile) -> Iterator[tuple[str, bool, bool, int]]:
    """(name, inside a class tar, looks like an image, stream position after it) of each file of
    a tar stream; the files of a class tar are named ``<class tar>/<file>``."""
    for member in archive:
        if not member.isfile():
            continue
        name = member.name.removeprefix("./")
        if name.endswith(".tar"):
            yield from _class_tar_files(archive, member, name)
        else:
            is_image = _looks_like_image(name, lambda: archive.extractfile(member).read(16))
            yield name, False, is_image, member.offset_data + member.size


def _class_tar_files(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str):
    start = member.offset_data
    try:
        with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as inner:
            for image in inner:
                if image.isfile():
                    inside = image.name.removeprefix("./")
                    is_image = _looks_like_image(inside, lambda: inner.extractfile(image).read(16))
                    yield f"{name}/{inside}", True, is_image, start + image.offset_data + image.size
    except tarfile.TarError:
        # A damaged class tar: looked at, no image found in it (the build rejects it, with why).
        yield name, True, False, start + member.size


def _holds_no_images(path: Path, container: str, names: list[str], complete: bool) -> ShardsError:
    """The error for a SRC whose files looked at are not images, saying what they are."""
    which = f"{len(names)} files" if complete else f"first {len(names)} files"
    return ShardsError(f"SRC {path}: a {container} whose {which} are {_describe(names)}, not images: "
                       f"{_KNOWN_LAYOUTS}")


def _describe(names: list[str]) -> str:
    """The commonest name patterns among ``names``: '`data/*.bin` (5), `*.txt` (1)'."""
    patterns = Counter(_pattern(name) for name in names).most_common()
    shown = ", ".join(f"`{pattern}` ({count})" for pattern, count in patterns[:3])
    rest = sum(count for _, count in patterns[3:])
    return shown + (f" and {rest} more" if rest else "")


def _pattern(name: str) -> str:
    path = PurePosixPath(name)
    wildcard = f"*{path.suffix}"
    return wildcard if str(path.parent) == "." else f"{path.parent}/{wildcard}"
