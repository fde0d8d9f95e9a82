"""One evaluation: check everything before any work (model, weights, shards and their classes,
boxes for localization, a CAM head), then run each task as one pass over the split, every rank
on its part, and write ``OUT/eval.json``, ``OUT/eval.md`` and the plots on the main process."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shards.errors import ShardsError
from shards.manifest import load_manifest

from ..data import LoaderError, LoaderOptions, create_loader
from ..data.sharding import part_sizes
from ..errors import EvalError
from ..export import tensors_sha256
from ..launcher import ignored_precision, lone_process_problem
from ..precision import resolve_precision
from ..run_lock import RunFolderLock
from . import tasks
from .catalog import DEFAULT_EPSILON, TASKS, option_value_problem
from .ood import noise_images, ood_metrics
from .report import named_path, unfinished
from .source import ModelSource, check_classes, load_model

NOISE_SETS = ("uniform", "gaussian")


@dataclass(frozen=True)
class EvalRequest:
    """Everything one evaluation needs, checked by ``check_request`` before any work."""

    source: ModelSource
    shards: Path
    split: str
    tasks: tuple[str, ...]
    out: Path
    ood_shards: tuple[Path, ...] = ()
    ood_split: str | None = None  # the OOD folders' split (None: --split where they have it, else their only one)
    batch_size: int = 64
    backend: str = "dali"
    precision: str = "auto"  # "bf16", "no" (float32), or "auto": bf16 where the process computes on a GPU
    num_threads: int = 4
    seed: int = 0
    epsilon: float = DEFAULT_EPSILON
    occlusion_steps: int = 9
    cam_examples: int = 16
    progress: bool = True
    tasks_chosen: bool = True  # False: the default task list, from which a model without a CAM drops localize


def check_request(request: EvalRequest) -> dict:
    """Every check that needs no model run; returns the split's manifest. EvalError on the first problem."""
    problem = option_value_problem(tasks=request.tasks, precision=request.precision, batch_size=request.batch_size,
                                   epsilon=request.epsilon, seed=request.seed, num_threads=request.num_threads)
    if problem is not None:
        raise EvalError(problem)
    size = request.source.image_size
    if not 2 <= request.occlusion_steps <= size + 1:
        raise EvalError(f"--occlusion-steps must be in [2, {size + 1}] (sides 0 .. {size} px), got "
                        f"{request.occlusion_steps}")
    if request.out.exists() and not request.out.is_dir():
        raise EvalError(f"--out {request.out}: exists and is not a folder")
    manifest = _manifest(request.shards, request.split, what="--shards")
    check_classes(request.source, manifest["classes"], where=f"{request.shards / (request.split + '.json')}")
    fit = cifar_fit(request.source, request.shards, manifest)
    if fit is not None:  # the numbers would measure the crop or the black border, not the model
        raise EvalError(f"--shards {request.shards}: the model was trained with CIFAR's transform, but the "
                        f"{request.split} split holds {fit}; evaluate it on images of its training size")
    if "localize" in request.tasks and not has_boxes(manifest):
        raise EvalError(f"--tasks localize: {request.shards / (request.split + '.json')} has no sample with a box "
                        "(build val with LOC_val_solution.csv or --boxes, or use CUB-200-2011), or drop localize")
    if request.ood_split is not None and not request.ood_shards:
        raise EvalError("--ood-split: no --ood-shards folder to read it from")
    seen: dict[Path, Path] = {}
    ood_digests: dict[Path, set[str]] = {}
    for folder in request.ood_shards:
        same = seen.setdefault(Path(folder).resolve(), folder)
        if same is not folder:  # its samples would be scored, and counted in the table, twice
            also = "" if str(same) == str(folder) else f" (as {folder})"
            raise EvalError(f"--ood-shards names {same} twice{also}")
        split = _ood_split(folder, request.split, request.ood_split)
        ood_manifest = _manifest(folder, split, what="--ood-shards",
                                 split_option="--ood-split" if request.ood_split else "--split")
        if Path(folder).resolve() == Path(request.shards).resolve() and split == request.split:
            raise EvalError(f"--ood-shards {folder}: the in-distribution shards themselves ({split}); name "
                            "out-of-distribution data")
        _check_not_a_copy(folder, ood_manifest, split, request.shards)
        _check_not_rebuilt(folder, ood_manifest, request.shards, manifest, request.split)
        digests = {entry["sha256"] for entry in ood_manifest["shards"]}
        twin = next((other for other, theirs in ood_digests.items() if theirs & digests), None)
        if twin is not None:  # the same images scored twice, counted twice in compare's means
            raise EvalError(f"--ood-shards {folder}: the same shards as {twin} (byte-identical); name each OOD set "
                            "once")
        ood_digests[folder] = digests
    return manifest


