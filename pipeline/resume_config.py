"""What a resumed run may change. A resume continues the run its checkpoint belongs to, so its
training settings (model, data, optimizer, schedule, mixing, batch, seed, precision) must be the
ones that run was started with: a Mixup recipe launched into the ``run.out_dir`` of a CutMix run
would otherwise continue that run's weights and leave a model trained by neither recipe, with a
``config.yaml`` naming only the second. The settings of where and how the run executes (the
shards' path, threads, compile, progress, checkpoint keeping) may change freely.

A resume whose training settings differ is refused, naming each difference, unless
``run.resume_with_changes=true``; then the run continues with the new settings and the config it
had is kept beside the new ``config.yaml`` as ``config.before-<checkpoint>.yaml``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .config import TrainConfig, config_to_dict, resolve_config
from .errors import ConfigError, TrainError

CONFIG_FILE = "config.yaml"

# Keys that change how or where a run executes, not what it trains.
RUNTIME_KEYS = frozenset({
    "data.shards",  # the same shards moved (e.g. to a node-local disk); their class list is checked anyway
    "data.demo",
    "model.compile",  # the same math; checkpoints hold the uncompiled module's keys
    "model.pretrained",  # only the initial weights, which the checkpoint replaces
    "loader.num_threads",
    "loader.val_batch_size",
    "run.out_dir",
    "run.resume",
    "run.resume_with_changes",
    "run.keep_checkpoints",
    "run.tensorboard",
    "run.progress",
    "run.log_every",
    "run.eval_every",
    "run.stop_grace_seconds",
})

Change = tuple[str, Any, Any]  # (section.key, the run's value, this command's value)


def run_config_path(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the run a checkpoint belongs to (``RUN/checkpoints/<name>``)."""
    return Path(checkpoint).parent.parent / CONFIG_FILE


def config_changes(saved: TrainConfig, current: TrainConfig) -> list[Change]:
    """The training settings (everything but ``RUNTIME_KEYS``) that differ, in declaration order."""
    old, new = config_to_dict(saved), config_to_dict(current)
    return [(f"{section}.{key}", old[section][key], value) for section, values in new.items()
            for key, value in values.items()
            if f"{section}.{key}" not in RUNTIME_KEYS and old[section][key] != value]


def check_resume_config(config: TrainConfig, checkpoint: Path | None) -> list[Change]:
    """The changed training settings of resuming ``checkpoint`` with ``config`` ([] without a
    checkpoint, or for a run that has no ``config.yaml``); TrainError when there are some and
    ``run.resume_with_changes`` is false."""
    if checkpoint is None:
        return []
    path = run_config_path(checkpoint)
    if not path.is_file():
        return []
    try:
        saved = resolve_config(config_file=path, overrides=[])
    except ConfigError as error:
        raise TrainError(f"run.resume: cannot read the config {checkpoint} was trained with: {error}") from None
    changes = config_changes(saved, config)
    if changes and not config.run.resume_with_changes:
        raise TrainError(
            f"run.resume: {checkpoint} was trained with other settings ({describe(changes)}); resume with the "
            f"same ones, train into another run.out_dir, start over with run.resume=none, or continue with the "
            f"new ones with run.resume_with_changes=true")
    return changes


def describe(changes: list[Change]) -> str:
    """``optim.base_lr=0.1 (now 0.2), mix.mode=cutmix (now mixup)``."""
    return ", ".join(f"{key}={_text(old)} (now {_text(new)})" for key, old, new in changes)


def keep_previous_config(checkpoint: Path, run_dir: Path) -> Path:
    """Copy the config ``checkpoint`` was trained with to ``RUN/config.before-<checkpoint>.yaml``
    (``...-2.yaml`` and so on when a change from the same checkpoint was kept before: never over
    an earlier record)."""
    kept, n = Path(run_dir) / f"config.before-{Path(checkpoint).name}.yaml", 2
    while kept.exists():
        kept, n = Path(run_dir) / f"config.before-{Path(checkpoint).name}-{n}.yaml", n + 1
    shutil.copyfile(run_config_path(checkpoint), kept)
    return kept


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return "null" if value is None else str(value)
