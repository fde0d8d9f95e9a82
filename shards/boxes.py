"""Ground-truth boxes: the one module that reads box files and puts boxes into the stored
image's pixels.

Convention (clovaai/wsolevaluation's): a box is ``[x0, y0, x1, y1]`` (floats) in pixels of the
image it belongs to, ends inclusive (area ``(x1 - x0 + 1) * (y1 - y0 + 1)``). ImageNet's
``LOC_val_solution.csv`` and its PASCAL VOC XML files give ``xmin ymin xmax ymax``: kept as
given. CUB-200-2011's ``x y w h`` becomes ``[x, y, x + w, y + h]``, as wsolevaluation's metadata
has it.

Box files describe the source image as decoded without its EXIF orientation (what PIL's
``Image.open``, and so wsolevaluation, give). The stored image is upright and maybe resized, so
each box is turned as ``ImageOps.exif_transpose`` turns the pixels, then scaled per axis by
stored size / source size, as wsolevaluation's ``resize_bbox`` does.
"""

from __future__ import annotations

import math
import tarfile
import xml.parsers.expat
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .errors import ShardsError
from .images import PreparedImage


class Annotation(NamedTuple):
    """The boxes of one image as its box file gives them (a NamedTuple: spill files store it as JSON)."""

    boxes: list[list[float]]
    size: tuple[int, int] | None = None  # (width, height) the box file says the image has, when it says


@dataclass(frozen=True)
class BoxTable:
    """Annotations by image file stem (``ILSVRC2012_val_00000001``) and the file they come from."""

    by_stem: dict[str, Annotation]
    source: str


@dataclass(frozen=True)
class RefusedBoxes:
    """An image's boxes that cannot be put into its stored pixels, and why."""

    reason: str


def checked_box(values: list[str], where: str) -> list[float]:
    """``x0 y0 x1 y1`` as floats; anything else (not numbers, x1 < x0) is an error naming ``where``."""
    try:
        box = [float(value) for value in values]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] < box[0] or box[3] < box[1]:
        raise ShardsError(f"{where}: {' '.join(map(str, values))!r} is not a box 'xmin ymin xmax ymax' "
                          "(numbers, xmax >= xmin, ymax >= ymin)")
    return box


def box_from_xywh(values: list[str], where: str) -> list[float]:
    """CUB's ``x y w h`` as ``[x, y, x + w, y + h]``."""
    try:
        x, y, width, height = (float(value) for value in values)
    except ValueError:  # not numbers, or not four of them
        x = y = width = height = math.nan
    if not all(map(math.isfinite, (x, y, width, height))) or width < 0 or height < 0:
        raise ShardsError(f"{where}: {' '.join(values)!r} is not a box 'x y width height'")
    return [x, y, x + width, y + height]


def parse_loc_prediction(text: str, where: str) -> tuple[str, list[list[float]]]:
    """The wnid and every box of a LOC_val_solution.csv PredictionString, ``wnid xmin ymin xmax
    ymax`` repeated (a lone wnid: no boxes)."""
    tokens = text.split()
    if len(tokens) == 1:
        return tokens[0], []
    if not tokens or len(tokens) % 5 or any(_is_number(tokens[i]) for i in range(0, len(tokens), 5)):
        raise ShardsError(f"{where}: expected 'wnid xmin ymin xmax ymax' repeated, got {text.strip()!r}")
    return tokens[0], [checked_box(tokens[i + 1:i + 5], where) for i in range(0, len(tokens), 5)]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def load_box_annotations(path: Path) -> BoxTable:
    """ILSVRC2012_bbox_val_v3: a folder of PASCAL VOC XML files (in it or one folder down) or its
    .tgz, each image's annotation keyed by its file stem."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.xml")) + sorted(path.glob("*/*.xml"))
        named = ((str(file), file.read_bytes()) for file in files)
    elif path.is_file():
        named = _archive_xml_files(path)
    else:
        raise ShardsError(f"--boxes {path}: no such file or folder")
    by_stem: dict[str, Annotation] = {}
    where_by_stem: dict[str, str] = {}
    for where, data in named:
        stem = PurePosixPath(where).name.split(".")[0]
        if stem in where_by_stem:
            raise ShardsError(f"--boxes {path}: two annotations of {stem} ({where_by_stem[stem]} and {where})")
        where_by_stem[stem] = where
        by_stem[stem] = parse_voc_xml(data, where)
    if not by_stem:
        raise ShardsError(f"--boxes {path}: no .xml files in it or its subfolders (expected the "
                          "ILSVRC2012_bbox_val_v3 folder or .tgz)")
    return BoxTable(by_stem, str(path))


def _archive_xml_files(path: Path):
    """(``archive:member``, bytes) of every .xml member of a (compressed) tar, as a stream."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".xml"):
                    yield f"{path}:{member.name.removeprefix('./')}", archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ShardsError(f"--boxes {path}: not a readable folder or .tgz of XML files ({error})") from None


class _Element:
    """An XML element with the line it starts on, so that errors can name the line."""

    def __init__(self, tag: str, line: int):
        self.tag, self.line, self.text, self.children = tag, line, "", []

    def child(self, tag: str, where: str) -> _Element:
        found = next((c for c in self.children if c.tag == tag), None)
        if found is None:
            raise ShardsError(f"{where}:{self.line}: <{self.tag}> has no <{tag}>")
        return found


