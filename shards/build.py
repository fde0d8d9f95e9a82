"""``build_shards``: one split of a source into shards, for one part of a possibly split build."""

from __future__ import annotations

import json
import os
import sys
import time
import unicodedata
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from .annotations import box_origin, check_annotation_options, with_annotations
from .buildlock import build_lock
from .cifar import PIXELS as CIFAR_PIXELS
from .cifar import SIDE as CIFAR_SIDE
from .cifar import read_cifar_split
from .detect import SPLIT_NAMES, SourceSpec, detect_source
from .durable import write_text_atomic
from .errors import ShardsError
from .images import CHECKS, ImageOptions, PreparedImage, prepare_image
from .labels import load_val_labels
from .manifest import (SHARD_FIELDS, check_samples_written, class_list_difference, compose_manifest, read_manifest,
                       write_manifest)
from .outdir import OutputLayout, check_out_state, discard_build, prepare_output, remove_build_folder
from .plan import DIGEST_MODULUS, BuildPlan, count_shards, input_digest, part_shards, shard_of
from .sources import InputItem, TarStream, cifar_inputs, is_missing, list_folder
from .spill import SpillWriter, spill_path
from .writing import ShardJob, read_locator, write_shards

SPLITS = ("train", "val", "test")  # the CIFAR archives have train and test
LABEL_FIELDS = ("fine", "coarse")  # CIFAR-100's two labels


