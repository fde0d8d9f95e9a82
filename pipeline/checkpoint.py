"""Crash-safe checkpoints around Accelerate's ``save_state``.

Every rank writes into ``RUN/checkpoints/tmp-<name>``; after a barrier the main process fsyncs
every file, writes ``state.json`` (epoch, step, model name, class count, best metrics) and then
the ``COMPLETE`` marker, and atomically renames the folder to ``<name>``. A kill at any point
leaves either a ``tmp-`` folder (ignored and removed later) or a complete checkpoint: nothing that
looks valid but is not. ``state.json`` also records the size of every file the save wrote: a
checkpoint damaged later (a file truncated or deleted by a full disk, a copy cut short, a user) is
skipped by ``run.resume=auto`` and refused when named, instead of failing deep inside the load.
Loading uses Accelerate's ``load_state``, which reads the optimizer and RNG files with
``weights_only=True`` and the model from safetensors; our own state is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from shards.durable import fsync_directory, fsync_tree, give_umask_mode, write_text_atomic

from .errors import TrainError
from .logs import METRICS_FILE
from .resume_config import CONFIG_FILE

COMPLETE = "COMPLETE"
STATE = "state.json"
LOADER_STATE = "loader-rank{rank}.json"  # each rank's train loader position (DALI's own checkpoint inside)


@dataclass
class TrainState:
    epoch: int = 0  # epochs fully done
    step_in_epoch: int = 0  # updates done in epoch `epoch` (non-zero only for a save on a signal)
    global_step: int = 0  # updates done in the whole run
    model_name: str = ""  # timm name: a resume with another model is refused
    num_classes: int = 0  # classifier width: a resume with other data is refused
    best: dict = field(default_factory=dict)  # best top-1 error so far and its epoch
    shakedrop: bool = False  # the model's ShakeDrop buffers are part of its weights: a resume must match
    partial_loss: list = field(default_factory=list)  # mid-epoch save: each rank's loss sum so far
    files: dict = field(default_factory=dict)  # every file the save wrote (relative path) -> its size in bytes
    classes: list = field(default_factory=list)  # the class names in label order: a resume on other data is refused
    settings: dict = field(default_factory=dict)  # the training settings (pipeline/resume_config.py) it trained with
    world_size: int = 0  # processes it trained with (0: a checkpoint of an older version, not compared)


def checkpoint_name(state: TrainState) -> str:
    """``epoch-0003`` after a whole epoch, ``epoch-0003-step-000017`` for a save mid-epoch."""
    name = f"epoch-{state.epoch:04d}"
    return name if state.step_in_epoch == 0 else f"{name}-step-{state.step_in_epoch:06d}"


def save_checkpoint(accelerator, run_dir: Path, state: TrainState, *, keep: int,
                    loader_state: dict | None = None) -> Path:
    """Save model, optimizer, scheduler, RNG (Accelerate), ``state`` and each rank's
    ``loader_state`` (the train loader's ``state_dict()``); called by every rank."""
    root = Path(run_dir) / "checkpoints"
    name = checkpoint_name(state)
    tmp, final = root / f"tmp-{name}", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if loader_state is not None:
        (tmp / LOADER_STATE.format(rank=accelerator.process_index)).write_text(json.dumps(loader_state))
    accelerator.wait_for_everyone()  # every rank's RNG and loader files are in tmp
    if accelerator.is_main_process:
        for weights in tmp.rglob("*.safetensors"):  # safetensors writes them 0600: unreadable to a team
            give_umask_mode(weights)
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / STATE).write_text(json.dumps(asdict(replace(state, files=files)), indent=1))
        fsync_tree(tmp)
        write_text_atomic(tmp / COMPLETE, "ok\n")  # last: its presence means every file above is on disk
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_directory(root)
        prune_checkpoints(root, keep=keep)
    accelerator.wait_for_everyone()
    return final


def valid_checkpoints(run_dir: Path) -> list[Path]:
    """Complete, undamaged checkpoints in ``RUN/checkpoints``, oldest first (by global step)."""
    return survey_checkpoints(run_dir)[0]


def damaged_checkpoints(run_dir: Path) -> list[tuple[Path, str]]:
    """Checkpoints in ``RUN/checkpoints`` whose save finished but whose files no longer match it,
    each with what is wrong (``checkpoint_damage``), by name (zero-padded: oldest first)."""
    return survey_checkpoints(run_dir)[1]


def damaged_after(run_dir: Path, checkpoint: Path) -> list[tuple[Path, str]]:
    """``damaged_checkpoints`` newer than ``checkpoint``: those ``run.resume=auto`` passed over."""
    return [(folder, problem) for folder, problem in damaged_checkpoints(run_dir) if folder.name > checkpoint.name]


