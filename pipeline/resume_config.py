"""What a resumed run may change. A resume continues the run its checkpoint belongs to, so its
training settings (model, data, optimizer, schedule, mixing, batch, seed, precision) must be the
ones that checkpoint was trained with: a Mixup recipe launched into the ``run.out_dir`` of a
CutMix run would otherwise continue that run's weights and leave a model trained by neither
recipe, with a ``config.yaml`` naming only the second. The settings of where and how the run
executes (the shards' path, compile, progress, checkpoint keeping) may change freely.

Each checkpoint records its training settings (``TrainState.settings``); checkpoints of versions
before that are compared with their run's ``config.yaml``. A resume whose training settings
differ is refused, naming each difference, unless ``run.resume_with_changes=true``; then the run
continues with the new settings and the config it had is kept beside the new ``config.yaml`` as
``config.before-<checkpoint>.yaml``."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig, config_to_dict
from .config_values import load_yaml
from .errors import TrainError

CONFIG_FILE = "config.yaml"

# Keys that change how or where a run executes, not what it trains.
RUNTIME_KEYS = frozenset({
    "data.shards",  # the same shards moved (e.g. to a node-local disk); their class list is checked on resume
    "data.demo",
    "model.compile",  # the same math; checkpoints hold the uncompiled module's keys
    "model.pretrained",  # only the initial weights, which the checkpoint replaces
    "model.channels_last",  # a memory format: the same values
    "optim.fused",  # the same update, in one kernel
    "loader.val_batch_size",
    "run.out_dir",
    "run.resume",
    "run.resume_with_changes",
    "run.deterministic",
    "run.keep_checkpoints",
    "run.tensorboard",
    "run.progress",
    "run.log_every",
    "run.eval_every",
    "run.stop_grace_seconds",
})
# DALI's thread count does not change the samples or their augmentation (the same weights with 1
# and 2 threads); the torch backend's worker count does: it splits each epoch's samples and seeds
# between its workers, so another count after a mid-epoch resume repeats some samples and skips others.
THREADS_KEY = "loader.num_threads"
# Training settings a resume cannot change even on purpose: the checkpoint's weights or optimizer
# state do not fit a run built with another value (another model; one or two parameter groups:
# SGD's state is per group).
FIXED_KEYS = {"optim.decay_norm_and_bias": "the checkpoint's SGD state has one parameter group per setting "
                                           "(with and without weight decay on norms and biases)",
              "model.name": "the checkpoint holds that model's weights",
              "model.shakedrop": "the checkpoint's model has, or lacks, the ShakeDrop layers"}

Change = tuple[str, Any, Any]  # (section.key, the checkpoint's value, this command's value)


def runtime_keys(config: TrainConfig) -> frozenset[str]:
    """The keys ``config`` may change on resume (``RUNTIME_KEYS``, and the threads but for the torch loader)."""
    return RUNTIME_KEYS if config.loader.backend == "torch" else RUNTIME_KEYS | {THREADS_KEY}


def training_settings(config: TrainConfig) -> dict[str, Any]:
    """``section.key -> value`` of every training setting of ``config`` (what a checkpoint records)."""
    free = runtime_keys(config)
    return {key: value for key, value in _flat(config_to_dict(config)).items() if key not in free}


def _flat(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"optim": {"base_lr": 0.1}}`` -> ``{"optim.base_lr": 0.1}``."""
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def config_changes(saved: dict[str, Any], config: TrainConfig) -> list[Change]:
    """The training settings of ``config`` that differ from ``saved`` (``training_settings``' form),
    in declaration order; a key ``saved`` lacks (a setting newer than the checkpoint) is not compared,
    nor one that ``config`` never reads (``unread_keys``: mixup_alpha under cutmix), and milestones
    compare by the decays that happen (one at the last epoch's end does not), so a run recorded
    with a value the config rules now refuse resumes once the command drops it."""
    from .config_rules import unread_keys

    unread, settings = unread_keys(config), training_settings(config)

    def same(key, old, new) -> bool:
        if key == "schedule.milestones":  # the decays that happen: those before the end
            old_end, new_end = saved.get("schedule.epochs", float("inf")), settings["schedule.epochs"]
            return [m for m in old if m < old_end] == [m for m in new if m < new_end]
        return old == new

    return [(key, saved[key], value) for key, value in settings.items()
            if key in saved and key not in unread and not same(key, saved[key], value)]


def check_resume_config(config: TrainConfig, checkpoint: Path | None, recorded: dict[str, Any], *,
                        also: list[Change] = ()) -> list[Change]:
    """The changed training settings of resuming ``checkpoint`` (its recorded ``settings``, or
    its run's ``config.yaml`` for checkpoints without them) with ``config``: [] for a fresh start
    or nothing to compare with; TrainError when there are some and ``run.resume_with_changes`` is
    false, naming ``also`` (other changes the run would make: the process count) with them."""
    if checkpoint is None:
        return []
    saved = recorded or _run_config_settings(checkpoint, lenient=config.run.resume_with_changes)
    changes = config_changes(saved, config)
    fixed = [(key, old, new) for key, old, new in changes if key in FIXED_KEYS]
    if fixed:
        key = fixed[0][0]
        raise TrainError(f"run.resume: {checkpoint} was trained with {describe(fixed)}, which a resume cannot change "
                         f"({FIXED_KEYS[key]}); resume with {key}={_text(fixed[0][1])}, or start over with "
                         "run.resume=none")
    if changes and not config.run.resume_with_changes:
        raise TrainError(
            f"run.resume: {checkpoint} was trained with other settings ({describe([*changes, *also])}); resume "
            "with the same ones, train into another run.out_dir, start over with run.resume=none, or continue "
            "with the new ones with run.resume_with_changes=true")
    return changes


