"""The manifest ``OUT/<split>.json``: classes, shards with counts, bytes and sha256, totals,
the build plan and the rejected inputs. Written last and atomically; ``merge`` combines the
part manifests of a split build and checks that no input is missing or doubled.

This module is the only one that reads or writes manifests (pipeline/ included): readers get a
dict whose fields ``_manifest_problem`` has checked, or one ShardsError naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from .durable import write_text_atomic
from .errors import ShardsError
from .outdir import OutputLayout, remove_build_folder
from .plan import DIGEST_MODULUS, PLAN_FORMAT, RECORDED_LATER, plan_changes, same_plan

SHARD_FIELDS = ("name", "index", "samples", "bytes", "sha256")
_SHARD_TYPES = {"name": str, "index": str, "samples": int, "bytes": int, "sha256": str}
_REBUILD = "build the shards again with `python -m shards build`"


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
    boxes_refused = sorted(tuple(r) for record in records for r in record["boxes_refused"])
    totals = {
        "inputs": sum(r["inputs"] for r in records),
        "samples": sum(r["samples"] for r in records),
        "rejected": len(rejected),
        "reencoded": sum(reencoded.values()),
        "bytes": sum(r["bytes"] for r in records),
        "input_bytes": sum(r["input_bytes"] for r in records),
        "digest": sum(r["digest"] for r in records) % DIGEST_MODULUS,
        # Samples whose .json has "boxes", and the others (of sources with boxes for some images only,
        # or none; the refused ones are listed under "boxes_refused").
        "with_boxes": sum(r["with_boxes"] for r in records),
    }
    totals["without_boxes"] = totals["samples"] - totals["with_boxes"]
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
        "boxes_refused": [{"source": s, "reason": r} for s, r in boxes_refused],  # written without their boxes
        "build": plan,
    }


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a manifest atomically, in a stable byte form."""
    write_text_atomic(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def class_list_difference(first: list[str], second: list[str], *, first_where: str, second_where: str) -> str:
    """Where two class lists part, for a message: the first class that differs, else the counts
    (one list a prefix of the other), e.g. "class 3 is 'n02' in train, 'n03' there"."""
    index = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), None)
    if index is None:
        return f"{len(first)} classes {first_where}, {len(second)} {second_where}"
    return f"class {index} is {first[index]!r} {first_where}, {second[index]!r} {second_where}"


def load_manifest(out: Path, split: str) -> dict:
    """Read the manifest ``OUT/<split>.json``; a missing one is a ShardsError saying how to make it."""
    if Path(out).is_file():  # `--shards OUT/val.json`: the manifest instead of its folder
        hint = " (give the folder holding it)" if Path(out).suffix == ".json" else ""
        raise ShardsError(f"{out}: a file, not a shards folder{hint}")
    layout = OutputLayout(Path(out), split)
    if not layout.manifest.exists():
        raise ShardsError(_missing_manifest(layout))
    return read_manifest(layout.manifest)


def _missing_manifest(layout: OutputLayout) -> str:
    """Why ``layout``'s manifest is not there, and what to do: build advice alone sent a user who
    gave a run folder or the wrong split to build shards where they already were."""
    from .build import SPLITS  # the build's imports are heavier than a manifest reader needs

    path, out, split = layout.manifest, layout.out, layout.split
    missing = f"{path}: no manifest for split {split!r}"
    build = f"build the shards with `python -m shards build SRC {out} --split {split}`"
    if not out.is_dir():
        return f"{missing} (no folder {out}); {build}"
    if layout.part_manifests():
        return f"{missing} yet, but part manifests are there: run `python -m shards merge {out}`"
    if (layout.build_dir / "plan.json").exists():  # a build that stopped before its manifest, or runs
        return (f"{missing}: its build there has not finished (stopped, or still running); the same build "
                "command with --resume goes on from its finished shards")
    if any(out.glob(f"{split}-*.tar")):  # its shards without the manifest that says what they hold
        return (f"{missing}, though {split}-*.tar shards are there (the manifest deleted or lost?); readers "
                f"need it to check them: {build} again")
    built = [name for name in SPLITS if (out / f"{name}.json").is_file()]
    if built:
        return f"{missing}; {out} has {', '.join(built)}"
    # A run folder (the demo's shards are built in runs/demo/data/shards) or a parent of the shards.
    deeper = sorted({found.parent for name in SPLITS for depth in ("*/", "*/*/")
                     for found in out.glob(f"{depth}{name}.json")})
    if deeper:
        return f"{missing}; shards are in {', '.join(str(folder) for folder in deeper)}: give that folder"
    return f"{missing}; {build}"


