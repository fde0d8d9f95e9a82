"""What a build reads beside the images, once the split is known: ImageNet's ground-truth boxes
(``--boxes``, or a LOC_val_solution.csv's) and CUB-200-2011's metadata. They are attached to the
SourceSpec, so that shards/sources.py gives every input its boxes (shards/boxes.py reads them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .boxes import load_box_annotations
from .cub import KINDS as CUB_KINDS
from .cub import read_cub_split
from .detect import SourceSpec
from .errors import ShardsError

# The kinds of source whose images ImageNet boxes are matched to, by file stem: the flat val
# sources (with --labels) whatever the split is called, and class folders only as a val split.
_BOX_KINDS = {"val": ("flat-folder", "flat-tar", "imagefolder", "foldered-tar"), "train": ("flat-folder", "flat-tar"),
              "test": ("flat-folder", "flat-tar")}
_KIND_NAMES = {"imagefolder": "a folder of class folders", "foldered-tar": "a tar of <wnid>/<image>",
               "tar-of-tars": "a tar of class tars", "cub-folder": "CUB-200-2011", "cub-tar": "CUB-200-2011"}


def check_annotation_options(spec: SourceSpec, *, split: str, labels: Path | None, boxes: Path | None) -> None:
    """``--labels`` and ``--boxes`` where the source has its own, or boxes where they cannot be matched."""
    if spec.kind in CUB_KINDS and (labels or boxes):
        raise ShardsError(f"--{'labels' if labels else 'boxes'} is for ImageNet validation images: "
                          "CUB-200-2011 holds its own labels and boxes")
    if boxes and spec.kind not in _BOX_KINDS[split]:
        raise ShardsError(f"--boxes is for ImageNet validation images (a flat folder or tar with --labels, or a "
                          f"--split val folder or tar of <wnid>/<image>), not a {split} build from "
                          f"{_KIND_NAMES.get(spec.kind, 'a ' + spec.kind)}")


def with_annotations(spec: SourceSpec, *, split: str, boxes: Path | None) -> SourceSpec:
    """``spec`` with a CUB split's metadata, or the ImageNet boxes of ``--boxes`` (else of the LOC csv)."""
    if spec.kind in CUB_KINDS:
        return replace(spec, cub=read_cub_split(spec.path, spec.kind, split))
    if boxes:
        return replace(spec, boxes=load_box_annotations(boxes))
    if spec.labels is not None and spec.labels.boxes is not None and spec.kind in _BOX_KINDS[split]:
        return replace(spec, boxes=spec.labels.boxes)
    return spec


def box_origin(spec: SourceSpec) -> str | None:
    """The file the boxes of ``spec`` come from, for the build plan (absolute, or inside SRC for CUB)."""
    if spec.cub is not None:
        return spec.cub.box_source
    return str(Path(spec.boxes.source).resolve()) if spec.boxes else None
