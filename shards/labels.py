"""Validation labels: ``LOC_val_solution.csv`` or the ILSVRC2012 devkit (ground truth + meta.mat).

The devkit numbers classes by ILSVRC2012_ID, which is NOT the position of the wnid in the
sorted class list (the timm/torchvision convention); we map ids to wnids through meta.mat.
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .boxes import Annotation, BoxTable, parse_loc_prediction
from .errors import ShardsError

_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


@dataclass(frozen=True)
class ValLabels:
    """File stem -> wnid, and the class list the labels define (sorted wnids)."""

    wnid_by_stem: dict[str, str]
    classes: list[str]
    source: str
    boxes: BoxTable | None = None  # a LOC csv's boxes (the devkit has none)


def load_val_labels(path: Path) -> ValLabels:
    """Read labels from a LOC csv, a devkit folder or archive, or a ground-truth txt."""
    path = Path(path)
    if not path.exists():
        raise ShardsError(f"--labels {path}: no such file or folder")
    if path.suffix.lower() == ".csv":
        return _load_loc_csv(path)
    if path.is_dir():
        return _load_devkit_folder(path)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _load_devkit_archive(path)
    if path.name == _GROUND_TRUTH:
        return _load_devkit_folder(path.parent)
    raise ShardsError(
        f"--labels {path}: expected LOC_val_solution.csv, the devkit folder or archive "
        f"(ILSVRC2012_devkit_t12[.tar.gz]), or {_GROUND_TRUTH} with meta.mat beside it"
    )


def _load_loc_csv(path: Path) -> ValLabels:
    try:
        # utf-8-sig: spreadsheet programs save a byte-order mark before the header.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ShardsError(f"--labels {path}: not a text file, so not a LOC_val_solution.csv") from None
    wnid_by_stem, boxes, first_seen = {}, {}, {}
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None or [c.strip() for c in header[:2]] != ["ImageId", "PredictionString"]:
        raise ShardsError(f"--labels {path}: not a LOC_val_solution.csv (header {header})")
    for line, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[1].split():
            raise ShardsError(f"--labels {path}:{line}: expected 'ImageId,wnid ...', got {row}")
        stem = row[0].strip()
        wnid, image_boxes = parse_loc_prediction(row[1], f"--labels {path}:{line}")
        if stem in first_seen:
            # One row per image in the official file: a second one that says something else
            # (another class, other boxes) would silently win over the first.
            earlier, earlier_boxes = first_seen[stem]
            if (wnid, image_boxes) != (wnid_by_stem[stem], earlier_boxes):
                what = (f"class {wnid} where line {earlier} has {wnid_by_stem[stem]}" if wnid != wnid_by_stem[stem]
                        else f"other boxes than line {earlier}")
                raise ShardsError(f"--labels {path}:{line}: {stem} again, with {what}; keep one row per image")
            continue
        first_seen[stem] = (line, image_boxes)
        wnid_by_stem[stem] = wnid
        if image_boxes:
            boxes[stem] = Annotation(image_boxes)
    table = BoxTable(boxes, str(path)) if boxes else None
    return ValLabels(wnid_by_stem, sorted(set(wnid_by_stem.values())), str(path), table)


def _load_devkit_folder(folder: Path) -> ValLabels:
    for data_dir in (folder, folder / "data", folder / "ILSVRC2012_devkit_t12" / "data"):
        if (data_dir / _GROUND_TRUTH).exists() and (data_dir / "meta.mat").exists():
            return _devkit_labels(
                (data_dir / _GROUND_TRUTH).read_bytes(), (data_dir / "meta.mat").read_bytes(),
                str(data_dir),
            )
    raise ShardsError(f"--labels {folder}: no {_GROUND_TRUTH} and meta.mat found in it or its data/")


def _load_devkit_archive(path: Path) -> ValLabels:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                name = Path(member.name).name
                if member.isfile() and name in (_GROUND_TRUTH, "meta.mat"):
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ShardsError(f"--labels {path}: not a readable devkit archive ({first_line})") from None
    if set(found) != {_GROUND_TRUTH, "meta.mat"}:
        raise ShardsError(f"--labels {path}: the archive lacks {_GROUND_TRUTH} or meta.mat")
    return _devkit_labels(found[_GROUND_TRUTH], found["meta.mat"], str(path))


def _devkit_labels(ground_truth: bytes, meta_mat: bytes, source: str) -> ValLabels:
    import scipy.io  # only for the devkit: importing it costs a tenth of a second

    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
        ids = [int(s) for s in synsets["ILSVRC2012_ID"]]
        wnids = [str(s) for s in synsets["WNID"]]
        children = [int(s) for s in synsets["num_children"]]
    except Exception as error:
        raise ShardsError(f"--labels {source}: cannot read meta.mat ({error})") from None
    # Leaf synsets are the classes; inner nodes of the hierarchy carry no images.
    wnid_by_id = {i: w for i, w, c in zip(ids, wnids, children) if c == 0}
    wnid_by_stem = {}
    for number, line in enumerate(ground_truth.decode(errors="replace").split(), start=1):
        if not line.isdigit() or int(line) not in wnid_by_id:
            raise ShardsError(f"--labels {source}: ground truth line {number} names unknown id {line}")
        wnid_by_stem[f"ILSVRC2012_val_{number:08d}"] = wnid_by_id[int(line)]
    return ValLabels(wnid_by_stem, sorted(wnid_by_id.values()), source)