def survey_checkpoints(run_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``valid_checkpoints`` and ``damaged_checkpoints`` from one look at each folder (the RNG
    and loader files of each are loaded once)."""
    valid, damaged = [], []
    for folder in _marked_checkpoints(run_dir):
        problem = checkpoint_damage(folder)
        if problem is None:
            valid.append((read_state(folder).global_step, folder))
        else:
            damaged.append((folder, problem))
    return [folder for _, folder in sorted(valid)], sorted(damaged, key=lambda item: item[0].name)


def _marked_checkpoints(run_dir: Path) -> list[Path]:
    """Folders whose save finished (the COMPLETE marker), whatever became of their files since."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("tmp-") and (p / COMPLETE).is_file()]


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What is wrong with a finished checkpoint's files (None when nothing is): a missing or
    unreadable ``state.json``; a file the save wrote that is now missing or of another size; a
    small file (RNG states, loader positions) that does not load. The RNG files are loaded here
    because Accelerate's ``load_state`` skips one that fails with a log line at info level only
    (the run would go on with other random draws); the large files fail loudly in the load.
    Checkpoints of versions that did not record their files are checked as far as they can be."""
    if not (Path(checkpoint) / STATE).is_file():
        return f"{STATE} is missing"
    try:
        state = read_state(checkpoint)
    except TrainError:
        return f"{STATE} is unreadable"
    for name, size in state.files.items():
        path = Path(checkpoint) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the save wrote {size}"
    for path in sorted(Path(checkpoint).glob("random_states_*.pkl")):
        if not _rng_state_loads(path):
            return f"{path.name} does not load"
    for path in sorted(Path(checkpoint).glob(LOADER_STATE.format(rank="*"))):
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{path.name} does not load"
    return None


def _rng_state_loads(path: Path) -> bool:
    """Whether Accelerate's loader reads an RNG state file into what ``load_state`` sets."""
    from accelerate.utils import load

    try:
        states = load(path)
    except Exception:  # noqa: BLE001 - whatever a damaged pickle raises, it is damage
        return False
    return isinstance(states, dict) and {"random_state", "numpy_random_seed", "torch_manual_seed"} <= states.keys()


def read_state(checkpoint: Path) -> TrainState:
    """The TrainState stored in a checkpoint folder."""
    try:
        return TrainState(**json.loads((Path(checkpoint) / STATE).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise TrainError(f"{checkpoint}: not a checkpoint of this pipeline ({error})") from None


def read_loader_state(checkpoint: Path, *, rank: int) -> dict | None:
    """Rank ``rank``'s train loader state in ``checkpoint``; None when it has none (another world
    size, or a checkpoint of an older version): the loader then starts the epoch from its seed."""
    path = Path(checkpoint) / LOADER_STATE.format(rank=rank)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TrainError(f"{path}: unreadable loader state ({error}); resume from another checkpoint") from None


def is_complete_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint whose save finished (its marker and state are there)."""
    return (Path(folder) / COMPLETE).is_file() and (Path(folder) / STATE).is_file()


def among_checkpoints(run_dir: Path) -> str | None:
    """Why ``run_dir`` (run.out_dir) cannot be a run folder: it is or lies inside a checkpoint, or
    a run's ``checkpoints`` folder, where its config, metrics and export would land among a run's
    checkpoints (a checkpoint's own model.safetensors was taken for an earlier export and
    replaced); None when it is neither."""
    resolved = Path(run_dir).resolve()
    for place in (resolved, *resolved.parents):
        inside = "" if place == resolved else "inside "
        if is_complete_checkpoint(place):
            owner = place.parent.parent if place.parent.name == "checkpoints" else None
            go_on = f"continue that run with run.out_dir={owner}, or " if owner and is_run_folder(owner) else ""
            return (f"run.out_dir={run_dir} is {'a checkpoint' if not inside else f'inside the checkpoint {place}'}: "
                    f"this run's files would land in it (its model.safetensors taken for an old export and replaced); "
                    f"{go_on}start from it with run.resume={place} and a run folder of its own")
        # Only a run's: a user's own folder named checkpoints (run folders, checkpoints kept by
        # hand) is a place for a run folder like any other.
        if place.name == "checkpoints" and is_run_folder(place.parent) and _marked_checkpoints(place.parent):
            where = "holds" if not inside else f"is inside {place}, which holds"
            return (f"run.out_dir={run_dir} {where} the checkpoints of the run in {place.parent}: continue that run "
                    f"with run.out_dir={place.parent}, or give this one a folder of its own")
    return None


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a training's run folder: beside its checkpoints/ it holds the
    config.yaml that every run writes first, or its metrics."""
    folder = Path(folder)
    return (folder / "checkpoints").is_dir() and any((folder / name).is_file() for name in (CONFIG_FILE, METRICS_FILE))


def resume_hint(folder: Path) -> str:
    """What to give ``run.resume`` instead of ``folder``, which is no complete checkpoint (``; ...``
    to append to the refusal, or ''): a run folder's own checkpoints, or those kept beside a
    checkpoint that is gone (pruned: only the newest and the best stay) or unfinished."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():  # a run folder
        names = sorted(p.name for p in _marked_checkpoints(folder))
        listed = f", or name one of its checkpoints ({', '.join(names)})" if names else ""
        return (f"; {folder} is a run folder: run.resume=auto with run.out_dir={folder} resumes its newest "
                f"checkpoint{listed}")
    if folder.name == "checkpoints" and folder.is_dir():  # RUN/checkpoints itself
        names = sorted(p.name for p in _marked_checkpoints(folder.parent))
        there = f"name one of them ({', '.join(names)})" if names else "it holds no complete checkpoint"
        return (f"; {folder} holds a run's checkpoints: {there}, or run.resume=auto with "
                f"run.out_dir={folder.parent} for its newest")
    if folder.parent.name == "checkpoints":
        names = sorted(p.name for p in _marked_checkpoints(folder.parent.parent))
        why = ("did not finish saving" if folder.exists() else
               "is not there (pruned: a run keeps its newest run.keep_checkpoints and its best; moved to "
               "RUN/replaced-<n> by a branch or a start over; or misspelt)")
        there = f"complete ones there: {', '.join(names)}" if names else "no complete checkpoint is there"
        return f"; {folder.name} {why}; {there}"
    return "" if folder.exists() else " (no such folder)"


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """``auto``: the newest complete, undamaged checkpoint of the run (None if there is none);
    ``none``: None; otherwise the given folder, which must be a complete, undamaged checkpoint."""
    if resume == "none":
        return None
    if resume == "auto":
        found, damaged = survey_checkpoints(run_dir)
        if not found and damaged:  # starting over would silently throw the run away
            path, problem = damaged[-1]
            raise TrainError(f"run.resume=auto: every checkpoint of {run_dir} is damaged ({path.name}: {problem}); "
                             "start over with run.resume=none")
        return found[-1] if found else None
    folder = Path(resume)
    if not is_complete_checkpoint(folder):
        raise TrainError(f"run.resume: {folder} is not a complete checkpoint (no {COMPLETE} and {STATE} in it)"
                         f"{resume_hint(folder)}")
    damage = checkpoint_damage(folder)
    if damage is not None:
        raise TrainError(f"run.resume: {folder} is damaged ({damage}); name an older checkpoint, or run.resume=none "
                         "to start over")
    return folder


def check_compatible(state: TrainState, *, checkpoint: Path, model_name: str, num_classes: int,
                     shakedrop: bool = False, classes: list[str] | None = None, shards: Path | None = None) -> None:
    """Refuse a checkpoint of another model, class count, class list (names in label order;
    checkpoints of versions that did not record it are not compared) or model structure."""
    if state.model_name != model_name or state.num_classes != num_classes:
        raise TrainError(
            f"run.resume: {checkpoint} holds {state.model_name!r} with {state.num_classes} classes, but this run "
            f"trains {model_name!r} with {num_classes} classes; use another run.out_dir or run.resume=none")
    if classes is not None and state.classes and list(state.classes) != list(classes):
        index = next((i for i, (a, b) in enumerate(zip(state.classes, classes)) if a != b), None)
        what = f"class {index} is {state.classes[index]!r} there, {classes[index]!r} here" if index is not None \
            else f"{len(state.classes)} classes there, {len(classes)} here"
        raise TrainError(f"run.resume: {checkpoint} was trained on another class list than data.shards={shards} has "
                         f"({what}): the labels would mean other classes; use the shards it was trained on")
    if state.shakedrop != shakedrop:
        raise TrainError(f"run.resume: {checkpoint} holds a model with model.shakedrop={str(state.shakedrop).lower()}, "
                         f"this run has {str(shakedrop).lower()}; use the same, another run.out_dir or run.resume=none")


def prune_checkpoints(root: Path, *, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and the best epoch's (the ``best``
    of the newest one's state: the paper reports the best epoch, and it must stay evaluable),
    damaged ones older than the newest valid one (never to be resumed from again), and stale
    ``tmp-`` folders. The best one is never newer than the newest, so ``run.resume=auto`` takes it
    only where every newer checkpoint is damaged (as it would any older one)."""
    for stale in root.glob("tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    valid, damaged_ones = survey_checkpoints(root.parent)
    if valid:
        for damaged, _ in damaged_ones:
            if damaged.name < valid[-1].name:
                shutil.rmtree(damaged, ignore_errors=True)
    best = read_state(valid[-1]).best.get("epoch") if valid else None
    # An epoch's end checkpoint: a mid-epoch one is never the best (no evaluation ran there).
    best_name = None if best is None else checkpoint_name(TrainState(epoch=best))
    for old in valid[:-keep]:
        if old.name == best_name:
            continue
        # The marker goes first, so a kill in the middle leaves a folder that is ignored.
        (old / COMPLETE).unlink()
        shutil.rmtree(old, ignore_errors=True)
