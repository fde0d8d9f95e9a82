"""What is evaluated: a run folder (its ``config.yaml`` and exported ``model.safetensors``), one
of its checkpoints (``RUN/checkpoints/epoch-NNNN``: its ``model.safetensors`` and ``state.json``
with the run's ``config.yaml``), or an exported ``MODEL.safetensors`` alone (its metadata: timm
name, classes, preprocessing). Either way the result is one ``ModelSource``; ``load_model``
builds the timm model and loads the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Augmentation
from ..errors import EvalError, TrainError

WEIGHTS_FILE = "model.safetensors"  # what pipeline.run exports at the end of a run
_DEFAULT_PREPROCESSING = {"crop_pct": 0.875, "augmentation": "imagenet", "crop_padding": 4, "channels_last": True}


@dataclass(frozen=True)
class ModelSource:
    """A model to evaluate and how its inputs are made."""

    weights: Path
    model_name: str
    num_classes: int
    model_options: dict  # structure-changing options (shakedrop)
    classes: list[str] | None  # the training class list in index order (None: not recorded)
    image_size: int
    crop_pct: float
    augmentation: str  # "imagenet" or "cifar": which validation transform
    crop_padding: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool
    run_dir: Path | None  # the run folder, when one was given
    shards: Path | None  # the run's shards folder (the default --shards)
    eval_split: str | None = None  # the split the run evaluated while training (the default --split)
    checkpoint: dict | None = None  # a checkpoint's folder, epoch, step_in_epoch, global_step (None: not one)

    def val_augmentation(self) -> Augmentation:
        """The validation transform the model was evaluated with during training."""
        return Augmentation(image_size=self.image_size, crop_pct=self.crop_pct, kind=self.augmentation,
                            padding=self.crop_padding)


def resolve_source(path: str | Path) -> ModelSource:
    """The ModelSource of a run folder or a ``.safetensors`` file; EvalError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"{path}: no such run folder or weights file")
    if path.is_dir():
        return _from_checkpoint(path) if _is_checkpoint_folder(path) else _from_run(path)
    if path.name == WEIGHTS_FILE and _is_checkpoint_folder(path.parent):  # a checkpoint's weights: no metadata
        return _from_checkpoint(path.parent)
    if path.name == WEIGHTS_FILE and (path.parent / "config.yaml").is_file():
        # A run's own export, named as a file: the run's config brings the shards and the split the
        # run evaluated (CIFAR's test), which the weights' metadata alone does not.
        return _from_run(path.parent)
    if path.suffix != ".safetensors":
        raise EvalError(f"{path}: expected a run folder or an exported .safetensors file")
    metadata = _read_metadata(path)
    if "preprocessing" not in metadata:
        raise EvalError(f"{path}: these weights do not record their preprocessing (exported before it was "
                        "recorded); evaluate the run folder instead")
    return _source(path, metadata, json.loads(metadata["preprocessing"]), run_dir=None, shards=None)


def _from_run(run_dir: Path) -> ModelSource:
    weights, config_file = run_dir / WEIGHTS_FILE, run_dir / "config.yaml"
    if not config_file.is_file():
        if run_dir.name == "checkpoints" and (run_dir.parent / "config.yaml").is_file():
            names = ", ".join(sorted(p.name for p in run_dir.iterdir() if _is_checkpoint_folder(p)))
            raise EvalError(f"{run_dir}: name one checkpoint in it ({names or 'it has none'}), or the run folder")
        raise EvalError(f"{run_dir}: not a run folder (no config.yaml)")
    if not weights.is_file():
        from ..checkpoint import valid_checkpoints

        found = valid_checkpoints(run_dir)
        if not found:  # nothing to resume from or to evaluate: "resumes it" would promise what is not there
            raise EvalError(f"{run_dir}: no {WEIGHTS_FILE} and no complete checkpoint: the run stopped (or is "
                            "still) before the end of its first checkpointed epoch, so it has no weights to "
                            "evaluate yet")
        raise EvalError(f"{run_dir}: no {WEIGHTS_FILE}: the run has not finished; its newest checkpoint is "
                        f"{found[-1].name} (weights are exported when its last epoch ends; if it is not running any "
                        "more, its training command resumes it; or evaluate a checkpoint: RUN/checkpoints/epoch-NNNN)")
    return _run_source(config_file, weights, _read_metadata(weights), run_dir=run_dir)