def make_out(out: Path) -> None:
    """The output folder, made after every check, the model's too: a refused request leaves
    nothing behind (a refusal of the model's CAM at this size left an empty RUN/eval)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvalError(f"--out {out}: cannot create it ({error.strerror})") from None


def cifar_fit(source: ModelSource, folder: Path, manifest: dict) -> str | None:
    """For a model of CIFAR's transform (images taken as they are, no resize): what becomes of a
    split whose first samples are not ``image_size`` square (None: they are, or the model resizes)."""
    from ..data_check import first_sample_sizes

    size = source.image_size
    if source.augmentation != "cifar":
        return None
    other = next(((key, w, h) for key, w, h in first_sample_sizes(folder, manifest) if (w, h) != (size, size)), None)
    if other is None:
        return None
    key, width, height = other
    how = ("centre-cropped" if width >= size and height >= size else
           "padded with black" if width <= size and height <= size else "cropped and padded")
    return (f"{width}x{height} images (first: {key}), {how} to {size}x{size}: the CIFAR transform does not resize "
            "(ODIN's 'crop' variant for larger images, not its 'resize' one)")


def _check_not_a_copy(folder: Path, ood_manifest: dict, split: str, shards: Path) -> None:
    """An OOD set holding shards byte-identical to the in-distribution ones (a copy of the test
    split, of train) would score as in-distribution and make every OOD number meaningless; the
    manifests' sha256 of each shard tell it without reading a shard."""
    ood = {entry["sha256"]: entry["name"] for entry in ood_manifest["shards"]}
    for inside in _splits_in(shards):
        try:
            entries = load_manifest(Path(shards), inside)["shards"]
        except ShardsError:
            continue  # a split the evaluation does not read; its own commands report its damage
        same = [(ood[entry["sha256"]], entry["name"]) for entry in entries if entry["sha256"] in ood]
        if same:
            raise EvalError(f"--ood-shards {folder}: {len(same)} of its {len(ood)} {split} shard(s) are byte-identical "
                            f"to the in-distribution {shards}'s {inside} shards ({same[0][0]} = {same[0][1]}): "
                            "name out-of-distribution data")


_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")


def image_signatures(folder: Path, manifest: dict) -> set[tuple[str, int]]:
    """(sample key, image bytes) of every sample of a split, from its DALI indexes (no tar read);
    an index that cannot be read gives nothing (the loader reports it)."""
    from shards.dali_index import read_index

    found = set()
    for shard in manifest["shards"]:
        try:
            samples = read_index(Path(folder) / shard["index"])
        except (OSError, ValueError):
            continue
        for entries in samples:
            found.update((name.rsplit(".", 1)[0], size) for extension, _, size, name in entries
                         if extension in _IMAGE_MEMBERS)
    return found


def _check_not_rebuilt(folder: Path, ood_manifest: dict, shards: Path, eval_manifest: dict, eval_split: str) -> None:
    """The evaluated split's images built again as an OOD set (another --label-field, another class
    list: other shard bytes, so ``_check_not_a_copy`` passes) scored about as in-distribution (an
    AUROC of 50). Samples of the same key and image size in both: most of them, refused."""
    ood = image_signatures(folder, ood_manifest)
    shared = ood & image_signatures(shards, eval_manifest)
    if ood and 2 * len(shared) >= len(ood):
        example = sorted(shared)[0][0]
        raise EvalError(f"--ood-shards {folder}: {len(shared)} of its {len(ood)} images are the in-distribution "
                        f"{eval_split} split's (the same sample key and image file size, e.g. {example}): the same "
                        "images built again; name out-of-distribution data")