def _run_config_settings(checkpoint: Path, *, lenient: bool) -> dict[str, Any]:
    """The settings in the ``config.yaml`` of the run ``checkpoint`` is in (``RUN/checkpoints/<name>``)."""
    path = Path(checkpoint).parent.parent / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return _flat(load_yaml(path.read_text(encoding="utf-8")))
    except Exception as error:  # noqa: BLE001 - any unreadable file: the same answer
        if lenient:  # the user resumes with changes on purpose: nothing to compare with is no reason to stop
            return {}
        raise TrainError(f"run.resume: cannot read {path}, the config {checkpoint} was trained with "
                         f"({' '.join(str(error).split())}); "
                         "set run.resume_with_changes=true to resume without comparing") from None


def describe(changes: list[Change]) -> str:
    """``optim.base_lr=0.1 (now 0.2), mix.mode=cutmix (now mixup)``."""
    return ", ".join(f"{key}={_text(old)} (now {_text(new)})" for key, old, new in changes)


def keep_previous_config(checkpoint: Path, run_dir: Path) -> Path | None:
    """Copy the ``config.yaml`` of the run ``checkpoint`` is in to ``RUN/config.before-<checkpoint>.yaml``
    (``...-2.yaml`` and so on when one was kept before: never over an earlier record); None when
    that run has no ``config.yaml``."""
    source = Path(checkpoint).parent.parent / CONFIG_FILE
    if not source.is_file():
        return None
    Path(run_dir).mkdir(parents=True, exist_ok=True)  # resuming another run's checkpoint into a new folder
    stem = Path(run_dir) / f"config.before-{Path(checkpoint).name}"
    kept = first_unused(lambda n: Path(f"{stem}.yaml" if n == 1 else f"{stem}-{n}.yaml"))
    shutil.copyfile(source, kept)
    return kept


def keep_given_config(given: Path | None, run_dir: Path) -> Path | None:
    """Where ``--config`` names the run folder's own config.yaml, which the run rewrites with its
    resolved config, a copy of the user's file as ``RUN/config.given.yaml`` (``-2`` and
    so on after the first): its comments and ``base:`` line were replaced without a word. None
    when ``given`` is another file or has neither (a record of the run's own, edited or not)."""
    target = Path(run_dir) / CONFIG_FILE
    if given is None or not target.is_file() or Path(given).resolve() != target.resolve():
        return None
    # A record of the run's own (this version's or an earlier one's, edited or not) holds nothing
    # the new record loses; comments and a base: line are what was lost.
    if not re.search(r"^\s*#|^base\s*:", target.read_text(), re.MULTILINE):
        return None
    kept = first_unused(lambda n: Path(run_dir) / ("config.given.yaml" if n == 1 else f"config.given-{n}.yaml"))
    shutil.copyfile(target, kept)
    return kept


def moved_run_problem(config_file: Path | None, overrides: list[str], out_dir: Path) -> str:
    """Why ``--config RUN/config.yaml`` may not go ahead ('' when it may): the record of a run
    folder whose ``run.out_dir`` names another folder, and no ``run.out_dir=`` given. The record
    holds the folder it was written in, so after the folder was moved (or copied) the command that
    meant to resume it started a fresh run where the folder had been (or resumed the original)."""
    if config_file is None or Path(config_file).name != CONFIG_FILE:
        return ""
    from .checkpoint import is_run_folder

    folder = Path(config_file).absolute().parent  # the folder named, not a linked file's
    if not is_run_folder(folder) or any(o.split("=", 1)[0].strip() == "run.out_dir" for o in overrides):
        return ""
    try:  # one folder under two names (a link, a bind mount) is the same run
        if os.path.samefile(out_dir, folder):
            return ""
    except OSError:  # out_dir is not there (the folder was moved away from it)
        pass
    here, there = folder.resolve(), Path(out_dir).resolve()
    why = ("(the folder was moved or copied since?)" if Path(out_dir).is_absolute() else
           f"(relative: from this working folder {there})")
    return (f"--config {config_file} is the record of the run folder {here}, but it names run.out_dir={out_dir} "
            f"{why}: give run.out_dir={here} to go on with this folder, or run.out_dir={there} to train in that one")


def first_unused(name: Callable[[int], Path]) -> Path:
    """``name(1)``, ``name(2)``, ...: the first that does not exist. What a run keeps aside (an
    earlier config, run or export) never goes over what an earlier resume kept."""
    n = 1
    while name(n).exists():
        n += 1
    return name(n)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return "null" if value is None else str(value)