def _is_checkpoint_folder(folder: Path) -> bool:
    """Whether ``folder`` is meant as a checkpoint (complete or not): it has a checkpoint's marker
    or state, or it sits in a run's ``checkpoints`` folder; a run folder (its ``config.yaml``) is
    not one, wherever it is (runs kept in a folder called ``checkpoints``)."""
    from ..checkpoint import COMPLETE, STATE

    folder = Path(folder)
    if not folder.is_dir() or (folder / "config.yaml").exists():
        return False
    return (folder / COMPLETE).exists() or (folder / STATE).exists() or folder.resolve().parent.name == "checkpoints"


def _from_checkpoint(folder: Path) -> ModelSource:
    """A checkpoint's model (``state.json``: name, classes, structure) with the preprocessing of
    its run's ``config.yaml`` (two levels up), as a run folder's export has it."""
    from ..checkpoint import COMPLETE, checkpoint_damage, read_state, valid_checkpoints

    # Absolute: `.` or `model.safetensors` given from inside the checkpoint named nothing by its
    # name (the default out became RUN/eval-, eval.json recorded ".").
    folder = Path(folder).absolute()
    in_run = folder.resolve().parent.name == "checkpoints"  # resolved: `epoch-0002` given inside checkpoints/
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder.resolve().parent.parent
    found = valid_checkpoints(run_dir) if in_run else []
    others = f"; the run's complete ones: {', '.join(p.name for p in found)}" if found else ""
    if folder.resolve().name.startswith("tmp-") or not (folder / COMPLETE).is_file():
        raise EvalError(f"{folder}: an incomplete checkpoint (no {COMPLETE}: its save did not finish){others}")
    damage = checkpoint_damage(folder)
    if damage is not None:
        raise EvalError(f"{folder}: a damaged checkpoint ({damage}){others}")
    config_file = run_dir / "config.yaml"
    if not in_run or not config_file.is_file():
        raise EvalError(f"{folder}: a checkpoint outside its run folder (no {config_file}): its preprocessing "
                        "comes from the run's config.yaml; evaluate it where training saved it, RUN/checkpoints/")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise EvalError(f"{folder}: no {WEIGHTS_FILE} in this checkpoint")
    state = read_state(folder)
    metadata = {"model_name": state.model_name, "num_classes": str(state.num_classes),
                "model_options": json.dumps({"shakedrop": True} if state.shakedrop else {})}
    if state.classes:  # checkpoints of older versions: the run's train manifest, as for their exports
        metadata["classes"] = json.dumps(state.classes)
    # The preprocessing this checkpoint trained with, as its state records it: the run's config.yaml
    # is its newest start's, which a resume with changes (another image size, mean, crop) rewrote.
    recorded = {key: state.settings[f"{section}.{key}"] for section, keys in
                (("data", ("image_size", "crop_pct", "augmentation", "crop_padding", "mean", "std")),
                 ("model", ("channels_last",))) for key in keys if f"{section}.{key}" in state.settings}
    if recorded:
        metadata["preprocessing"] = json.dumps(recorded)
    described = {"folder": str(folder), "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                 "global_step": state.global_step}
    return dataclasses.replace(_run_source(config_file, weights, metadata, run_dir=run_dir), checkpoint=described)


def _run_source(config_file: Path, weights: Path, metadata: dict, *, run_dir: Path) -> ModelSource:
    """The ModelSource of a run's weights: preprocessing from ``config_file`` where the weights'
    metadata does not record it, classes from the run's train manifest where it lacks them."""
    from ..config import resolve_config

    try:
        # recorded: a run made before a rule against unused options came in stays evaluable.
        config = resolve_config(config_file=config_file, overrides=[], recorded=True)
    except TrainError as error:
        raise EvalError(f"{config_file}: {error}") from None
    data = config.data
    recorded = json.loads(metadata.get("preprocessing", "{}"))
    preprocessing = {"image_size": data.image_size, "crop_pct": data.crop_pct, "augmentation": data.augmentation,
                     "crop_padding": data.crop_padding, "mean": data.mean, "std": data.std,
                     "channels_last": config.model.channels_last, **recorded}
    if "classes" not in metadata:  # exported before the class list was recorded: the run's train manifest
        from ..models import read_classes

        try:
            metadata = {**metadata, "classes": json.dumps(read_classes(data.shards))}
        except TrainError:
            pass
    return dataclasses.replace(_source(weights, metadata, preprocessing, run_dir=run_dir, shards=Path(data.shards)),
                               eval_split=data.eval_split)


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise EvalError(f"{path}: not readable safetensors ({error})") from None
    for key in ("model_name", "num_classes"):
        if key not in metadata:
            # A checkpoint's model.safetensors has no metadata: its state.json beside it says the model.
            raise EvalError(f"{path}: no {key!r} in its metadata: not weights exported by pipeline/train.py (a "
                            "checkpoint's own model.safetensors has none: evaluate its folder, "
                            "RUN/checkpoints/epoch-NNNN, or the run's export, RUN/model.safetensors)")
    return metadata


def _source(weights: Path, metadata: dict, preprocessing: dict, *, run_dir, shards) -> ModelSource:
    values = {**_DEFAULT_PREPROCESSING, **preprocessing}
    if values["augmentation"] == "cifar":  # the image as it is: its config's crop_pct is unread
        values["crop_pct"] = 1.0  # (as an export records it since; eval.json said 0.875 for a checkpoint)
    classes = json.loads(metadata["classes"]) if "classes" in metadata else None
    return ModelSource(weights=weights, model_name=metadata["model_name"], num_classes=int(metadata["num_classes"]),
                       model_options=json.loads(metadata.get("model_options", "{}")), classes=classes,
                       image_size=int(values["image_size"]), crop_pct=float(values["crop_pct"]),
                       augmentation=values["augmentation"], crop_padding=int(values["crop_padding"]),
                       mean=tuple(values["mean"]), std=tuple(values["std"]),
                       channels_last=bool(values["channels_last"]), run_dir=run_dir, shards=shards)


def load_model(source: ModelSource) -> torch.nn.Module:
    """The timm model with the exported weights (strict: every key must match), in eval mode, on CPU."""
    from safetensors.torch import load_file

    from ..export import model_keys
    from ..models import create_model

    model = create_model(name=source.model_name, num_classes=source.num_classes, pretrained=False,
                         channels_last=source.channels_last, drop_path_rate=0.0,
                         shakedrop=bool(source.model_options.get("shakedrop", False)))
    try:
        state = load_file(str(source.weights))
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise EvalError(f"{source.weights}: not readable safetensors ({error})") from None
    # A checkpoint saved under DDP holds the wrapper's keys: the model's own (model_keys).
    names = model_keys(state)
    state = {names[key]: value for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise EvalError(f"{source.weights}: the weights do not fit {source.model_name} ({first})") from None
    return model.eval()


def check_classes(source: ModelSource, shard_classes: list[str], *, where: str) -> None:
    """The shards must have the model's classes in the model's order; EvalError naming the first difference."""
    if source.classes is None:
        if len(shard_classes) != source.num_classes:
            raise EvalError(f"{where}: {len(shard_classes)} classes, but the model has {source.num_classes}")
        return
    if list(shard_classes) == list(source.classes):
        return
    if len(shard_classes) != len(source.classes):
        raise EvalError(f"{where}: {len(shard_classes)} classes, but the model was trained on {len(source.classes)} "
                        f"({source.classes[0]} ... {source.classes[-1]})")
    index = next(i for i, (a, b) in enumerate(zip(shard_classes, source.classes)) if a != b)
    missing = [name for name in source.classes if name not in set(shard_classes)]
    if missing:  # other classes, not another order: no rebuild with a class list makes them the model's
        raise EvalError(f"{where}: class {index} is {shard_classes[index]!r} there but {source.classes[index]!r} for "
                        f"the model, and {len(missing)} of the model's {len(source.classes)} classes are not there "
                        f"(e.g. {missing[0]!r}): evaluate on shards of the classes it was trained on")
    raise EvalError(f"{where}: class {index} is {shard_classes[index]!r} there but {source.classes[index]!r} for the "
                    f"model (the same classes in another order); build the shards with --classes "
                    "TRAIN_SHARDS/train.json")
