"""The files a build keeps in OUT, and whether OUT may be written: fresh, resumed or replaced.

OUT/<split>-NNNNNN.tar/.idx   the shards (renamed into place when complete)
OUT/<split>.json              the manifest, written last: its presence means "complete"
OUT/<split>.part-I-of-P.json  a finished part of a split build (until `merge`)
OUT/.build/<split>/           plan.json, one record per finished shard, spill files
OUT/.build/<split>.part-IIII.lock   held by the process building that part (shards/buildlock.py)
OUT/.build/<split>.merged-parts/  the part manifests `merge` joined (a part rebuilt later needs them)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .durable import write_text_exclusive
from .errors import ShardsError
from .plan import BuildPlan, part_shards, plan_changes, same_plan


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one split's build inside OUT."""

    out: Path
    split: str

    @property
    def manifest(self) -> Path:
        return self.out / f"{self.split}.json"

    def part_manifest(self, part_id: int, num_parts: int) -> Path:
        return self.out / f"{self.split}.part-{part_id:04d}-of-{num_parts:04d}.json"

    def part_manifests(self) -> list[Path]:
        return sorted(self.out.glob(f"{self.split}.part-*-of-*.json"))

    @property
    def build_dir(self) -> Path:
        return self.out / ".build" / self.split

    @property
    def merged_parts_dir(self) -> Path:
        """Where ``merge`` keeps the part manifests it joined: a part built again with --overwrite
        turns the merged build back into its parts (the merged manifest cannot: it sums the
        per-shard details merge checks), so that ``merge`` can join them again."""
        return self.out / ".build" / f"{self.split}.merged-parts"

    @property
    def spill_dir(self) -> Path:
        return self.build_dir / "spill"

    def spill_done(self, part_id: int) -> Path:
        return self.build_dir / f"spill-part-{part_id:04d}.json"

    def lock_file(self, part_id: int) -> Path:
        # Beside the build folder, not in it: --overwrite and the end of a build remove that folder
        # while the lock is held, and a lock file removed early would let a second build in.
        return self.out / ".build" / f"{self.split}.part-{part_id:04d}.lock"

    def record(self, name: str) -> Path:
        return self.build_dir / "shards" / f"{name}.json"

    def shard_files(self, name: str) -> tuple[Path, Path]:
        return self.out / f"{name}.tar", self.out / f"{name}.idx"


def prepare_output(layout: OutputLayout, plan: BuildPlan, part_id: int, resume: bool, overwrite: bool) -> bool:
    """Make OUT ready for this part of ``plan``; returns False when the split is already complete.

    Every part of a split build must have the same plan: one with another shard size (or seed,
    number of parts, ...) numbers its shards differently, so its block of shards overlaps the
    others' and it would write over their files. Such a part is refused before anything is
    removed or written, --overwrite or not: that flag replaces this part's files, never others'.
    """
    if plan.num_parts > 1:
        for path, stored in _recorded_plans(layout):
            _check_part_fits(stored, path, plan, resume, layout)
    if overwrite:
        _check_parts_kept(layout, plan.num_parts, part_id)
    layout.out.mkdir(parents=True, exist_ok=True)
    plan_path = layout.build_dir / "plan.json"
    if overwrite:
        _remove_previous(layout, plan, part_id)
    elif layout.manifest.exists():
        if resume:
            _check_same_plan(_stored_plan(layout.manifest, "build"), plan, resume, layout)
            return False
        raise ShardsError(
            f"{layout.out} already holds a complete {plan.split} build ({layout.manifest.name}): "
            "pass --overwrite to replace it"
        )
    elif plan_path.exists():
        _check_same_plan(_stored_plan(plan_path), plan, resume, layout)
        if not resume and _part_started(layout, plan, part_id):
            raise ShardsError(
                f"{layout.out} holds an unfinished {plan.split} build: pass --resume to finish it "
                "or --overwrite to start again"
            )
    elif any(layout.out.glob(f"{plan.split}-*.tar")):
        raise ShardsError(
            f"{layout.out} holds {plan.split} shards from another tool or an older build: "
            "pass --overwrite to replace them"
        )
    (layout.build_dir / "shards").mkdir(parents=True, exist_ok=True)
    _record_plan(plan_path, plan, resume, layout)
    _remove_temporaries(layout, plan, part_id)
    return True


def _remove_temporaries(layout: OutputLayout, plan: BuildPlan, part_id: int) -> None:
    """Remove the temporary files (``.tmp-<name>...``) that a killed run of this part left beside
    its shards and records. Those of an atomic write carry the writer's pid in their name, so no
    later run writes over them, and each kill left one more (walkthrough: resumed Slurm builds
    piled them up). Only this part's: the other parts of a split build may be writing theirs now,
    under locks of their own."""
    names = {plan.shard_name(shard) for shard in part_shards(plan.num_shards, plan.num_parts, part_id)}
    for folder in (layout.out, layout.build_dir / "shards"):  # one listing each: ImageNet has 1,000s of shards
        for path in folder.glob(".tmp-*"):
            if path.name.removeprefix(".tmp-").split(".")[0] in names:
                path.unlink(missing_ok=True)


