"""``python -m pipeline.evaluate``: evaluate a run or exported weights on the paper's tasks, or
``compare`` several evaluations. Bad input is one ``error:`` line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

from shards.arguments import CommandParser, nonblank, path

from ..errors import EvalError, TrainError, loader_errors
from ..launcher import end_with_launcher
from .catalog import DEFAULT_EPSILON, option_value_problem

_DESCRIPTION = """Evaluate a trained model on the CutMix paper's claims. MODEL is a run folder (its config.yaml
and model.safetensors), one of its checkpoints (RUN/checkpoints/epoch-NNNN: the best epoch's is kept), or an
exported model.safetensors (it records its classes and preprocessing).
Writes OUT/eval.json (every number), OUT/eval.md (tables) and PNG plots. Several processes:
accelerate launch -m pipeline.evaluate ... (each sample counted once, counts summed exactly)."""

_EPILOG = """tasks (--tasks, comma-separated; default: all that the shards allow):
{tasks}

metrics:
  top-1/top-5 error    % of samples whose true class is not the first / not among the five highest logits
  Top-1 Loc            % of samples classified correctly AND whose CAM box (largest contour) has IoU >= 0.5 with a
                       true box, at the CAM threshold that maximizes GT-known Loc
  GT-known Loc         % of samples whose CAM box of the true class (largest contour) has IoU >= 0.5 with a true
                       box, at the best CAM threshold (wsolevaluation's MaxBoxAcc)
  MaxBoxAccV2          wsolevaluation's: mean over IoU 0.3/0.5/0.7 of the best box accuracy over CAM thresholds
                       0, 0.01, ..., 0.99, every contour's box counted
  TNR at TPR 95%       % of OOD samples rejected at the score threshold keeping 95% of in-distribution ones
  AUROC                area under the ROC curve, in-distribution as positives (%)
  detection accuracy   max over thresholds of (TPR + TNR) / 2 (%)

compare:
  python -m pipeline.evaluate compare EVAL_A EVAL_B ... [--labels a,b] [--out DIR]
  one table in the paper's layout and shared plots from each evaluation's eval.json

examples:
  python -m pipeline.evaluate runs/demo --split test --image-size 64   # the demo run, every task
  python -m pipeline.evaluate runs/r50_cutmix --shards /data/inet --tasks classify,localize
  python -m pipeline.evaluate runs/r50_cutmix/checkpoints/epoch-0187   # the best epoch, into RUN/eval-epoch-0187
  python -m pipeline.evaluate model.safetensors --shards /data/inet --tasks ood --ood-shards /data/places
"""


MAX_IMAGE_SIZE = 2048  # larger inputs exhaust memory before they tell anything (--image-size 100000 did)


def make_parser() -> argparse.ArgumentParser:
    """The evaluation's arguments."""
    from .catalog import PRECISIONS, TASKS, pixel_fraction

    tasks = "\n".join(textwrap.fill(text, width=100, initial_indent=f"  {name:<11}  ", subsequent_indent=" " * 15)
                      for name, text in TASKS.items())
    parser = CommandParser(prog="python -m pipeline.evaluate", description=_DESCRIPTION,
                                     epilog=_EPILOG.format(tasks=tasks),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # nargs="?": checked in parse_args, which can say that --ood-shards took it (it takes every
    # path after it, so `--ood-shards A B RUN` leaves no model: argparse would only say "required").
    parser.add_argument("model", type=path, nargs="?", metavar="RUN_DIR|MODEL.safetensors",
                        help="a run folder (config.yaml + model.safetensors), one of its checkpoints "
                        "(RUN/checkpoints/epoch-NNNN) or exported weights")
    parser.add_argument("--shards", type=path, help="shards folder (default: the run's data.shards)")
    parser.add_argument("--split", type=nonblank,
                        help="the split to evaluate (default: the one the run evaluated while training, "
                        "its data.eval_split; for exported weights val, or test where the shards have no val: CIFAR, "
                        "CUB)")
    parser.add_argument("--tasks", help=f"comma-separated, from: {', '.join(TASKS)} (default: all; localize only "
                        "where the split has boxes and the model's head has a CAM)")
    parser.add_argument("--image-size", type=int, help="evaluate at this input size instead of the training one "
                        "(the val resize follows the run's crop_pct; for fully convolutional models, e.g. the demo's "
                        "localization canvases at 64 px)")
    parser.add_argument("--ood-shards", type=path, nargs="+", default=[], metavar="DIR",
                        help="out-of-distribution shards folders (read at --ood-split)")
    parser.add_argument("--ood-split", type=nonblank, metavar="SPLIT",
                        help="the split of the --ood-shards folders to read "
                        "(default: --split where a folder has it, else its only split)")
    parser.add_argument("--batch-size", type=int, default=64, help="per process (default 64)")
    parser.add_argument("--backend", choices=("dali", "torch"), default="dali", help="loader (default dali)")
    parser.add_argument("--num-threads", type=int, default=4, help="DALI threads / torch workers (default 4)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the model's arithmetic: bf16 autocast, or no (float32); auto (default): bf16 on a "
                        "GPU, float32 on a CPU, as training's run.mixed_precision")
    parser.add_argument("--epsilon", type=pixel_fraction, help="FGSM step in pixel units, a number or a fraction "
                        "(default 8/255; 0 gives the clean error)")
    parser.add_argument("--occlusion-steps", type=int, help="square sides from 0 to the image size (default 9, "
                        "fewer for images under 8 px)")
    parser.add_argument("--seed", type=int, default=0, help="in-between pairs and boxes, noise images (default 0)")
    parser.add_argument("--out", type=path, help="output folder (default RUN_DIR/eval; RUN_DIR/eval-epoch-NNNN for "
                        "a checkpoint; eval-<name> beside exported weights)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def make_compare_parser() -> argparse.ArgumentParser:
    """The arguments of ``compare``."""
    parser = CommandParser(prog="python -m pipeline.evaluate compare",
                                     description="Several evaluations side by side: compare.md and plots.")
    parser.add_argument("evaluations", type=path, nargs="+", metavar="EVAL",
                        help="an eval.json, the folder holding it, a run folder with eval/eval.json, or a "
                        "checkpoint RUN/checkpoints/epoch-NNNN evaluated into RUN/eval-epoch-NNNN")
    parser.add_argument("--labels", type=nonblank,
                        help="comma-separated names (default: the run's name for a run's evaluation, "
                        "RUN/epoch-NNNN for a checkpoint's, else the folder's name)")
    parser.add_argument("--out", type=path, default=Path("eval-compare"), help="default eval-compare")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments; a missing model is argparse's one-line refusal, saying when
    --ood-shards took it (it takes every path after it)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.model is None:
        taken = f" (--ood-shards took every path after it: {' '.join(map(str, args.ood_shards))}; name the " \
            "run before --ood-shards)" if args.ood_shards else ""
        parser.error(f"the following arguments are required: RUN_DIR|MODEL.safetensors{taken}")
    if not args.model.exists():  # before torch is imported (seconds); resolve_source checks it again
        raise EvalError(f"{args.model}: no such run folder or weights file{_checkpoints_there(args.model)}")
    epsilon = DEFAULT_EPSILON if args.epsilon is None else args.epsilon
    problem = option_value_problem(tasks=chosen_tasks(args.tasks), precision=args.precision,
                                   batch_size=args.batch_size, epsilon=epsilon, seed=args.seed,
                                   num_threads=args.num_threads)
    if problem is None and args.image_size is not None and not 1 <= args.image_size <= MAX_IMAGE_SIZE:
        problem = f"--image-size must be in [1, {MAX_IMAGE_SIZE}], got {args.image_size}"
    if problem is None and args.occlusion_steps is not None and args.occlusion_steps < 2:
        problem = f"--occlusion-steps must be >= 2 (sides 0 .. the image size), got {args.occlusion_steps}"
    if problem is not None:  # also before torch: the model's image size bounds --occlusion-steps later
        raise EvalError(problem)
    return args


def chosen_tasks(text: str | None) -> tuple[str, ...] | None:
    """--tasks as a tuple in the order given, repeats dropped; None when not given (the default list)."""
    if text is None:
        return None
    return tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def _checkpoints_there(missing: Path) -> str:
    """``; the run's complete checkpoints: ...`` for a checkpoint name that is not there (pruned, or
    misspelt) in a run's checkpoints folder."""
    from ..checkpoint import valid_checkpoints

    folder = missing.parent
    if folder.name != "checkpoints" or not (folder.parent / "config.yaml").is_file():
        return ""
    found = valid_checkpoints(folder.parent)
    return f"; the run's complete checkpoints: {', '.join(p.name for p in found) or 'none'}"


def build_request(args: argparse.Namespace):
    """The checked EvalRequest of parsed arguments (EvalError naming the argument)."""
    from .catalog import TASKS
    from .runner import EvalRequest
    from .source import resolve_source

    source = resolve_source(args.model)
    if args.image_size is not None:  # its range: parse_args
        if source.augmentation == "cifar" and args.image_size != source.image_size:
            # CIFAR's validation transform takes images as they are: another size would pad them
            # with black or crop them, not resize them, and the numbers would say nothing.
            raise EvalError(f"--image-size: this model was trained with CIFAR's transform (images as they are, "
                            f"no resize); evaluate it at its training size, {source.image_size}")
        source = dataclasses.replace(source, image_size=args.image_size)
    shards = args.shards or source.shards
    if shards is None:
        raise EvalError("--shards is needed with a .safetensors file (a run folder brings its own)")
    if args.shards is None and not Path(shards).exists():  # the run's, which the user never typed here
        relative = "" if Path(shards).is_absolute() else \
            f" relative to {Path.cwd()} (a relative path is read from the folder training ran in: run from there)"
        raise EvalError(f"data.shards={shards} of {source.run_dir / 'config.yaml'}: no such folder{relative}; or "
                        "give --shards")
    split = args.split or source.eval_split or _default_split(Path(shards))
    if args.tasks is not None:  # an empty list is refused by the request check
        tasks = chosen_tasks(args.tasks)
    else:
        boxes = _has_boxes(shards, split)
        tasks = tuple(t for t in TASKS if t != "localize" or boxes is not False)
        if boxes is False and int(os.environ.get("RANK", "0")) == 0:  # said, as for a model without a CAM
            print(f"note: the {split} split of {shards} has no boxes; localize is left out (asked for by name, it "
                  "is an error)", file=sys.stderr, flush=True)
    for option, value, task in (("--epsilon", args.epsilon, "fgsm"),
                                ("--occlusion-steps", args.occlusion_steps, "occlusion"),
                                ("--ood-shards", args.ood_shards or None, "ood")):
        if value is not None and task not in tasks:  # as --ood-split without --ood-shards: a setting for nothing
            raise EvalError(f"{option}: only the {task} task uses it, and the tasks run are {', '.join(tasks)}")
    others = ",".join(task for task in tasks if task != "in-between")  # what runs without in-between
    if "in-between" in tasks and args.batch_size < 2:
        # Its pairs are two images of one batch: found after the whole pass (minutes), the tasks before it
        # run and the report marked unfinished (walkthrough).
        without = f", or --tasks {others} without it" if others else ""
        raise EvalError(f"--batch-size {args.batch_size}: the in-between task pairs two images of a batch: give "
                        f"--batch-size 2 or more{without}")
    if "in-between" in tasks:
        _check_two_classes(source, shards=Path(shards), split=split, others=others)
    out = args.out or _default_out(source)
    _check_out(out, source=source, shards=Path(shards), ood_shards=args.ood_shards)
    return EvalRequest(source=source, shards=Path(shards), split=split, tasks=tasks, out=out,
                       ood_shards=tuple(args.ood_shards), ood_split=args.ood_split, batch_size=args.batch_size,
                       backend=args.backend, precision=args.precision,
                       num_threads=args.num_threads, seed=args.seed,
                       epsilon=DEFAULT_EPSILON if args.epsilon is None else args.epsilon,
                       occlusion_steps=min(9, source.image_size + 1) if args.occlusion_steps is None
                       else args.occlusion_steps, progress=not args.quiet, tasks_chosen=args.tasks is not None)


def _default_out(source) -> Path:
    """RUN/eval for a run; RUN/eval-epoch-NNNN for one of its checkpoints (the run's own evaluation
    stays); eval-NAME beside weights given alone."""
    if source.checkpoint is not None:
        return source.run_dir / f"eval-{Path(source.checkpoint['folder']).name}"
    if source.run_dir is not None:
        return source.run_dir / "eval"
    return source.weights.parent / f"eval-{source.weights.stem}"


def _default_split(shards: Path) -> str:
    """val where the shards have it; else test, the only evaluation split CIFAR and CUB have (the
    request check names the splits there are when neither is)."""
    return "test" if not (shards / "val.json").is_file() and (shards / "test.json").is_file() else "val"


def _check_out(out: Path, *, source, shards: Path, ood_shards: list[Path]) -> None:
    """--out must be a folder of its own: eval.json, eval.md and the plots written into the run
    folder, a checkpoint or a shards folder would mix with what is there (and a run folder's
    eval.json would stand for its evaluation in compare)."""
    target = out.resolve()
    data = [("the shards folder", shards), *(("an --ood-shards folder", folder) for folder in ood_shards)]
    owners = [("the run folder", source.run_dir), ("the checkpoint", source.checkpoint and source.checkpoint["folder"]),
              *data]
    for what, folder in owners:
        if folder is not None and target == Path(folder).resolve():
            default = f" (default {_default_out(source)})" if what != "the shards folder" else ""
            raise EvalError(f"--out {out}: {what} itself; the evaluation needs a folder of its own{default}")
    for what, folder in data:  # inside: among the tars and manifests
        if Path(folder).resolve() in target.parents:
            raise EvalError(f"--out {out}: inside {what} {folder} (the reports would lie among its shards); the "
                            f"evaluation needs a folder of its own (default {_default_out(source)})")
    checkpoints = source.run_dir and (source.run_dir / "checkpoints").resolve()
    if checkpoints is not None and (target == checkpoints or checkpoints in target.parents):
        raise EvalError(f"--out {out}: inside the run's checkpoints folder, which training prunes; "
                        f"the evaluation needs a folder of its own (default {_default_out(source)})")
    _check_not_elsewhere(out, source)


def _check_not_elsewhere(out: Path, source) -> None:
    """--out in another run's folder, or among another split's shards: `evaluate runs/cutmix --out
    runs/base/eval` replaced base's evaluation with cutmix's, which compare then labelled "base";
    a shards folder got eval.json and eval.md beside its tars."""
    from ..checkpoint import is_run_folder

    target = out.resolve()
    own = {Path(folder).resolve() for folder in (source.run_dir, source.weights.parent) if folder is not None}
    # The nearest run folder is the one --out belongs to: RUN/replaced-1 (a run set aside inside
    # its successor's folder) evaluates into RUN/replaced-1/eval.
    owner = next((place for place in (target, *target.parents) if is_run_folder(place)), None)
    if owner is not None and owner not in own:
        where = "" if owner == target else "inside "
        raise EvalError(f"--out {out}: {where}another run's folder, {owner} (its evaluation would then be this "
                        f"model's, and compare would label it with that run's name); the evaluation needs a "
                        f"folder of its own (default {_default_out(source)})")
    shards = _enclosing_shards_folder(target)
    if shards is not None:
        where = "" if shards == target else "inside "
        raise EvalError(f"--out {out}: {where}a shards folder, {shards} (the reports would lie among its shards); "
                        f"the evaluation needs a folder of its own (default {_default_out(source)})")


def _enclosing_shards_folder(target: Path) -> Path | None:
    """``target`` or the nearest folder above it that is a shards folder (``_is_shards_folder``)."""
    from shards.build import SPLITS

    return next((place for place in (target, *target.parents) if _is_shards_folder(place, SPLITS)), None)


def _check_compare_out(out: Path) -> None:
    """compare's --out needs a folder of its own too (see _check_out): compare.md and its plots
    were written into a run folder, among its checkpoints, or among a split's shards."""
    from shards.build import SPLITS

    from ..checkpoint import is_complete_checkpoint, is_run_folder

    target = out.resolve()
    own = "the comparison needs a folder of its own (default eval-compare)"
    if is_run_folder(target):
        raise EvalError(f"--out {out}: a run folder; {own}")
    if (target / "eval.json").is_file():  # RUN/eval: compare.md and its plots beside that run's reports
        raise EvalError(f"--out {out}: an evaluation's folder (it holds eval.json; the comparison would lie among "
                        f"its reports); {own}")
    for place in (target, *target.parents):
        where = "" if place == target else f"inside {place}, "
        if is_complete_checkpoint(place) or (place.name == "checkpoints" and is_run_folder(place.parent)):
            raise EvalError(f"--out {out}: {where}a run's checkpoint{'s' if place.name == 'checkpoints' else ''}, "
                            f"which training prunes; {own}")
        if _is_shards_folder(place, SPLITS):
            raise EvalError(f"--out {out}: {where}a shards folder (the reports would lie among its shards); {own}")


def _is_shards_folder(folder: Path, splits) -> bool:
    """Whether ``folder`` holds a split's shard manifest or an unfinished build of one (a train.json
    of other tools, or a .build folder of Swift's, is no sign)."""
    from shards.plan import PLAN_FORMAT

    for split in splits:
        if (folder / ".build" / split / "plan.json").is_file():
            return True
        try:
            if json.loads((folder / f"{split}.json").read_text()).get("format") == PLAN_FORMAT:
                return True
        except (OSError, ValueError, AttributeError):  # none, unreadable, not JSON, not an object
            continue
    return False


def _check_two_classes(source, *, shards: Path, split: str, others: str) -> None:
    """In-between pairs images of two classes: a model of one class crashed in it (its top-2 has
    one column), and a split whose images are all of one class failed only after the tasks before it
    had run (walkthrough). Both are known before any pass: the model's class count, the manifest's."""
    from shards.errors import ShardsError
    from shards.manifest import load_manifest

    try:
        counts = load_manifest(Path(shards), split)["class_counts"]
    except (ShardsError, KeyError):
        counts = None  # no such split: the request check reports the missing manifest
    without = f": give --tasks {others} without it" if others else ""
    if source.num_classes < 2:
        raise EvalError(f"in-between: {source.weights} is a model of {source.num_classes} class; the task mixes images "
                        f"of two classes{without}")
    if counts is not None and sum(1 for count in counts if count) < 2:
        raise EvalError(f"in-between: the {split} split of {shards} has images of one class; the task mixes images of "
                        f"two classes{without}")


def _has_boxes(shards: Path, split: str) -> bool | None:
    from shards.errors import ShardsError
    from shards.manifest import load_manifest

    from .runner import has_boxes

    try:
        return has_boxes(load_manifest(Path(shards), split))
    except ShardsError:
        return None  # no such split or folder: the request check reports the missing manifest


def compare(argv: list[str]) -> int:
    """``compare``: compare.md and the shared plots."""
    from .plots import write_compare_plots
    from .report import compare_markdown
    from .runner import read_results

    args = make_compare_parser().parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [_label(p) for p in args.evaluations]
    if "" in labels:  # `--labels a,` named the second row '' (the empty --labels '' is argparse's to refuse)
        raise EvalError(f"--labels {args.labels!r}: label {labels.index('') + 1} is empty; name every evaluation")
    if len(labels) != len(args.evaluations):
        raise EvalError(f"--labels names {len(labels)} runs but {len(args.evaluations)} evaluations were given")
    if len(set(labels)) != len(labels):
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        raise EvalError(f"two evaluations would both be labelled {repeated[0]!r}: name them with --labels a,b,...")
    runs = {label: read_results(path) for label, path in zip(labels, args.evaluations)}
    _check_compare_out(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise EvalError(f"--out {args.out}: exists and is not a folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a parent folder should be, no permission
        raise EvalError(f"--out {args.out}: cannot make the folder ({error.strerror})") from None
    foreign = [_foreign(path, results) for path, results in zip(args.evaluations, runs.values())]
    try:
        table = compare_markdown(runs, warnings=[w for w in foreign if w])
    except KeyError as error:
        raise EvalError(f"an eval.json lacks {error} (written by another version?): re-run the evaluation") from None
    earlier = (args.out / "compare.md").is_file()  # its plots are ours to replace; a user's own files are not
    (args.out / "compare.md").write_text(table)
    plots = write_compare_plots(runs, out=args.out, remove_others=earlier)
    print((args.out / "compare.md").read_text())
    print("\n".join(str(p) for p in [args.out / "compare.md", *plots]))
    return 0


def _what_is_kept(request) -> str:
    """``: OUT/eval.json holds ...`` when this evaluation wrote one (an earlier, finished one in
    the folder is still whole: this one had not replaced it yet)."""
    from .report import unfinished

    report = None if request is None else request.out / "eval.json"
    try:
        results = json.loads(report.read_text()) if report is not None else None
    except (OSError, ValueError):
        return ""
    if not isinstance(results, dict) or "settings" not in results or not unfinished(results):
        return ""
    return f": {report} holds the tasks finished so far, marked unfinished"


def _foreign(path: Path, results: dict) -> str | None:
    """A warning where the run folder ``path`` names holds another run's evaluation (written there
    with --out before evaluate refused that, or copied): its row would carry the wrong run's name."""
    path = Path(path).absolute()
    folder = path.parent if path.name == "eval.json" else path
    if (folder / "config.yaml").is_file():  # RUN, read from RUN/eval
        run = folder
    elif folder.name == "eval" or folder.name.startswith("eval-epoch-"):  # RUN/eval, RUN/eval-epoch-NNNN
        run = folder.parent
    elif folder.parent.name == "checkpoints":  # RUN/checkpoints/epoch-NNNN, read from RUN/eval-epoch-NNNN
        run = folder.parent.parent
    else:
        return None
    recorded = results.get("settings", {}).get("run_dir")
    if not (run / "config.yaml").is_file() or not recorded or Path(recorded).resolve() == run.resolve():
        return None
    if Path(recorded).name == run.name and not (Path(recorded) / "config.yaml").is_file():
        return None  # moved since (no run where it was recorded)
    return (f"{path} holds an evaluation of the run {recorded} (its settings.run_dir), not of {run}: its row "
            f"is labelled {_label(path)!r} by the folder it lies in")


def _label(path: Path) -> str:
    """A default label: the run's name for its evaluation (RUN, RUN/eval, RUN/eval/eval.json),
    RUN/epoch-NNNN for a checkpoint's (its folder, or RUN/eval-epoch-NNNN: two runs' epoch-0187
    are told apart), the folder's name otherwise."""
    path = Path(path).absolute()
    if path.name == "eval.json":
        path = path.parent
    if path.name == "eval":
        return path.parent.name
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    if path.name.startswith("eval-epoch-") and (path.parent / "config.yaml").is_file():
        return f"{path.parent.name}/{path.name.removeprefix('eval-')}"
    return path.name


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm's stop, ``kill``, ``timeout``): ends the evaluation as Ctrl-C does, with the
    finished tasks' reports and plots, where the default action ended it with neither plots nor a word."""


def _terminate(signum, frame) -> None:
    # Once: under Slurm every rank gets SIGTERM from Slurm and again from accelerate launch, and a
    # second one would cut short the plots the first one writes (main restores the handler).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a user mistake prints one ``error:`` line and returns 2. The arguments are
    checked before the evaluation code (torch, DALI) is imported."""
    end_with_launcher()  # first: an orphaned rank would run on for hours
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    request = None
    try:
        if argv[:1] == ["compare"]:
            return compare(argv[1:])
        if argv and not Path(argv[0]).exists() and difflib.get_close_matches(argv[0], ["compare"], cutoff=0.7):
            raise EvalError(f"{argv[0]}: no such run folder or weights file (did you mean compare?)")
        args = parse_args(argv)
        from .runner import run_evaluation

        request = build_request(args)
        results = run_evaluation(request)
    except (EvalError, TrainError, *loader_errors()) as error:
        rank = int(os.environ.get("RANK", "0"))
        # Checks before the passes are the same on every rank (rank 0 says it); an error during a
        # pass may be one rank's alone (a damaged shard in its part), so that rank says it.
        if rank == 0 or getattr(error, "during_pass", False):
            print(f"error: {'' if rank == 0 else f'(rank {rank}) '}{error}", file=sys.stderr, flush=True)
        else:
            from ..cli import wait_for_rank_zero_to_say_it

            wait_for_rank_zero_to_say_it()
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}{_what_is_kept(request)}",
                  file=sys.stderr, flush=True)
        return 143 if terminated else 130
    if int(os.environ.get("RANK", "0")) == 0:
        print((request.out / "eval.md").read_text())
        print(f"wrote {request.out / 'eval.json'}, {request.out / 'eval.md'} and {len(results.get('plots', []))} "
              f"plot(s) in {results['settings']['seconds']:.0f} s")
    return 0