def read_manifest(path: Path) -> dict:
    """Read a manifest (or a part manifest) written by ``python -m shards build``; a missing,
    unreadable or foreign file is a ShardsError naming it."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardsError(f"{path}: no such manifest") from None
    except (OSError, ValueError) as error:  # ValueError: broken JSON or text that is not UTF-8
        raise ShardsError(f"{path}: not a readable shard manifest ({error}); {_REBUILD}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise ShardsError(f"{path}: not a shard manifest that this version reads ({problem}); {_REBUILD}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` unusable by the readers, or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") != PLAN_FORMAT:
        return f"'format' is {manifest.get('format')!r}, not {PLAN_FORMAT!r}"
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a non-empty list of class names"
    if manifest.get("num_classes") != len(classes):
        return f"'num_classes' is {manifest.get('num_classes')!r} but 'classes' lists {len(classes)}"
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in _SHARD_TYPES.items()) for s in shards):
        return f"'shards' is not a list of entries with {', '.join(_SHARD_TYPES)}"
    if not all(isinstance(manifest.get(k), t) for k, t in (("totals", dict), ("rejected", list), ("build", dict))):
        return "'totals', 'rejected' or 'build' is missing"
    return None


def rejection_reasons(rejected: list[dict]) -> dict[str, int]:
    """How many inputs were rejected for each kind of reason, commonest first."""
    return dict(Counter(_reason_kind(entry["reason"]) for entry in rejected).most_common())


def _reason_kind(reason: str) -> str:
    # Reasons read "kind", "kind: details" or "kind (details)"; the details differ per input.
    return reason.split(" (")[0].split(":")[0]


def check_samples_written(manifest: dict) -> None:
    """A build that wrote no sample failed: raise a ShardsError naming the source, its kind and
    the commonest reasons its inputs were rejected, with an example of each.

    Applied to what a whole build wrote (a single-part build, or ``merge``): one part of a split
    build may well write nothing while the others write plenty.
    """
    totals, build = manifest["totals"], manifest["build"]
    if totals["samples"]:
        return
    examples: dict[str, str] = {}
    for entry in manifest["rejected"]:
        examples.setdefault(_reason_kind(entry["reason"]), entry["source"])
    reasons = list(rejection_reasons(manifest["rejected"]).items())
    listed = ", ".join(f"{count} {kind} (e.g. {examples[kind]})" for kind, count in reasons[:3])
    more = f", {sum(count for _, count in reasons[3:])} for other reasons" if reasons[3:] else ""
    raise ShardsError(f"SRC {build['source']} ({build['source_kind']}): 0 of {totals['inputs']} inputs written; "
                      f"rejected: {listed}{more}")


def merge_parts(layout: OutputLayout) -> dict:
    """Combine the part manifests of a split into its manifest, checking completeness."""
    paths = layout.part_manifests()
    if not paths:
        raise ShardsError(f"{layout.out}: no {layout.split}.part-*.json manifests to merge")
    parts = [read_manifest(p) for p in paths]
    first = parts[0]
    plan = {k: v for k, v in first["build"].items()}
    # Against a part that records every plan field (one of an earlier version lacks source_files,
    # and with it as the reference two parts of different listings were not compared).
    reference = next((i for i, part in enumerate(parts) if all(k in part["build"] for k in RECORDED_LATER)), 0)
    for path, part in zip(paths, parts):
        for field in ("build", "classes", "source_totals"):
            ours, theirs = parts[reference][field], part[field]
            if not (same_plan(ours, theirs) if field == "build" else ours == theirs):
                # Name the differing settings: the part to rebuild is the one whose arguments were wrong.
                details = f" ({plan_changes(ours, theirs)})" if field == "build" else ""
                raise ShardsError(f"{path.name}: its {field} differ from {paths[reference].name}'s{details}: "
                                  "parts of different builds")
    _check_all_parts(paths, parts, plan["num_parts"])
    records = [dict(shard, **_part_detail(part, shard)) for part in parts for shard in part["shards"]]
    _check_shards(layout, records, plan, first["source_totals"])
    manifest = compose_manifest(plan, first["classes"], records, first["source_totals"])
    check_samples_written(manifest)  # the part manifests stay: they say what each part rejected
    try:
        write_manifest(layout.manifest, manifest)
    except OSError as error:  # a folder the user may not write: one line, not write_text_atomic's traceback
        raise ShardsError(f"{layout.out}: cannot write the merged manifest there ({error.strerror or error}); "
                          "the part manifests stay: merge again once it can be written") from None
    try:
        shutil.rmtree(layout.merged_parts_dir, ignore_errors=True)  # an earlier build's, deleted by hand
        layout.merged_parts_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:  # kept aside, not deleted: a part built again later turns the build back into them
            os.replace(path, layout.merged_parts_dir / path.name)
    except OSError as error:
        # The build is merged (readers use it); what is lost is only turning it back into parts.
        raise ShardsError(f"{layout.manifest} is written, but the part manifests could not be kept in "
                          f"{layout.merged_parts_dir} ({error.strerror or error}): delete the {layout.split}"
                          ".part-*.json left in OUT; a part built again later then needs every part built "
                          "again") from None
    remove_build_folder(layout)
    return manifest


def _part_detail(part: dict, shard: dict) -> dict:
    return part["shard_details"][shard["name"]]


def _check_all_parts(paths: list[Path], parts: list[dict], num_parts: int) -> None:
    ids = Counter(part["part"]["id"] for part in parts)
    missing = sorted(set(range(num_parts)) - set(ids))
    doubled = sorted(i for i, n in ids.items() if n > 1)
    if missing or doubled:
        how = (f": build each missing one with --num-parts {num_parts} --part-id N (N = "
               f"{', '.join(map(str, missing))}), then merge again" if missing else "")
        found = "; ".join(f"parts {what}: {', '.join(map(str, ids))}"
                          for what, ids in (("missing", missing), ("doubled", doubled)) if ids)
        raise ShardsError(f"{found} (of {num_parts}){how}")


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