def _parse_xml(data: bytes, where: str) -> _Element:
    parser = xml.parsers.expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag, _attributes):
        element = _Element(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def text(chunk):
        if stack:
            stack[-1].text += chunk

    parser.StartElementHandler, parser.CharacterDataHandler = start, text
    parser.EndElementHandler = lambda _tag: stack.pop()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as error:
        raise ShardsError(f"{where}:{error.lineno}: not well-formed XML "
                          f"({xml.parsers.expat.ErrorString(error.code)})") from None
    return roots[0]


def parse_voc_xml(data: bytes, where: str) -> Annotation:
    """The image size and every object's box of one PASCAL VOC annotation (ImageNet's bbox XML)."""
    root = _parse_xml(data, where)
    if root.tag != "annotation":
        raise ShardsError(f"{where}:{root.line}: <{root.tag}>, not a PASCAL VOC <annotation>")
    size = root.child("size", where)
    width, height = (size.child(tag, where) for tag in ("width", "height"))
    if not (width.text.strip().isdigit() and height.text.strip().isdigit()):
        raise ShardsError(f"{where}:{size.line}: image size {width.text.strip()!r} x {height.text.strip()!r} "
                          "is not two whole numbers")
    boxes = []
    for element in (c for c in root.children if c.tag == "object"):
        corners = element.child("bndbox", where)
        values = [corners.child(tag, where).text.strip() for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(checked_box(values, f"{where}:{corners.line}"))
    return Annotation(boxes, (int(width.text), int(height.text)))


def annotation_from_json(value) -> Annotation | None:
    """An Annotation from what ``json.dumps`` made of it (a spill file's), or None."""
    if value is None:
        return None
    boxes, size = value
    return Annotation(boxes, tuple(size) if size else None)


# Where the pixel (x, y) of a width x height image goes when EXIF orientation k is applied,
# as ImageOps.exif_transpose does it (2: mirror, 3: 180 degrees, 6: 90 degrees clockwise, ...).
# Ends are inclusive pixels, so a mirror takes x to width - 1 - x.
_UPRIGHT = {
    2: lambda x, y, w, h: (w - 1 - x, y),
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),
    4: lambda x, y, w, h: (x, h - 1 - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (h - 1 - y, x),
    7: lambda x, y, w, h: (h - 1 - y, w - 1 - x),
    8: lambda x, y, w, h: (y, w - 1 - x),
}


def orient_box(box: list[float], *, orientation: int, width: int, height: int) -> list[float]:
    """``box`` of a ``width`` x ``height`` image after EXIF ``orientation`` turns the image upright."""
    move = _UPRIGHT.get(orientation)
    if move is None:  # 1, or a value exif_transpose ignores too
        return list(box)
    (ax, ay), (bx, by) = move(box[0], box[1], width, height), move(box[2], box[3], width, height)
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]


def scale_box(box: list[float], *, source_size: tuple[int, int], stored_size: tuple[int, int]) -> list[float]:
    """``box`` scaled per axis by stored / source size (wsolevaluation's resize_bbox, kept as floats)."""
    sx, sy = stored_size[0] / source_size[0], stored_size[1] / source_size[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def _fits(box: list[float], size: tuple[int, int]) -> bool:
    """Whether ``box`` lies in a ``size`` image (as decoded). One pixel of slack past each edge:
    inclusive ends (ImageNet's 1-based xmax, CUB's x + width) reach the image's width."""
    x1, y1, x2, y2 = box
    return -1 <= x1 <= size[0] and -1 <= y1 <= size[1] and x2 <= size[0] + 1 and y2 <= size[1] + 1


def stored_box_fields(annotation: Annotation, image: PreparedImage) -> dict | RefusedBoxes:
    """The sample .json fields ``boxes`` (in the stored image's pixels) and ``stored_size``
    ([width, height] of the stored image); {} for an annotation without boxes."""
    if not annotation.boxes:
        return {}
    source = (image.width, image.height)  # as decoded, before its EXIF orientation
    if annotation.size is not None and tuple(annotation.size) != source:
        return RefusedBoxes(f"box file's image size differs (it says {annotation.size[0]}x{annotation.size[1]}, "
                            f"the image is {source[0]}x{source[1]})")
    outside = next((box for box in annotation.boxes if not _fits(box, source)), None)
    if outside is not None:
        # Boxes of another copy of the image (CUB's bounding_boxes.txt kept for images resized
        # since): stored, they were cut by the evaluation's crop and their samples dropped from
        # the scores, which blamed the crop (walkthrough).
        return RefusedBoxes(f"a box reaches past the image (box {' '.join(f'{v:g}' for v in outside)} of a "
                            f"{source[0]}x{source[1]} image: the annotations of another copy of it?)")
    upright = source if image.orientation not in (5, 6, 7, 8) else (source[1], source[0])
    boxes = [scale_box(orient_box(box, orientation=image.orientation, width=source[0], height=source[1]),
                       source_size=upright, stored_size=image.stored_size) for box in annotation.boxes]
    return {"boxes": boxes, "stored_size": list(image.stored_size)}