def check_out_state(layout: OutputLayout, *, resume: bool, overwrite: bool, num_parts: int = 1,
                    part_id: int = 0) -> None:
    """What ``prepare_output`` refuses that shows without the plan (SRC uncounted): a complete
    build, an unfinished one, or foreign shards of this split in OUT, with neither flag that
    continues or replaces them; with --overwrite, one part of a merged build whose parts were not
    kept. Stricter for a split build than one part's check: a shard finished by any part counts
    as started."""
    if overwrite:
        _check_parts_kept(layout, num_parts, part_id)
    if resume or overwrite or not layout.out.is_dir():
        return
    if layout.manifest.exists():
        raise ShardsError(f"{layout.out} already holds a complete {layout.split} build ({layout.manifest.name}): "
                          "pass --overwrite to replace it")
    if (layout.build_dir / "plan.json").exists():
        if any((layout.build_dir / "shards").glob("*.json")) or layout.part_manifests():
            raise ShardsError(f"{layout.out} holds an unfinished {layout.split} build: pass --resume to finish it "
                              "or --overwrite to start again")
    elif any(layout.out.glob(f"{layout.split}-*.tar")):
        raise ShardsError(f"{layout.out} holds {layout.split} shards from another tool or an older build: "
                          "pass --overwrite to replace them")


def _record_plan(plan_path: Path, plan: BuildPlan, resume: bool, layout: OutputLayout) -> None:
    """Write plan.json, unless a plan is there already: then it must be this one.

    Created exclusively, not replaced: of parts started at once with different arguments (a
    Slurm array, one task edited), one records its plan and the others are refused here, before
    they write a shard, instead of each numbering shards its own way.
    """
    if write_text_exclusive(plan_path, json.dumps(plan.to_json(), indent=1, sort_keys=True)):
        return
    stored = _stored_plan(plan_path)
    if plan.num_parts > 1:
        _check_part_fits(stored, plan_path, plan, resume, layout)
    else:
        _check_same_plan(stored, plan, resume, layout)


def _stored_plan(path: Path, field: str | None = None, advice: str = "pass --overwrite to start again") -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardsError(f"{path}: unreadable ({error}); {advice}") from None
    if not isinstance(data, dict):
        raise ShardsError(f"{path}: not a JSON object; {advice}")
    return data.get(field) if field else data


def _check_same_plan(stored: dict, plan: BuildPlan, resume: bool, layout: OutputLayout) -> None:
    current = plan.to_json()
    if same_plan(stored, current):
        return
    verb = "--resume needs the same arguments" if resume else "a different build is in progress"
    raise ShardsError(f"{layout.out}: {verb} ({plan_changes(stored, current)}); pass --overwrite to start again")


def _recorded_plans(layout: OutputLayout) -> list[tuple[Path, dict]]:
    """The plans of the builds whose shards are in OUT: the complete manifest's, the unfinished
    build's plan.json and each part manifest's (their shards stay until merge)."""
    advice = f"remove it, or the {layout.split} build it belongs to, to start again"
    found = []
    for path, field in [(layout.manifest, "build"), (layout.build_dir / "plan.json", None),
                        *((p, "build") for p in layout.part_manifests())]:
        if path.exists():
            found.append((path, _stored_plan(path, field, advice) or {}))
    return found


def _check_part_fits(stored: dict, path: Path, plan: BuildPlan, resume: bool, layout: OutputLayout) -> None:
    """Refuse a part whose plan is not the one recorded in ``path``: the build it would join."""
    current = plan.to_json()
    if same_plan(stored, current):
        return
    split = plan.split
    recorded = f"the {split} build recorded in {path.relative_to(layout.out)} has other arguments than this part"
    verb = f"--resume needs the same arguments, but {recorded}" if resume else recorded
    raise ShardsError(
        f"{layout.out}: {verb} ({plan_changes(stored, current)}); all parts of a build need the same ones: "
        f"rerun this part with that build's, or delete that build ({split}-*.tar, {split}-*.idx, {split}.json, "
        f"{split}.part-*.json, .build/{split}, .build/{split}.merged-parts) to start a new one; --overwrite "
        "replaces only this part's shards"
    )