def has_boxes(manifest: dict) -> bool:
    """Whether a split's manifest counts any sample with a ground-truth box."""
    return bool(manifest.get("totals", {}).get("with_boxes"))


def _manifest(folder: Path, split: str, *, what: str, split_option: str = "--split") -> dict:
    if not Path(folder).exists():
        raise EvalError(f"{what} {folder}: no such folder")
    try:
        return load_manifest(Path(folder), split)
    except ShardsError as error:
        found = _splits_in(folder)
        if found and split not in found:  # a folder of shards, another split: say which it has
            has = ", ".join(found)
            raise EvalError(f"{what} {folder}: no split {split!r}; it has {has} ({split_option})") from None
        raise EvalError(f"{what} {folder}: {error}") from None


def _splits_in(folder: Path) -> list[str]:
    """The splits a shards folder has a manifest of, sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.json") if p.stem in ("train", "val", "test"))


def _ood_split(folder: Path, split: str, chosen: str | None = None) -> str:
    """The split an OOD shards folder is read at: ``chosen`` (--ood-split), else ``split`` if it
    has it, else its only split (the manifest check names what is missing)."""
    if Path(folder).is_file():
        hint = " (give the folder holding it)" if Path(folder).suffix == ".json" else ""
        raise EvalError(f"--ood-shards {folder}: a file, not a shards folder{hint}")
    if not Path(folder).exists():
        raise EvalError(f"--ood-shards {folder}: no such folder")
    if chosen is not None or (Path(folder) / f"{split}.json").is_file():
        return chosen or split
    found = _splits_in(folder)
    if len(found) == 1:
        return found[0]
    raise EvalError(f"--ood-shards {folder}: no {split}.json" + (
        f" and several splits ({', '.join(found)}): choose one with --ood-split" if found
        else " (build it with python -m shards build)"))


def run_evaluation(request: EvalRequest) -> dict:
    """Run the requested tasks; returns the results (also written to ``request.out`` by the main process)."""
    from accelerate import Accelerator

    check_request(request)
    source = request.source
    model = load_model(source)
    check_input_size(model, source)
    if "localize" in request.tasks:
        try:
            check_cam_head(model, image_size=source.image_size, channels_last=source.channels_last)
        except EvalError as error:
            if request.tasks_chosen:
                raise
            # Asked for every task, not for this one: the others still answer the paper's questions.
            request = dataclasses.replace(request, tasks=tuple(t for t in request.tasks if t != "localize"))
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"note: {error}; localize is left out (asked for by name, it is an error)", file=sys.stderr,
                      flush=True)
    accelerator = Accelerator(mixed_precision=resolve_precision(request.precision))
    alone = lone_process_problem(accelerator.num_processes)
    if alone:  # each rank would evaluate the whole split into the same --out
        raise EvalError(alone)
    ignored = ignored_precision(option="--precision", setting=request.precision, precision=accelerator.mixed_precision,
                                device=accelerator.device.type)
    if ignored and accelerator.is_main_process:
        print(ignored, file=sys.stderr, flush=True)
    make_out(request.out)
    # Two evaluations into one folder both ran to the end, saying they wrote it: the later one's
    # numbers stood beside the other's plots. Held until this one has written its reports.
    with RunFolderLock(request.out, refusal=_out_in_use, error=EvalError) as lock:
        lock.take(accelerator)
        return _evaluate(request, model, accelerator)


def _out_in_use(out: Path, holder: str) -> str:
    return (f"--out {out} is in use by another evaluation ({holder or 'its process unknown'}): wait for it to end, "
            "or give another --out")


def _evaluate(request: EvalRequest, model: torch.nn.Module, accelerator) -> dict:
    """The passes of ``run_evaluation``, with the output folder locked."""
    source = request.source
    model = model.to(accelerator.device)
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    ctx = tasks.TaskContext(model=model, accelerator=accelerator, mean=source.mean, std=source.std, dtype=dtype,
                            channels_last=source.channels_last, num_classes=source.num_classes,
                            augmentation=source.val_augmentation(), seed=request.seed, epsilon=request.epsilon,
                            occlusion_steps=request.occlusion_steps, cam_examples=request.cam_examples)
    from .plots import write_plots
    from .report import write_reports

    results: dict = {"settings": {**_settings(request, accelerator), "finished": False}}
    kept, carried = earlier_to_keep(request.out, results["settings"], request.tasks) \
        if accelerator.is_main_process else ({}, {})
    if kept:  # an earlier evaluation of this model and settings: its other tasks stay, beside this one's
        results.update(kept)
        results["settings"].update(carried, tasks=[t for t in TASKS if t in kept or t in request.tasks],
                                   kept_tasks=list(kept))
    started = time.perf_counter()
    for task in request.tasks:
        begun = time.perf_counter()
        try:
            results[task] = _run_task(ctx, request, task)
        except BaseException as error:
            if isinstance(error, (EvalError, LoaderError)):
                error.during_pass = True  # may have happened on this rank only: the CLI prints it on any rank
            if accelerator.is_main_process and task != request.tasks[0]:
                _plots_of_what_is_done(results, ctx.examples, out=request.out, classes=source.classes)
            raise
        results[task]["seconds"] = time.perf_counter() - begun
        if accelerator.is_main_process:  # what is done is kept, should a later task fail
            if task == request.tasks[0]:  # not before: an evaluation that finishes no task replaces nothing
                clear_previous(request.out, kept=list(kept))
            write_reports(results, out=request.out)
    results["settings"]["seconds"] = time.perf_counter() - started
    results["settings"]["finished"] = True
    if accelerator.is_main_process:
        results["plots"] = _plot_names(write_plots(results, ctx.examples, out=request.out, classes=source.classes),
                                       out=request.out, kept=list(kept))
        write_reports(results, out=request.out)
    accelerator.wait_for_everyone()
    return results


# What must be the same for an earlier evaluation's results to stand beside this one's.
_SAME_EVALUATION = ("model", "weights", "weights_sha256", "checkpoint", "shards", "split", "image_size", "crop_pct",
                    "augmentation", "precision", "seed", "backend")
# The plots each task draws (localize's CAM grid needs the pass's examples: kept, not redrawn).
TASK_PLOTS = {"occlusion": ("occlusion.png",), "in-between": ("in_between.png",),
              "localize": ("localization.png", "cam_grid.png"), "ood": ("ood_scores.png",)}


# What else a task's numbers depend on: in-between pairs images inside each batch of each rank.
_SAME_FOR_TASK = {"in-between": ("batch_size", "world_size")}


def earlier_to_keep(out: Path, settings: dict, tasks: tuple[str, ...]) -> tuple[dict, dict]:
    """The results of an earlier evaluation in ``out`` of the same weights (by sha256) and
    settings, for the tasks this one does not run (``--tasks ood`` into RUN/eval replaced the whole
    evaluation, its classification and localization numbers with it), and the settings that
    describe them (a kept ood's OOD folders). An unfinished one (a Ctrl-C, a failed task) counts
    with the tasks it finished: running the missing ones next deleted them."""
    try:
        earlier = json.loads((Path(out) / "eval.json").read_text())
        before = earlier["settings"]
        if not all(same_setting(key, before.get(key), settings.get(key)) for key in _SAME_EVALUATION):
            return {}, {}
        kept = {task: earlier[task] for task in before["tasks"] if task not in tasks and task in earlier
                and all(before.get(key) == settings.get(key) for key in _SAME_FOR_TASK.get(task, ()))}
        carried = {key: earlier["settings"][key] for key in ("ood_shards", "ood_splits")
                   if "ood" in kept and key in earlier["settings"]}
        return kept, carried
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}  # none there, or not one this version wrote: replaced as a whole


def same_setting(key: str, earlier, now) -> bool:
    """Whether a recorded setting is the one of this evaluation: paths by the folder or file they
    name (``runs/cub`` and ``/home/me/runs/cub`` are the same weights; a relative path recorded by
    an older version is read from here), the rest as recorded."""
    if key in ("weights", "shards") and isinstance(earlier, str) and isinstance(now, str):
        return named_path(earlier) == named_path(now)
    if key == "checkpoint" and isinstance(earlier, dict) and isinstance(now, dict):
        return ({**earlier, "folder": named_path(earlier.get("folder"))}
                == {**now, "folder": named_path(now.get("folder"))})
    return earlier == now


def _plot_names(written: list[Path], *, out: Path, kept: list[str]) -> list[str]:
    """The plots of this evaluation: those just drawn and the kept tasks' that are still there."""
    names = [path.name for path in written]
    return names + [name for task in kept for name in TASK_PLOTS.get(task, ())
                    if name not in names and (Path(out) / name).is_file()]


def _plots_of_what_is_done(results: dict, examples: dict, *, out: Path, classes: list[str] | None) -> None:
    """The finished tasks' plots, and their names in the reports, when a later task fails or is
    interrupted (the reports themselves are written after each task)."""
    from .plots import write_plots
    from .report import write_reports

    try:
        results["plots"] = _plot_names(write_plots(results, examples, out=out, classes=classes), out=out,
                                       kept=results["settings"].get("kept_tasks", []))
        write_reports(results, out=out)
    except Exception:  # noqa: BLE001 - the failure being reported matters more than its plots
        pass


def clear_previous(out: Path, *, kept: list[str] = ()) -> None:
    """Remove what an earlier evaluation wrote into ``out`` (its reports and plots, nothing else),
    once this one has a first result to write: its plots of tasks this one does not run would
    otherwise sit beside the new results. ``kept``: its tasks whose results stay (``earlier_to_keep``),
    with their plots."""
    from .plots import PLOT_FILES
    from .report import REPORT_FILES

    keep = {name for task in kept for name in TASK_PLOTS.get(task, ())}
    old = [Path(out) / name for name in (*REPORT_FILES, *PLOT_FILES) if (Path(out) / name).is_file()
           and name not in keep]
    if kept:
        print(f"keeping the earlier evaluation's {', '.join(kept)} in {out} (the same weights and settings); "
              f"its other results are replaced", flush=True)
    elif old:
        print(f"replacing the earlier evaluation in {out} ({len(old)} file(s))", flush=True)
    for path in old:
        path.unlink()


def _run_task(ctx: tasks.TaskContext, request: EvalRequest, task: str) -> dict:
    if task == "ood":
        return _ood(ctx, request)
    run = {"classify": tasks.classify, "localize": tasks.localize, "occlusion": tasks.occlusion,
           "in-between": tasks.in_between, "fgsm": tasks.fgsm}[task]
    with _pass(ctx, request, request.shards, request.split, task, metadata=task == "localize") as (batches, tick):
        return run(ctx, batches, tick)


def check_input_size(model: torch.nn.Module, source: ModelSource) -> None:
    """Before any pass: the model takes ``source.image_size`` inputs (a ViT is built for one size)."""
    probe = torch.zeros(1, 3, source.image_size, source.image_size)
    try:
        with torch.no_grad():
            model(probe.contiguous(memory_format=torch.channels_last) if source.channels_last else probe)
    except (AssertionError, RuntimeError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise EvalError(f"{source.model_name} does not take {source.image_size} px inputs ({first}); evaluate it at "
                        "its training size (drop --image-size)") from None


def check_cam_head(model: torch.nn.Module, *, image_size: int, channels_last: bool) -> None:
    """Before any pass: the head must be global average pooling + one linear layer, checked on its
    structure and on the logits of a seeded random batch (every rank checks the same numbers)."""
    from .cam import cam_and_logits, cam_classifier, check_head

    cam_classifier(model)
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    if channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    logits, features = cam_and_logits(model, probe)
    check_head(model, features.float(), logits.float())
    if features.dim() == 4 and features.shape[-2:] == (1, 1):
        # One cell: the CAM is one value, every box the whole image (8 px gave zero localization
        # without a word).
        raise EvalError(f"localize: at {image_size} px the model's last feature map is 1x1, so its CAM is a single "
                        "value and every CAM box the whole image; evaluate localize at a larger --image-size")


class _pass:
    """One pass over a split for one task: its loader (built now, released after) and a progress bar."""

    def __init__(self, ctx: tasks.TaskContext, request: EvalRequest, shards: Path, split: str, task: str, *,
                 metadata: bool = False, check: bool = True):
        accelerator = ctx.accelerator
        try:
            num_samples = load_manifest(Path(shards), split)["totals"]["samples"]
            batch = min(request.batch_size, min(part_sizes(num_samples=num_samples,
                                                           world_size=accelerator.num_processes)))
            options = LoaderOptions(batch_size=batch, backend=request.backend, num_threads=request.num_threads)
            self.loader, steps = create_loader(shards, split, augmentation=ctx.augmentation, options=options,
                                               rank=accelerator.process_index, world_size=accelerator.num_processes,
                                               device=accelerator.device, seed=request.seed, training=False,
                                               num_classes=ctx.num_classes if check else None, metadata=metadata)
        except (LoaderError, ShardsError) as error:
            raise EvalError(f"{shards} ({split}): {error}") from None
        self.bar = tqdm(total=steps, desc=task, dynamic_ncols=True,
                        disable=not (request.progress and accelerator.is_local_main_process))

    def __enter__(self):
        return iter(self.loader), lambda: self.bar.update(1)

    def __exit__(self, *exc):
        self.bar.close()
        self.loader = None
        return False


def _ood(ctx: tasks.TaskContext, request: EvalRequest) -> dict:
    """In-distribution scores from the split, then each OOD set's, and the detector's metrics for each."""
    with _pass(ctx, request, request.shards, request.split, "ood: in-distribution") as (batches, tick):
        inside = tasks.softmax_scores(ctx, batches, tick)
    sets: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}  # how an OOD set's images were brought to the model's input
    for kind in NOISE_SETS:
        sets[kind] = _noise_scores(ctx, request, kind, count=len(inside))
    for folder, name in zip(request.ood_shards, ood_set_names(request.ood_shards)):
        name = _unique(name, sets)  # a folder named like a noise set
        split = _ood_split(folder, request.split, request.ood_split)
        fit = cifar_fit(request.source, folder, load_manifest(Path(folder), split))
        if fit is not None:
            notes[name] = fit
            if ctx.accelerator.is_main_process:
                print(f"note: ood: {name}: {fit}", file=sys.stderr, flush=True)
        with _pass(ctx, request, folder, split, f"ood: {name}", check=False) as (batches, tick):
            sets[name] = tasks.softmax_scores(ctx, batches, tick)
    return {"in_distribution_samples": len(inside), "score": "maximum softmax probability",
            "sets": {name: {"samples": len(scores), **ood_metrics(inside, scores)} for name, scores in sets.items()},
            "notes": notes, "score_histograms": _histograms(inside, sets)}


def _noise_scores(ctx: tasks.TaskContext, request: EvalRequest, kind: str, *, count: int) -> np.ndarray:
    """Scores of ``count`` noise images; image i is a function of (seed, kind, i), rank r takes i = r, r + W, ..."""
    accelerator, size = ctx.accelerator, ctx.augmentation.image_size
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, count, world))
    largest_share = -(-count // world)
    batch = min(request.batch_size, largest_share)  # the same on every rank; no batch larger than the set
    steps = -(-largest_share // batch)  # the same on every rank

    def batches():  # made as they are used: the set is as large as the split
        for step in range(steps):
            positions = mine[step * batch:(step + 1) * batch]
            images = noise_images(kind, positions + [0] * (batch - len(positions)), size=size, seed=request.seed)
            labels = torch.tensor([0] * len(positions) + [-1] * (batch - len(positions)))
            yield _to_device(images, accelerator.device), _to_device(labels, accelerator.device)

    bar = tqdm(total=steps, desc=f"ood: {kind} noise", dynamic_ncols=True,
               disable=not (request.progress and accelerator.is_local_main_process))
    try:
        return tasks.softmax_scores(ctx, batches(), lambda: bar.update(1))
    finally:
        bar.close()


def ood_set_names(folders) -> list[str]:
    """Each OOD folder's name in the results: its last path part, or as many of its last parts as
    tell it from the others (``places/val`` and ``lsun/val``, not ``val`` and ``val-2``)."""
    parts = [Path(folder).resolve().parts for folder in folders]

    def name(path_parts, depth):
        return Path(*path_parts[-depth:]).as_posix()  # "/data/val" when the whole path is needed, not "//data/val"

    names = []
    for mine in parts:
        depth = 1
        while depth < len(mine) and any(name(other, depth) == name(mine, depth) for other in parts if other != mine):
            depth += 1
        names.append(name(mine, depth))
    return names


def _unique(name: str, taken: dict) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def _histograms(inside: np.ndarray, sets: dict[str, np.ndarray], bins: int = 50) -> dict:
    # Over the scores' own range, not [0, 1]: a weak 100-class model's scores (all near 0.01) fell
    # into the first of 50 bins, and the figure showed one point per set.
    scores = np.concatenate([inside, *sets.values()]) if len(inside) else np.zeros(1)
    low, high = float(scores.min()), float(scores.max())
    edges = np.linspace(low, high if high > low else low + 1e-6, bins + 1)
    return {"edges": edges.tolist(), "in_distribution": np.histogram(inside, edges)[0].tolist(),
            "sets": {name: np.histogram(scores, edges)[0].tolist() for name, scores in sets.items()}}


def _sha256(path: Path) -> str:
    """The weights' digest: an earlier evaluation's results are kept only for the same bytes (a run
    resumed and exported again keeps its path)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors_sha256(path: Path) -> str | None:
    """``tensors_sha256``, or None where the file cannot tell (changed since it loaded): compare
    then goes by the file's sha256 alone."""
    try:
        return tensors_sha256(path)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _settings(request: EvalRequest, accelerator) -> dict:
    source = request.source
    # Paths as absolute ones: compare and a later evaluation into the same folder read them from elsewhere.
    return {"model": source.model_name, "weights": named_path(source.weights),
            "weights_sha256": _sha256(source.weights), "tensors_sha256": _tensors_sha256(source.weights),
            "run_dir": named_path(source.run_dir),
            "checkpoint": source.checkpoint, "shards": named_path(request.shards),
            "split": request.split, "tasks": list(request.tasks),
            "ood_shards": [named_path(p) for p in request.ood_shards],
            "ood_splits": [_ood_split(p, request.split, request.ood_split) for p in request.ood_shards],
            "batch_size": request.batch_size, "backend": request.backend, "seed": request.seed,
            "image_size": source.image_size, "crop_pct": source.crop_pct, "augmentation": source.augmentation,
            "world_size": accelerator.num_processes, "device": accelerator.device.type,  # "cuda", as training says it
            "precision": accelerator.mixed_precision}


def read_results(path: Path) -> dict:
    """An ``eval.json`` (or a folder holding one, a run folder with ``eval/eval.json``, or one of
    its checkpoints, ``RUN/checkpoints/epoch-NNNN``, evaluated into its default ``RUN/eval-epoch-NNNN``)."""
    path = Path(path)
    folder = path.absolute()
    candidates = [path, path / "eval.json", path / "eval" / "eval.json"]
    if (path / "config.yaml").is_file():  # a run folder: its evaluation, not a stray eval.json beside its config
        candidates = [path / "eval" / "eval.json", path / "eval.json"]
    if folder.parent.name == "checkpoints":
        candidates.append(folder.parent.parent / f"eval-{folder.name}" / "eval.json")
    for candidate in candidates:
        if candidate.is_file():
            try:
                results = json.loads(candidate.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise EvalError(f"{candidate}: not an eval.json ({error})") from None
            if not isinstance(results, dict) or "settings" not in results:
                raise EvalError(f"{candidate}: not an eval.json written by python -m pipeline.evaluate")
            if unfinished(results):
                raise EvalError(f"{candidate}: that evaluation did not finish ({unfinished(results)}); run it again")
            return results
    if not path.exists():  # a misspelt path: "evaluate it first" sent users to evaluate nothing
        raise EvalError(f"{path}: no such file or folder")
    raise EvalError(f"{path}: no eval.json (run python -m pipeline.evaluate on it first)")


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device`` without the host waiting for the GPU's queued work, as a copy from
    pageable memory would (so the next noise batch is drawn while the GPU runs this one); torch's
    caching host allocator hands the pinned buffers out again once their copies have run."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
