"""``python -m shards verify``: every shard against the manifest (sha256, size, count), its tar
structure (complete samples, valid labels) and its DALI index (every entry at the right offset);
with ``--decode`` every image (an RGB JPEG; for CIFAR an RGB PNG) is decoded. Bad shards are
named; the exit status says if any."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .dali_index import read_index
from .manifest import load_manifest

_IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}  # image member extension -> its format


def verify_shards(out: Path, split: str, *, decode: bool = False, progress: bool = True) -> int:
    """Check every shard of a split and the manifest's own sums; prints one line per bad shard
    (or bad manifest) and returns their number."""
    manifest = load_manifest(out, split)
    bad = checked = 0
    labels: Counter = Counter()
    for shard in tqdm(manifest["shards"], desc=f"{split}: verifying", unit="shard", disable=not progress):
        problem = check_shard(Path(out), shard, manifest["num_classes"], decode, labels)
        if problem:
            bad += 1
            print(f"BAD {shard['name']}: {problem}")
        else:
            checked += shard["samples"]
    for problem in manifest_problems(manifest, labels if not bad else None):
        bad += 1
        print(f"BAD {split}.json: {problem}")
    listed = {s["name"] for s in manifest["shards"]}
    for stray in sorted(p.name for p in Path(out).glob(f"{split}-*.tar") if p.name not in listed):
        print(f"note: {stray} is not in {split}.json (left from another build?)")
    verdict = "OK" if not bad else f"{bad} BAD"
    # The samples counted in shards that passed, not the manifest's total: a shard missing from
    # the list, or a total raised by hand, would otherwise be reported as checked.
    print(f"{split}: {verdict}: {len(manifest['shards'])} shards, {checked} samples checked"
          f"{' and decoded' if decode else ''}")
    return bad


def verify_class_lists(out: Path, splits: list[str]) -> int:
    """Every split's class list against train's (a split built with another one reads each label as
    another class); prints one line per split that differs and returns their number. Each split
    passed on its own: val built before a train of other classes went unsaid (walkthrough)."""
    from .manifest import class_list_difference

    if not (Path(out) / "train.json").is_file():
        return 0
    train = load_manifest(out, "train")["classes"]
    bad = 0
    for split in splits:
        classes = load_manifest(out, split)["classes"]
        if classes != train:
            bad += 1
            differ = class_list_difference(train, classes, first_where="in train", second_where="there")
            print(f"BAD {split}.json: another class list than train.json ({differ}): its labels mean other classes; "
                  f"build it again with --classes {Path(out) / 'train.json'} --overwrite")
    return bad


def manifest_problems(manifest: dict, labels: Counter | None) -> list[str]:
    """What in a manifest disagrees with itself or with the shards' labels (``labels``: the count
    of each label read from every listed shard; None when some shard was bad, so not all were read)."""
    problems = []
    listed = [s["name"] for s in manifest["shards"]]
    made = manifest["build"].get("num_shards")
    if isinstance(made, int):
        expected = {f"{manifest['split']}-{i:06d}.tar" for i in range(made)}
        missing, foreign = sorted(expected - set(listed)), sorted(set(listed) - expected)
        if missing or foreign or len(listed) != len(set(listed)):
            details = "; ".join(f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                                for what, names in (("not listed", missing), ("not of this build", foreign),
                                                    ("listed twice", sorted(n for n in set(listed)
                                                                            if listed.count(n) > 1))) if names)
            problems.append(f"lists {len(listed)} shards, its build wrote {made} ({details})")
    samples = sum(s["samples"] for s in manifest["shards"])
    if manifest["totals"].get("samples") != samples:
        problems.append(f"its totals say {manifest['totals'].get('samples')} samples, its shards hold {samples}")
    counts = manifest.get("class_counts")
    if labels is not None and isinstance(counts, list):
        found = [labels.get(i, 0) for i in range(manifest["num_classes"])]
        if len(counts) != len(found):
            problems.append(f"its class_counts count {len(counts)} classes, its class list {len(found)}")
        elif counts != found:
            first = next(i for i, (a, b) in enumerate(zip(counts, found)) if a != b)
            problems.append(f"its class_counts are not the labels in its shards (class {first}: "
                            f"{counts[first]} there, {found[first]} in the shards)")
    return problems


def check_shard(out: Path, shard: dict, num_classes: int, decode: bool, labels: Counter | None = None) -> str | None:
    """The first problem found with one shard, or None; ``labels`` counts its samples' labels."""
    tar_path, index_path = out / shard["name"], out / shard["index"]
    for path in (tar_path, index_path):
        if not path.exists():
            return f"{path.name} is missing"
    if tar_path.stat().st_size != shard["bytes"]:
        return f"size {tar_path.stat().st_size} != {shard['bytes']} in the manifest"
    if _sha256(tar_path) != shard["sha256"]:
        return "sha256 differs from the manifest"
    try:
        members = _tar_members(tar_path)
        index = read_index(index_path)
    except (tarfile.TarError, ValueError, IndexError, OSError) as error:
        return f"unreadable: {error}"
    found: Counter = Counter()
    problem = _check_samples(tar_path, members, index, shard["samples"], num_classes, decode, found)
    if problem is None and labels is not None:
        labels.update(found)
    return problem


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _tar_members(path: Path) -> list[tuple[str, int, int, str]]:
    with tarfile.open(path, "r:") as archive:  # seeks over data: reads headers only
        return [(m.name.split(".", 1)[1], m.offset_data, m.size, m.name) for m in archive if m.isfile()]


def _check_samples(tar_path, members, index, expected, num_classes, decode, labels: Counter) -> str | None:
    flat_index = [entry for sample in index for entry in sample]
    if flat_index != members:
        at, member = next((i, m) for i, m in enumerate(members + [None]) if i >= len(flat_index) or flat_index[i] != m)
        if member is None:  # "(None): stale index?" blamed the index of a tar cut at a member's end
            return (f"the tar holds {at} member{'' if at == 1 else 's'} where its index lists {len(flat_index)}: "
                    "the tar cut short (or the index of another tar)")
        if at >= len(flat_index):
            return f"the index lists {at} members where the tar holds {len(members)}: the index cut short"
        return f"index does not match the tar at member {at} ({member[3]}): stale index?"
    if len(index) != expected:
        return f"{len(index)} samples, the manifest says {expected}"
    with open(tar_path, "rb") as file:
        for sample in index:
            entries = {extension: (offset, size, name) for extension, offset, size, name in sample}
            images = [extension for extension in _IMAGE_FORMATS if extension in entries]
            if "cls" not in entries or len(images) != 1:
                return f"sample {sample[0][3]} lacks .cls or one image (.jpg or .png)"
            label = _read(file, *entries["cls"][:2])
            if not label.isdigit() or int(label) >= num_classes:
                return f"{entries['cls'][2]}: label {label!r} is not in [0, {num_classes})"
            labels[int(label)] += 1
            if decode:
                offset, size, name = entries[images[0]]
                problem = _decode(_read(file, offset, size), _IMAGE_FORMATS[images[0]])
                if problem:
                    return f"{name}: {problem}"
    return None


def _read(file, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _decode(data: bytes, expected_format: str) -> str | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:
        return f"does not decode ({error})"
    if image.format != expected_format or image.mode != "RGB":
        return f"{image.format} {image.mode}, not an RGB {expected_format}"
    return None
