"""What people read: the summary at the end of a build and ``python -m shards inspect``."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from .dali_index import read_index
from .errors import ShardsError
from .manifest import load_manifest, rejection_reasons


def print_build_summary(result) -> None:
    """Images in = written + rejected, re-encodes by reason, size and speed."""
    if result.manifest is None:
        print(f"{result.manifest_path}: the build is already complete; nothing to do")
        return
    totals, manifest = result.manifest["totals"], result.manifest
    print(f"{manifest['split']}: {totals['inputs']} images in = {totals['samples']} written + "
          f"{totals['rejected']} rejected; {totals['reencoded']} re-encoded{_counts(manifest['reencoded'])}")
    seconds = max(result.seconds, 1e-9)
    print(f"  {len(manifest['shards'])} shards, {totals['bytes'] / 1e9:.2f} GB, {result.seconds:.1f} s, "
          f"{totals['inputs'] / seconds:.0f} images/s, {totals['input_bytes'] / 1e6 / seconds:.1f} MB/s read")
    if manifest["build"].get("boxes"):
        refused = manifest["boxes_refused"]
        note = f", {len(refused)} of them refused{_counts(rejection_reasons(refused))}" if refused else ""
        print(f"  boxes from {manifest['build']['boxes']}: {totals['with_boxes']} samples with boxes, "
              f"{totals['without_boxes']} without{note}")
    for rejected in manifest["rejected"][:20]:
        print(f"  rejected {rejected['source']}: {rejected['reason']}")
    if len(manifest["rejected"]) > 20:
        print(f"  ... {len(manifest['rejected']) - 20} more rejected inputs listed in the manifest")
    if totals["rejected"] and totals["rejected"] >= totals["samples"]:
        # A labels file covering a few of the images wrote a sliver of the split with exit 0.
        print(f"warning: {totals['rejected']} of {totals['inputs']} inputs were rejected, as many as were written or "
              "more: check the reasons above before training on this split (--strict refuses any rejection)")
    if "part" not in manifest and empty_classes_warning(manifest):  # a part holds some shards: merge says it
        print(empty_classes_warning(manifest))
    if "part" in manifest and not totals["samples"]:
        print("  note: this part wrote no sample; `merge` fails if the whole build wrote none")
    print(f"  manifest: {result.manifest_path}")


def empty_classes_warning(manifest: dict) -> str | None:
    """The warning line for classes without an image in a whole split, or None. ImageFolder refuses
    an empty class folder; here it is a class the model still has an output for."""
    empty = [name for name, count in zip(manifest["classes"], manifest["class_counts"]) if not count]
    if not empty:
        return None
    return (f"warning: {len(empty)} of {manifest['num_classes']} classes have no image in this split: "
            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''} (an empty class folder, or all its "
            "images rejected?)")


def _counts(counter: dict) -> str:
    """' (3 cmyk, 1 png)' after a total, or '' when there is nothing to break down (no stray space)."""
    return " (" + ", ".join(f"{n} {reason}" for reason, n in counter.items()) + ")" if counter else ""


def inspect_shards(out: Path, split: str, max_shards: int = 32) -> None:
    """Print counts, class histogram summary, sizes and how well shards are shuffled."""
    manifest = load_manifest(out, split)
    shards, totals, counts = manifest["shards"], manifest["totals"], manifest["class_counts"]
    samples = [s["samples"] for s in shards]
    print(f"{split}: {totals['samples']} samples in {len(shards)} shards, {manifest['num_classes']} classes, "
          f"{totals['bytes'] / 1e9:.3f} GB ({Path(out) / f'{split}.json'})")
    print(f"  samples per shard: min {min(samples)}, median {statistics.median(samples):.0f}, max {max(samples)}")
    print(f"  bytes per image: mean {totals['bytes'] / max(totals['samples'], 1) / 1e3:.1f} kB (tar overhead included)")
    smallest, largest = int(np.argmin(counts)), int(np.argmax(counts))
    classes = manifest["classes"]
    if counts[smallest] == counts[largest]:  # "min 5 (fine00) ... max 5 (fine00)" said nothing more
        print(f"  images per class: {counts[smallest]} in every class")
    else:
        print(f"  images per class: min {counts[smallest]} ({classes[smallest]}), median "
              f"{statistics.median(counts):.0f}, max {counts[largest]} ({classes[largest]}); "
              f"{sum(c == 0 for c in counts)} classes empty")
    print(f"  rejected: {totals['rejected']}{_counts(rejection_reasons(manifest['rejected']))}; "
          f"re-encoded: {totals['reencoded']}{_counts(manifest['reencoded'])}")
    try:
        mixing = shuffle_quality(Path(out), shards[:: max(1, len(shards) // max_shards)], counts)
    except (OSError, ValueError, StopIteration) as error:  # a shard or index missing, cut short or overwritten
        raise ShardsError(f"{out}: a {split} shard or its index does not read back ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:200]}); `python -m shards verify {out}` names it") from None
    print(f"  shuffle ({mixing['shards']} shards read): distinct classes per shard {mixing['distinct']:.1f} "
          f"(a uniformly random order gives {mixing['distinct_random']:.1f}); neighbours of different class "
          f"{mixing['changes']:.3f} (random: {mixing['changes_random']:.3f})")


def shard_labels(out: Path, shard: dict) -> list[int]:
    """The labels of a shard in stored order, read through its index (no full tar read)."""
    labels = []
    with open(out / shard["name"], "rb") as file:
        for sample in read_index(out / shard["index"]):
            offset, size = next((o, s) for e, o, s, _ in sample if e == "cls")
            file.seek(offset)
            labels.append(int(file.read(size)))
    return labels


def shuffle_quality(out: Path, shards: list[dict], class_counts: list[int]) -> dict:
    """Mean distinct classes per shard and share of neighbours of different class, each with
    its expectation under a uniformly random order of the whole split."""
    shares = np.asarray(class_counts, dtype=float) / max(sum(class_counts), 1)
    distinct, distinct_random, changes, pairs = [], [], 0, 0
    for shard in shards:
        labels = shard_labels(out, shard)
        distinct.append(len(set(labels)))
        distinct_random.append(float(np.sum(1 - (1 - shares) ** len(labels))))
        changes += sum(a != b for a, b in zip(labels, labels[1:]))
        pairs += max(len(labels) - 1, 0)
    return {
        "shards": len(shards), "distinct": float(np.mean(distinct)), "distinct_random": float(np.mean(distinct_random)),
        "changes": changes / max(pairs, 1), "changes_random": float(1 - np.sum(shares**2)),
    }