def _part_started(layout: OutputLayout, plan: BuildPlan, part_id: int) -> bool:
    if layout.part_manifest(part_id, plan.num_parts).exists() or layout.spill_done(part_id).exists():
        return True
    names = [plan.shard_name(s) for s in part_shards(plan.num_shards, plan.num_parts, part_id)]
    return any(layout.record(n).exists() or layout.shard_files(n)[0].exists() for n in names)


def _parts_not_kept(layout: OutputLayout, num_parts: int, part_id: int) -> list[int]:
    """The other parts of a merged build of ``num_parts`` whose part manifests are neither kept by
    ``merge`` nor back in OUT already (another part, rebuilt at the same time, moved them)."""
    return [i for i in range(num_parts) if i != part_id and not (layout.merged_parts_dir / layout.part_manifest(
        i, num_parts).name).exists() and not layout.part_manifest(i, num_parts).exists()]


def _check_parts_kept(layout: OutputLayout, num_parts: int, part_id: int) -> None:
    """Refuse --overwrite of one part of a merged build that cannot become parts again: merged by
    a version that deleted the part manifests, rebuilding one part removed the merged manifest and
    left the others unmergeable (walkthrough: every part had to be built again)."""
    if num_parts == 1 or not layout.manifest.exists():
        return
    lost = _parts_not_kept(layout, num_parts, part_id)
    if lost:
        split = layout.split
        raise ShardsError(
            f"{layout.out} holds the merged {split} build ({split}.json) without the part manifests of parts "
            f"{', '.join(map(str, lost))} (merged by an older version, which deleted them): part {part_id} alone "
            f"could not be merged with them again; to build the split anew, delete {split}.json and build every "
            f"part with --overwrite (or the whole split in one process with --overwrite)")


def _unmerge(layout: OutputLayout, plan: BuildPlan, part_id: int) -> None:
    """A part of a split build built again: where the build was merged, it becomes its parts again,
    waiting for this one and ``merge`` (the merged manifest removed, the other parts' manifests back
    in OUT); this part's kept manifest goes in any case. Parts of an array rebuilt at once each do
    this, in an order that keeps every step of one right for the others: the merged manifest goes
    first (a part that still sees it finds every other part's manifest, kept or back in OUT, as
    ``_check_parts_kept`` asks), then this part's kept manifest (before its own in OUT, removed
    next: a peer's move of it lands before that removal, or finds nothing), then the others' moves,
    each skipped where a peer moved or removed it first."""
    kept = layout.merged_parts_dir
    merged = layout.manifest.exists()  # only then: kept manifests without it are a deleted build's
    layout.manifest.unlink(missing_ok=True)
    (kept / layout.part_manifest(part_id, plan.num_parts).name).unlink(missing_ok=True)
    if merged:
        for other in range(plan.num_parts):
            if other != part_id:
                try:
                    os.replace(kept / layout.part_manifest(other, plan.num_parts).name,
                               layout.part_manifest(other, plan.num_parts))
                except FileNotFoundError:
                    pass
    try:
        kept.rmdir()
    except OSError:  # not empty yet (another part's turn), or gone
        pass


def _remove_previous(layout: OutputLayout, plan: BuildPlan, part_id: int) -> None:
    if plan.num_parts == 1:
        layout.manifest.unlink(missing_ok=True)
        shutil.rmtree(layout.build_dir, ignore_errors=True)
        shutil.rmtree(layout.merged_parts_dir, ignore_errors=True)
        for path in [*layout.out.glob(f"{plan.split}-*.tar"), *layout.out.glob(f"{plan.split}-*.idx"),
                     *layout.part_manifests(), *layout.out.glob(f".tmp-{plan.split}-*")]:
            path.unlink()
        return
    _unmerge(layout, plan, part_id)
    # One part of a split build replaces only its own files: the other parts may be running.
    layout.part_manifest(part_id, plan.num_parts).unlink(missing_ok=True)
    layout.spill_done(part_id).unlink(missing_ok=True)
    for shard in part_shards(plan.num_shards, plan.num_parts, part_id):
        name = plan.shard_name(shard)
        for path in (*layout.shard_files(name), layout.record(name)):
            path.unlink(missing_ok=True)


def discard_build(layout: OutputLayout, plan: BuildPlan) -> None:
    """Remove what a single-part build of ``plan`` wrote (its shards, indexes and build folder),
    leaving OUT as a fresh build would find it."""
    for shard in range(plan.num_shards):
        for path in layout.shard_files(plan.shard_name(shard)):
            path.unlink(missing_ok=True)
    remove_build_folder(layout)


def remove_build_folder(layout: OutputLayout) -> None:
    """Remove ``OUT/.build/<split>``, and ``OUT/.build`` when no other split's build is in it."""
    shutil.rmtree(layout.build_dir, ignore_errors=True)
    try:
        layout.build_dir.parent.rmdir()
    except OSError:
        pass
