"""The manifest ``OUT/<split>.json``: classes, shards with counts, bytes and sha256, totals,
the build plan and the rejected inputs. Written last and atomically; ``merge`` combines the
part manifests of a split build and checks that no input is missing or doubled."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from .errors import ShardsError
from .outdir import OutputLayout
from .plan import DIGEST_MODULUS, PLAN_FORMAT
from .tarwriter import write_json_atomic

SHARD_FIELDS = ("name", "index", "samples", "bytes", "sha256")


def compose_manifest(plan: dict, classes: list[str], records: list[dict], source_totals: dict) -> dict:
    """The manifest of a set of shard records (a whole split, or one part of it)."""
    records = sorted(records, key=lambda r: r["name"])
    class_counts = [0] * len(classes)
    reencoded: Counter = Counter()
    for record in records:
        for index, count in record["class_counts"].items():
            class_counts[int(index)] += count
        reencoded.update(record["reencoded"])
    rejected = sorted(tuple(r) for record in records for r in record["rejected"])
    totals = {
        "inputs": sum(r["inputs"] for r in records),
        "samples": sum(r["samples"] for r in records),
        "rejected": len(rejected),
        "reencoded": sum(reencoded.values()),
        "bytes": sum(r["bytes"] for r in records),
        "input_bytes": sum(r["input_bytes"] for r in records),
        "digest": sum(r["digest"] for r in records) % DIGEST_MODULUS,
    }
    return {
        "format": PLAN_FORMAT,
        "split": plan["split"],
        "num_classes": len(classes),
        "classes": classes,
        "shards": [{k: r[k] for k in SHARD_FIELDS} for r in records],
        "totals": totals,
        "source_totals": source_totals,  # over the whole source: what merge checks against
        "class_counts": class_counts,
        "reencoded": dict(sorted(reencoded.items())),
        "rejected": [{"source": s, "reason": r} for s, r in rejected],
        "build": plan,
    }


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a manifest atomically, in a stable byte form."""
    write_json_atomic(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def load_manifest(out: Path, split: str) -> dict:
    """Read ``OUT/<split>.json`` with a clear error when it is missing or broken."""
    path = Path(out) / f"{split}.json"
    if not path.exists():
        parts = OutputLayout(Path(out), split).part_manifests()
        hint = " (part manifests found: run `python -m shards merge`)" if parts else ""
        raise ShardsError(f"{path}: no manifest{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ShardsError(f"{path}: not a valid manifest ({error})") from None


def merge_parts(layout: OutputLayout) -> dict:
    """Combine the part manifests of a split into its manifest, checking completeness."""
    paths = layout.part_manifests()
    if not paths:
        raise ShardsError(f"{layout.out}: no {layout.split}.part-*.json manifests to merge")
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    plan = {k: v for k, v in first["build"].items()}
    for path, part in zip(paths, parts):
        for field in ("build", "classes", "source_totals"):
            if part[field] != first[field]:
                raise ShardsError(f"{path.name}: its {field} differ from {paths[0].name}'s: parts of different builds")
    _check_all_parts(paths, parts, plan["num_parts"])
    records = [dict(shard, **_part_detail(part, shard)) for part in parts for shard in part["shards"]]
    _check_shards(layout, records, plan, first["source_totals"])
    manifest = compose_manifest(plan, first["classes"], records, first["source_totals"])
    write_manifest(layout.manifest, manifest)
    for path in paths:
        path.unlink()
    shutil.rmtree(layout.build_dir, ignore_errors=True)
    return manifest


def _part_detail(part: dict, shard: dict) -> dict:
    return part["shard_details"][shard["name"]]


def _check_all_parts(paths: list[Path], parts: list[dict], num_parts: int) -> None:
    ids = Counter(part["part"]["id"] for part in parts)
    missing = sorted(set(range(num_parts)) - set(ids))
    doubled = sorted(i for i, n in ids.items() if n > 1)
    if missing or doubled:
        raise ShardsError(f"parts missing: {missing}, parts doubled: {doubled} (of {num_parts})")


def _check_shards(layout: OutputLayout, records: list[dict], plan: dict, source_totals: dict) -> None:
    names = Counter(r["name"] for r in records)
    expected = {f"{plan['split']}-{s:06d}.tar" for s in range(plan["num_shards"])}
    if set(names) != expected or any(n > 1 for n in names.values()):
        missing, extra = sorted(expected - set(names)), sorted(n for n, c in names.items() if c > 1)
        raise ShardsError(f"shards missing: {missing[:10]}, doubled: {extra[:10]}")
    inputs = sum(r["inputs"] for r in records)
    digest = sum(r["digest"] for r in records) % DIGEST_MODULUS
    if inputs != source_totals["inputs"] or digest != source_totals["digest"]:
        raise ShardsError(
            f"the parts cover {inputs} inputs but the source has {source_totals['inputs']} "
            "(or the same count with different files): some inputs are missing or doubled"
        )
    for record in records:
        tar = layout.out / record["name"]
        if not tar.exists() or tar.stat().st_size != record["bytes"]:
            raise ShardsError(f"{tar}: missing or not the size its part manifest records")
