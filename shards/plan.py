"""Which shard each input goes to, in which order, and what a build promised to produce.

Every input lands in the shard chosen by a keyed hash of its sample key, and each shard's
inputs are put in a seeded random order. Together that is a pseudo-random permutation of the
whole data set, so every shard holds a class mix close to the global one, with no global list
in memory. Each shard depends only on (seed, key) and the inputs, never on the number of
workers or parts: that is what makes builds byte-identical, resumable and splittable.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from .cifar import LAYOUTS as CIFAR_LAYOUTS
from .cifar import SIDE as CIFAR_SIDE
from .images import ImageOptions

PLAN_FORMAT = "cutmix-shards/1"


@dataclass(frozen=True)
class BuildPlan:
    """Everything that fixes the bytes of the output; stored in OUT/.build/<split>/plan.json."""

    split: str
    source: str
    source_kind: str
    seed: int
    shard_size: int
    num_shards: int
    num_parts: int
    resize_short: int | None
    quality: int
    check: str
    labels: str | None
    classes_from: str | None  # the --classes manifest, or the CIFAR meta file the classes come from
    label_field: str | None = None  # CIFAR-100: which label is the class, "fine" or "coarse"
    boxes: str | None = None  # the file the ground-truth boxes come from (--boxes, a LOC csv, bounding_boxes.txt)
    # A folder source's files (their paths and sizes, "N files, digest D"): a resume into shards
    # some of which hold a listing that has since changed would mix two data sets (files moved
    # between classes keep the count, the size and so the shard count). A tar or CIFAR source
    # needs none: its shards are written from the spill of one complete pass over it.
    source_files: str | None = None

    @property
    def image_options(self) -> ImageOptions:
        # A CIFAR input is a record's pixel bytes, stored as a PNG; others are image files.
        raw_side = CIFAR_SIDE if self.source_kind in CIFAR_LAYOUTS else None
        return ImageOptions(self.resize_short, self.quality, self.check, raw_rgb_side=raw_side)

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, **dataclasses.asdict(self)}

    def shard_name(self, shard: int) -> str:
        return f"{self.split}-{shard:06d}"


# The argument of `python -m shards build` each plan field comes from (the others are derived).
PLAN_ARGUMENTS = {"source": "SRC", "split": "--split", "seed": "--seed", "shard_size": "--shard-size",
                  "num_parts": "--num-parts", "resize_short": "--resize-short", "quality": "--quality",
                  "check": "--check", "labels": "--labels", "classes_from": "--classes",
                  "label_field": "--label-field", "boxes": "--boxes",
                  "source_files": "SRC's files (added, removed, moved or resized since)"}


RECORDED_LATER = ("source_files",)  # plan fields an earlier version's plan.json or manifest lacks


def changed_fields(stored: dict, current: dict) -> list[str]:
    """The fields whose values differ between two plans (as ``to_json`` gives them), sorted; a field
    one plan lacks counts as changed, except one recorded only since a later version, which a build
    begun before it lacks (its listing is unknown, no sign that SRC changed)."""
    absent = "(absent)"
    unrecorded = {k for k in RECORDED_LATER if k not in stored or k not in current}
    return sorted(k for k in current.keys() | stored.keys()
                  if k not in unrecorded and stored.get(k, absent) != current.get(k, absent))


def same_plan(stored: dict, current: dict) -> bool:
    """Whether two plans are of one build (``changed_fields`` finds nothing)."""
    return not changed_fields(stored, current)


def plan_changes(stored: dict, current: dict) -> str:
    """What differs between two plans (as ``to_json`` gives them), by the build argument each field
    comes from, e.g. "--shard-size: 200000 -> 64000, num_shards: 2 -> 6 (follows --shard-size)";
    a field one plan lacks (another version wrote it) counts as changed."""
    absent = "(absent)"
    changed = changed_fields(stored, current)
    changed.sort(key=lambda k: k == "num_shards")  # the derived count last, after what it follows

    def why(key: str) -> str:
        if key != "num_shards":
            return ""
        return " (follows --shard-size)" if "shard_size" in changed else " (SRC's size or number of files changed)"

    return ", ".join(f"{PLAN_ARGUMENTS.get(k, k)}: {stored.get(k, absent)!r} -> {current.get(k, absent)!r}{why(k)}"
                     for k in changed)


def count_shards(total_bytes: float, shard_size: int, max_shards: int | None = None) -> int:
    """Shards of about ``shard_size`` bytes each, at least one, at most one per input."""
    shards = max(1, round(total_bytes / shard_size))
    return min(shards, max_shards) if max_shards else shards


def shard_of(key: str, seed: int, num_shards: int) -> int:
    """The shard of a sample key: a keyed hash, uniform over shards and stable across runs."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") % num_shards


def shard_order(count: int, seed: int, shard: int) -> np.ndarray:
    """The seeded random order of a shard's ``count`` inputs (given in source order)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, shard]).permutation(count)


def part_shards(num_shards: int, num_parts: int, part_id: int) -> range:
    """The contiguous block of shards that part ``part_id`` of ``num_parts`` writes."""
    return range(part_id * num_shards // num_parts, (part_id + 1) * num_shards // num_parts)


def listing_summary(files: list[tuple[str, int]]) -> str:
    """What ``source_files`` holds for the (path relative to SRC, size) of a folder's files."""
    digest = hashlib.blake2b(digest_size=8)
    for relative, size in files:
        digest.update(f"{relative}\0{size}\n".encode(errors="surrogateescape"))
    return f"{len(files)} files, digest {digest.hexdigest()}"


def input_digest(source: str) -> int:
    """A 64-bit hash of one input's path; sums of these tell merge nothing is missing or doubled."""
    return int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little")


DIGEST_MODULUS = 1 << 64