@dataclass(frozen=True)
class BuildRequest:
    """The arguments of ``python -m shards build``."""

    src: Path
    out: Path
    split: str
    labels: Path | None = None
    boxes: Path | None = None  # ImageNet val: the ILSVRC2012_bbox_val_v3 XML folder or .tgz
    classes: Path | None = None  # a train manifest whose class map this build must use
    label_field: str | None = None  # CIFAR-100: "fine" (when None) or "coarse"
    shard_size: int = 512 * 10**6
    workers: int = 1
    resize_short: int | None = None
    quality: int = 90
    check: str = "header"
    seed: int = 0
    num_parts: int = 1
    part_id: int = 0
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    progress: bool = True


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the (part) manifest, or None when it was already complete."""

    manifest_path: Path
    manifest: dict | None
    seconds: float


def build_shards(request: BuildRequest) -> BuildResult:
    """Build (or resume) one split, or one part of it, and write its manifest last.

    A build that writes no sample is a ShardsError naming the commonest rejection reasons, and
    leaves no manifest; for a split build, ``merge`` applies that rule to the whole.
    """
    started = time.monotonic()
    spec, fixed_classes = _check_request(request)
    layout = OutputLayout(Path(request.out), request.split)
    build = _build_cifar if spec.is_cifar else _build_streamed if spec.streaming else _build_folder
    with build_lock(layout, request.part_id, request.num_parts):  # before OUT is read: what it finds is final
        manifest = build(request, spec, layout, fixed_classes)
    path = layout.manifest if request.num_parts == 1 else layout.part_manifest(request.part_id, request.num_parts)
    return BuildResult(path, manifest, time.monotonic() - started)


def check_build(request: BuildRequest) -> str:
    """What a build of ``request`` checks before it reads an image, without writing anything:
    the options, SRC's kind, the --labels/--classes/--boxes files, and whether OUT holds a build
    that --resume or --overwrite must be given for. Returns SRC's kind; ShardsError otherwise.
    For a launcher (slurm/build_shards.sh) to refuse a bad command before its tasks wait in a queue.
    What needs SRC counted (whether --resume's other arguments match the unfinished build's) is
    left to the build."""
    spec, _ = _check_request(request)
    check_out_state(OutputLayout(Path(request.out), request.split), resume=request.resume,
                    overwrite=request.overwrite, num_parts=request.num_parts, part_id=request.part_id)
    return spec.kind


def _check_request(request: BuildRequest) -> tuple[SourceSpec, list[str] | None]:
    """The options, SRC's kind and the annotation and class files: (SourceSpec, --classes' list)."""
    _validate(request)
    labels = load_val_labels(request.labels) if request.labels else None
    fixed_classes = _classes_from_manifest(request.classes) if request.classes else None
    spec = detect_source(request.src, labels, request.split)
    _check_options_fit(request, spec)
    spec = with_annotations(spec, split=request.split, boxes=request.boxes)
    for warning in spec.cub.warnings if spec.cub is not None else ():  # before the work: the user can stop it
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if spec.cub is not None and fixed_classes is not None:  # up front: a .tgz would meet a stranger mid-stream
        _check_classes(spec.cub.classes, fixed_classes, str(request.classes))
    return spec, fixed_classes


def _validate(request: BuildRequest) -> None:
    checks = [
        (request.split in SPLITS, f"--split must be one of {SPLITS}"),
        (request.shard_size >= 64_000, "--shard-size must be at least 64kB"),
        (request.workers >= 1, "--workers must be at least 1"),
        (request.resize_short is None or request.resize_short >= 16, "--resize-short must be at least 16"),
        (1 <= request.quality <= 100, "--quality must be between 1 and 100"),
        (request.check in CHECKS, f"--check must be one of {CHECKS}"),
        (request.label_field in (None, *LABEL_FIELDS), f"--label-field must be one of {LABEL_FIELDS}"),
        (request.num_parts >= 1, "--num-parts must be at least 1"),
        # --part-id alone (the default of one part): the range, and that --num-parts is what it lacks.
        (0 <= request.part_id < request.num_parts,
         f"--part-id must be in [0, --num-parts={request.num_parts}), got {request.part_id}"
         + (" (give --num-parts: how many parts the build is split into)" if request.num_parts == 1 else "")),
        # The shard hash takes it as 8 signed bytes: a larger one was an OverflowError traceback.
        (0 <= request.seed < 2**63, f"--seed must be in [0, 2**63) (it seeds the shuffle), got {request.seed}"),
        (not (request.resume and request.overwrite), "--resume and --overwrite exclude each other"),
        (not Path(request.out).exists() or Path(request.out).is_dir(), f"OUT {request.out} is a file, not a folder"),
        (not _inside(Path(request.out), Path(request.src)),
         "OUT must not be SRC or inside it (its files would become inputs)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ShardsError(message)


def _check_options_fit(request: BuildRequest, spec: SourceSpec) -> None:
    """Options that only some kinds of source take."""
    if not spec.is_cifar and request.label_field:
        raise ShardsError("--label-field is for the CIFAR archives (CIFAR-100's fine or coarse labels)")
    if spec.is_cifar and request.labels:
        raise ShardsError("--labels is for ImageNet validation images: a CIFAR archive holds its own labels")
    if spec.is_cifar and request.resize_short:
        raise ShardsError("--resize-short does not apply to CIFAR: its 32x32 images are stored as they are (PNG)")
    check_annotation_options(spec, split=request.split, labels=request.labels, boxes=request.boxes)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _classes_from_manifest(path: Path) -> list[str]:
    if Path(path).is_dir():  # the train build's OUT: "build the shards again" was the advice
        found = [f"{split}.json" for split in SPLITS if (Path(path) / f"{split}.json").is_file()]  # train first
        which = f"give {Path(path) / found[0]}" if found else "give the train.json in the train build's OUT"
        raise ShardsError(f"--classes {path}: a folder; --classes takes a manifest file: {which}")
    try:
        return read_manifest(path)["classes"]
    except ShardsError as error:
        if Path(path).is_file() and Path(path).suffix != ".json":
            # A labels CSV or a class list given here: "build the shards again" does not apply.
            raise ShardsError(f"--classes {path}: not a shard manifest; --classes takes the train.json that "
                              "`python -m shards build` wrote for the train split (its class list, in order)") from None
        raise ShardsError(f"--classes {error}") from None


def _make_plan(request: BuildRequest, spec: SourceSpec, num_shards: int, *, classes_from: str | None = None,
               label_field: str | None = None, source_files: str | None = None) -> BuildPlan:
    return BuildPlan(
        split=request.split, source=str(Path(request.src).resolve()), source_kind=spec.kind,
        seed=request.seed, shard_size=request.shard_size, num_shards=num_shards,
        num_parts=request.num_parts, resize_short=request.resize_short, quality=request.quality,
        check=request.check, labels=_resolved(request.labels),
        classes_from=classes_from or _resolved(request.classes) or (spec.cub.class_source if spec.cub else None),
        label_field=label_field,
        boxes=box_origin(spec),
        source_files=source_files,
    )


def _resolved(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


# Per sample: three 512-byte headers and the .cls and .json data blocks (the JPEG's own padding,
# 256 bytes on average, is left out: a slight underestimate that rounds shards down in size).
_TAR_OVERHEAD = 5 * 512 - 256


def _estimate_output_bytes(samples: Iterable[bytes], options: ImageOptions, total_bytes: int,
                           count: int | None) -> float:
    """Expected shard bytes, from the first images (re-encoded when --resize-short asks), so
    that shards come out near --shard-size; ``count`` is estimated when a stream hides it."""
    size_in = size_out = seen = 0
    for data in islice(samples, 16):
        result = prepare_image(data, options) if options.resize_short or options.raw_rgb_side else None
        if result is None or isinstance(result, PreparedImage):
            seen += 1
            size_in += len(data)
            size_out += len(result.data) if result else len(data)
    if not seen:
        return float(total_bytes)
    count = count if count is not None else total_bytes / (size_in / seen)
    return total_bytes * size_out / size_in + count * _TAR_OVERHEAD


def _given_classes(request: BuildRequest, spec: SourceSpec, fixed_classes: list[str] | None):
    """The class list known before SRC is read (``--classes``, else the ``--labels`` file's), and
    the file it came from; ``(None, None)`` when SRC's own class folders or tars define it."""
    if fixed_classes is not None:
        return fixed_classes, str(request.classes)
    if spec.labels is not None:
        return spec.labels.classes, str(request.labels)
    if spec.cub is not None:
        return spec.cub.classes, spec.cub.class_source
    return None, None


def _check_classes(wnids: Iterable[str | None], classes: list[str], origin: str) -> None:
    missing = sorted({w for w in wnids if w is not None} - set(classes))
    if missing:
        raise ShardsError(f"{len(missing)} classes of SRC are not in {origin}: {', '.join(missing[:10])}"
                          f"{_normalization_hint(missing, classes)}")


def _normalization_hint(names: Iterable[str], classes: Iterable[str]) -> str:
    """Where ``names`` missing from ``classes`` are there under another Unicode normalization
    (macOS writes folder names decomposed, "e" + combining accent): the error named classes that
    look exactly like the list's (walkthrough). Not matched silently: the names are the labels'
    identity in every manifest."""
    listed = {unicodedata.normalize("NFC", name) for name in classes}
    alike = [name for name in names if unicodedata.normalize("NFC", name) in listed]
    if not alike:
        return ""
    return (f" ({len(alike)} of them differ from a listed class only in Unicode normalization, NFD against NFC, as "
            "macOS writes folder names: rename them to the list's form, e.g. with convmv --nfc, or build both "
            "splits from folders written alike)")


def _refuse_split_classes(classes: Iterable[str], src: Path, *, split: str, in_tar: bool) -> None:
    """SRC read as classes train and val (test, validation): the folder or tar above a data set's
    splits, e.g. ``train/<wnid>/`` beside a flat ``val/`` (the official tars extracted without
    sorting val), or Kaggle's ``CLS-LOC``; one split-named class among others (CIFAR-100 and COCO
    have a "train") is a class."""
    splits = sorted(name for name in classes if name.lower() in SPLIT_NAMES)
    if len(splits) < 2:
        return
    wanted = next((name for name in splits if SPLIT_NAMES[name.lower()] == split), None)
    if in_tar:
        advice = f"extract it and give its {wanted or split}/ folder as SRC"
    else:
        advice = f"give the split's own folder as SRC ({src / (wanted or split)})"
    raise ShardsError(f"SRC {src}: its classes {', '.join(splits)} are split folders: SRC is the "
                      f"{'tar' if in_tar else 'folder'} above a data set's splits; {advice}")


def _without_others_missing(items: list[InputItem], classes: list[str]) -> list[InputItem]:
    """``items`` less the images a list names but SRC lacks whose class is not among ``classes``
    (the full val labels and --classes of a train subset: the other classes' images are not
    missing, they are not wanted)."""
    wanted = set(classes)
    return [item for item in items if not (is_missing(item) and item.wnid not in wanted)]


def _train_classes(layout: OutputLayout) -> list[str] | None:
    """The class list of the train split already built in OUT, if any."""
    if layout.split == "train" or not layout.out.joinpath("train.json").is_file():
        return None
    return list(read_manifest(layout.out / "train.json")["classes"])


def _check_fits_train(layout: OutputLayout, classes: list[str], *, origin: str, hint: str = "",
                      takes_classes: bool = True) -> None:
    """A val or test split built into an OUT that holds the train split has the train split's
    class list: otherwise its labels mean other classes (training would refuse it only later).
    ``takes_classes``: whether --classes can give SRC the train split's list (not a CIFAR archive's)."""
    train = _train_classes(layout)
    if train is None or classes == train:
        return
    differ = class_list_difference(train, classes, first_where="there", second_where=f"in {origin}")
    if not hint and not takes_classes:
        # A CIFAR archive's --classes must be its own list, so the advice below does not apply:
        # CIFAR-10's test batch into a CIFAR-100 folder was refused in turn when it was followed
        # (walkthrough). (Elsewhere --classes takes train's list, for a SRC whose images are of its classes.)
        raise ShardsError(f"{layout.out / 'train.json'}: the train split has another class list ({differ}): SRC is "
                          f"another data set than the train split's; give that data set's {layout.split} split, or "
                          "another OUT")
    raise ShardsError(f"{layout.out / 'train.json'}: the train split has another class list ({differ}): this "
                      f"{layout.split} split's labels would mean other classes; build it with --classes "
                      f"{layout.out / 'train.json'}{hint}")


def _label_field_hint(class_names: dict[str, list[str]], wanted: list[str] | None) -> str:
    """For a CIFAR-100 archive: the --label-field whose classes are ``wanted``, if one is."""
    fields = [field for field, names in class_names.items() if names == wanted]
    return f" (they are its {fields[0]} labels: give --label-field {fields[0]})" if fields else ""


def _build_folder(request, spec, layout, fixed_classes) -> dict | None:
    items, folder_classes, total_bytes, source_files = list_folder(spec)
    if not items:
        raise ShardsError(f"SRC {spec.path}: no files in it or its class folders")
    given, origin = _given_classes(request, spec, fixed_classes)
    classes = given or folder_classes
    if given is not None:
        items = _without_others_missing(items, given)
        _check_classes((i.wnid for i in items), given, origin)
    else:
        _refuse_split_classes(folder_classes, spec.path, split=request.split, in_tar=False)
    _check_fits_train(layout, classes, origin=origin or f"SRC {spec.path}'s class folders")
    readable = (read_locator(i.locator) for i in items if not i.rejected)
    options = ImageOptions(request.resize_short, request.quality, request.check)
    estimate = _estimate_output_bytes(readable, options, total_bytes, len(items))
    plan = _make_plan(request, spec, count_shards(estimate, request.shard_size, len(items)), source_files=source_files)
    if not prepare_output(layout, plan, request.part_id, request.resume, request.overwrite):
        return None
    mine = part_shards(plan.num_shards, plan.num_parts, request.part_id)
    groups: dict[int, list[InputItem]] = {shard: [] for shard in mine}
    digest = 0
    for item in items:
        digest = (digest + input_digest(item.source)) % DIGEST_MODULUS
        shard = shard_of(item.key, plan.seed, plan.num_shards)
        if shard in groups:
            groups[shard].append(item)
    jobs = [ShardJob(s, items=groups[s]) for s in mine if not _shard_done(layout, plan, s)]
    source_totals = {"inputs": len(items), "digest": digest, "bytes": total_bytes}
    return _write_and_finish(request, plan, layout, classes, jobs, source_totals, sum(map(len, groups.values())))


def _build_streamed(request, spec, layout, fixed_classes) -> dict | None:
    total_bytes = spec.path.stat().st_size
    if spec.cub is not None:  # the archive holds both splits: this one's share, by image count
        total_bytes = total_bytes * len(spec.cub.images) // max(1, len(spec.cub.images) + len(spec.cub.others))
    options = ImageOptions(request.resize_short, request.quality, request.check)
    readable = (data for item, data in TarStream(spec) if not item.rejected)
    estimate = _estimate_output_bytes(readable, options, total_bytes, None)
    readable.close()  # closes the archive now, not when the build ends
    plan = _make_plan(request, spec, count_shards(estimate, request.shard_size))
    if not prepare_output(layout, plan, request.part_id, request.resume, request.overwrite):
        return None
    mine = part_shards(plan.num_shards, plan.num_parts, request.part_id)
    if not layout.spill_done(request.part_id).exists():
        try:
            _spill_tar(spec, plan, layout, mine, fixed_classes, request)
        except ShardsError:
            # A damaged archive, a class of SRC not in --classes: nothing of pass 1 can be resumed
            # (it starts over), and a build left behind made the mended command "a different build".
            if plan.num_parts == 1:
                discard_build(layout, plan)
            raise
    return _write_spilled(request, plan, layout, mine, fixed_classes)


def _build_cifar(request, spec, layout, fixed_classes) -> dict | None:
    """A CIFAR split, read and checked whole first, then spilled and written like a tar stream."""
    split = read_cifar_split(spec.path, spec.kind, request.split, request.label_field)
    if fixed_classes is not None and fixed_classes != split.classes:
        raise ShardsError(f"--classes {request.classes}: its {len(fixed_classes)} classes are not the "
                          f"{len(split.classes)} of {split.class_source}, in the same order"
                          f"{_label_field_hint(split.class_names, fixed_classes)}")
    _check_fits_train(layout, split.classes, origin=split.class_source, takes_classes=False,
                      hint=_label_field_hint(split.class_names, _train_classes(layout)))
    for warning in split.unofficial_counts():  # after the checks, before the work: the user can stop it
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    pixels = (data for _, data in cifar_inputs(split))
    estimate = _estimate_output_bytes(pixels, ImageOptions(raw_rgb_side=CIFAR_SIDE), split.count * CIFAR_PIXELS,
                                      split.count)
    several = len(split.class_names) > 1  # CIFAR-10's one label needs no name in the plan
    plan = _make_plan(request, spec, count_shards(estimate, request.shard_size, split.count),
                      classes_from=split.class_source, label_field=split.label_field if several else None)
    if not prepare_output(layout, plan, request.part_id, request.resume, request.overwrite):
        return None
    mine = part_shards(plan.num_shards, plan.num_parts, request.part_id)
    if not layout.spill_done(request.part_id).exists():
        counts = _spill(cifar_inputs(split), plan, layout, mine)
        _mark_spilled(layout, request.part_id, counts, split.classes, split.source_bytes)
    return _write_spilled(request, plan, layout, mine, None)


def _write_spilled(request, plan, layout, mine, fixed_classes) -> dict:
    """Pass 2 of a streamed build: this part's unfinished shards from their spill files."""
    spilled = json.loads(layout.spill_done(request.part_id).read_text())
    classes = fixed_classes or spilled["classes"]
    jobs = [ShardJob(s, spill=str(spill_path(layout.spill_dir, s))) for s in mine if not _shard_done(layout, plan, s)]
    totals = {k: spilled[k] for k in ("inputs", "digest", "bytes")}
    return _write_and_finish(request, plan, layout, classes, jobs, totals, spilled["mine"])


def _spill_tar(spec, plan, layout, mine, fixed_classes, request) -> None:
    """Pass 1 over a tar stream, checking each input's class as it goes."""
    stream = TarStream(spec)
    given, origin = _given_classes(request, spec, fixed_classes)
    allowed = None if given is None else set(given)  # tested once per image: a set, not a list
    if given is not None:  # known before the stream: a mismatch costs no pass over the archive
        _check_fits_train(layout, given, origin=origin)
    bar = tqdm(total=spec.path.stat().st_size, unit="B", unit_scale=True, desc=f"{plan.split}: reading SRC",
               disable=not request.progress)

    def checked() -> Iterator[tuple[InputItem, bytes]]:
        for item, data in stream:
            if allowed is not None and is_missing(item) and item.wnid not in allowed:
                continue  # listed by --labels for a class this build leaves out (_without_others_missing)
            if allowed is not None and item.wnid is not None and item.wnid not in allowed:
                # Checked while streaming: a 140 GB tar fails at its first stranger, not at its end.
                # (Not before: a --labels file may name classes whose images SRC does not hold.)
                whose = f"its label in {request.labels}" if spec.labels is not None else "of SRC"
                raise ShardsError(f"{item.source}: class {item.wnid} ({whose}) is not in {origin}: SRC holds images "
                                  "of classes the build does not have; give SRC with only the images of its classes"
                                  f"{_normalization_hint([item.wnid], given)}")
            if given is None and item.wnid is not None and item.wnid.lower() in SPLIT_NAMES:
                # at the second split-named "class"
                _refuse_split_classes(stream.class_names, spec.path, split=request.split, in_tar=True)
            yield item, data
            bar.update(stream.bytes_read - bar.n)

    try:
        counts = _spill(checked(), plan, layout, mine)
    finally:  # closed before an error is printed: it was printed into the bar's line, the bar drawn after it
        bar.close()
    given_by_source, source_origin = _given_classes(request, spec, None)
    classes = given_by_source or sorted(stream.class_names)
    _check_fits_train(layout, fixed_classes or classes,
                      origin=str(request.classes) if fixed_classes else source_origin or f"SRC {spec.path}'s classes")
    _mark_spilled(layout, request.part_id, counts, classes, spec.path.stat().st_size)


def _spill(inputs: Iterable[tuple[InputItem, bytes]], plan, layout, mine) -> dict:
    """Pass 1 of a streamed build: every input of this part into its shard's spill file; returns
    the inputs seen (all parts'), the digest of their paths and how many are this part's."""
    writer = SpillWriter(layout.spill_dir, mine)
    seen = digest = in_mine = 0
    for item, data in inputs:
        seen += 1
        digest = (digest + input_digest(item.source)) % DIGEST_MODULUS
        shard = shard_of(item.key, plan.seed, plan.num_shards)
        if shard in mine:
            writer.add(shard, item, data)
            in_mine += 1
    writer.close()
    return {"inputs": seen, "digest": digest, "mine": in_mine}


def _mark_spilled(layout, part_id: int, counts: dict, classes: list[str], source_bytes: int) -> None:
    """The record that pass 1 of this part is complete; pass 2 and a resumed build read it."""
    write_text_atomic(layout.spill_done(part_id), json.dumps({**counts, "bytes": source_bytes, "classes": classes}))


def _shard_done(layout: OutputLayout, plan: BuildPlan, shard: int) -> bool:
    name = plan.shard_name(shard)
    record_path, (tar, index) = layout.record(name), layout.shard_files(name)
    if not (record_path.exists() and tar.exists() and index.exists()):
        return False
    return tar.stat().st_size == json.loads(record_path.read_text())["bytes"]


def _write_and_finish(request, plan, layout, classes, jobs, source_totals, images_in_part) -> dict:
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    mine = part_shards(plan.num_shards, plan.num_parts, request.part_id)
    with _Progress(images_in_part, f"{plan.split}: writing shards", request.progress) as progress:
        write_shards(jobs, plan, layout, class_index, workers=request.workers, strict=request.strict,
                     on_progress=progress.advance)
    records = [json.loads(layout.record(plan.shard_name(s)).read_text()) for s in mine]
    manifest = compose_manifest(plan.to_json(), classes, records, source_totals)
    totals = manifest["totals"]
    if totals["inputs"] != totals["samples"] + totals["rejected"]:
        raise AssertionError(f"bug: inputs {totals['inputs']} != written + rejected in {totals}")
    if plan.num_parts == 1:
        try:
            check_samples_written(manifest)
        except ShardsError:
            discard_build(layout, plan)  # empty shards are worth nothing; a rerun starts afresh
            raise
        write_manifest(layout.manifest, manifest)
        remove_build_folder(layout)
        return manifest
    # A part may write nothing (its shards' inputs may all be rejected): merge judges the whole.
    manifest["part"] = {"id": request.part_id, "of": plan.num_parts}
    manifest["shard_details"] = {r["name"]: {k: v for k, v in r.items() if k not in SHARD_FIELDS} for r in records}
    write_manifest(layout.part_manifest(request.part_id, plan.num_parts), manifest)
    return manifest


class _Progress:
    """A tqdm bar over images with images/s and MB/s written."""

    def __init__(self, total: int, description: str, enabled: bool):
        self._bar = tqdm(total=total, unit="img", desc=description, disable=not enabled, smoothing=0.1)
        self._bytes, self._started, self._last = 0, time.monotonic(), 0.0

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

    def advance(self, images: int, size: int) -> None:
        self._bytes += size
        self._bar.update(images)
        now = time.monotonic()
        if now - self._last > 0.5:
            self._last = now
            self._bar.set_postfix_str(f"{self._bytes / 1e6 / max(now - self._started, 1e-9):.0f} MB/s")


def default_workers() -> int:
    """One worker per core the process may use."""
    return max(1, len(os.sched_getaffinity(0)))
