"""Model creation: any timm model by name, with the class count of the shards."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from shards.errors import ShardsError
from shards.manifest import load_manifest

from .errors import TrainError


def read_num_classes(shards_dir: str | Path) -> int:
    """The class count in the train manifest that ``python -m shards build`` wrote."""
    try:
        return load_manifest(Path(shards_dir), "train")["num_classes"]
    except ShardsError as error:  # the message names the file and how to build or fix it
        raise TrainError(f"no shards at {shards_dir}: {error}") from None


def check_model_name(name: str) -> None:
    """Raise a TrainError naming close matches when timm does not know ``name``."""
    problem = unknown_model_message(name)
    if problem:
        raise TrainError(f"model.name: {problem}")


def unknown_model_message(name: str) -> str | None:
    """None when timm has a model ``name``; otherwise what to say, with close matches."""
    import timm

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    return f"timm has no model {name!r}{hint}"


def create_model(*, name: str, num_classes: int, pretrained: bool, channels_last: bool,
                 drop_path_rate: float) -> torch.nn.Module:
    """A timm model with ``num_classes`` outputs, in channels-last memory format if asked."""
    import timm

    check_model_name(name)
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **extra)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
