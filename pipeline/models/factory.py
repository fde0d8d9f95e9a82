"""Model creation: any timm model by name (ours are registered into timm by ``pipeline.models``),
with the class count of the shards and the regularization options of the model section. An
option a model does not honour is an error naming it, never silently ignored."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from timm.layers import DropBlock2d

from shards.errors import ShardsError
from shards.manifest import load_manifest

from ..errors import TrainError
from .dropblock import DropBlock
from .shakedrop import ShakeDrop

# Where each option is implemented, for the message when a model lacks it.
SUPPORTED_BY = {
    "drop_path_rate": "stochastic depth is in most timm models and our PyramidNets",
    "drop_block_rate": "DropBlock is in our PyramidNets (timm.list_models('pyramidnet*')) and timm's ResNet family "
                       "(resnet*, resnext*, seresnet*, resnest*, ...)",
    "shakedrop": "ShakeDrop is in our PyramidNets (timm.list_models('pyramidnet*'))",
    "zero_init_last": "timm's ResNet family (resnet*, resnext*, seresnet*, ...) takes it; leave it unset (null) "
                      "for other models",
}
# The module an option puts into a model: a model that takes the keyword and ignores it is refused too.
EVIDENCE = {"drop_block_rate": (DropBlock, DropBlock2d), "shakedrop": ShakeDrop}


class UnsupportedOption(TrainError):
    """A model that does not take, or ignores, a regularization option of the model section."""

    def __init__(self, option: str, model_name: str):
        self.key = f"model.{option}"
        self.problem = f"{model_name} does not support it; {SUPPORTED_BY[option]}"
        super().__init__(f"{self.key}: {self.problem}")


def read_num_classes(shards_dir: str | Path) -> int:
    """The class count in the train manifest that ``python -m shards build`` wrote."""
    try:
        return load_manifest(Path(shards_dir), "train")["num_classes"]
    except ShardsError as error:  # the message names the file and how to build or fix it
        raise TrainError(f"no shards at {_shown(shards_dir)}: {error}") from None


def read_classes(shards_dir: str | Path) -> list[str]:
    """The class list (index order) of the train manifest."""
    try:
        return list(load_manifest(Path(shards_dir), "train")["classes"])
    except ShardsError as error:
        raise TrainError(f"no shards at {_shown(shards_dir)}: {error}") from None


def _shown(shards_dir: str | Path) -> str:
    """A missing relative folder with the folder it was looked for from: a command run from
    another folder than the one its config's paths assume is the usual cause."""
    path = Path(shards_dir)
    return f"{path} (relative to {Path.cwd()})" if not path.is_absolute() and not path.exists() else str(path)


def check_model_name(name: str) -> None:
    """Raise a TrainError naming close matches when timm does not know ``name``."""
    problem = unknown_model_message(name)
    if problem:
        raise TrainError(f"model.name: {problem}")


def unknown_model_message(name: str) -> str | None:
    """None when timm has a model ``name``; otherwise what to say, with close matches."""
    import timm

    if timm.is_model(name):
        from timm.models import split_model_name_tag

        architecture, tag = split_model_name_tag(name)
        # Every tag timm registers (list_pretrained leaves out those without weights, `.untrained`).
        known_names = timm.list_models(f"{architecture}.*", include_tags=True)
        if tag and name not in known_names:
            # timm.is_model ignores the tag; create_model then refused it, said by the first check
            # that builds the model (the image size's) as if the size were wrong (walkthrough).
            tags = [known.split(".", 1)[1] for known in known_names]
            has = f"it has {', '.join(tags)}" if tags else "it has none"
            return f"timm has no pretrained tag {tag!r} for {architecture} ({has}; the name without a tag works too)"
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    return f"timm has no model {name!r}{hint}"


def regularization_options(*, drop_path_rate: float, drop_block_rate: float, shakedrop: bool,
                           zero_init_last: bool | None = None) -> dict:
    """``timm.create_model`` keywords for the options that are on (only those: a model without an
    option still builds when it is off); ``zero_init_last`` when set (None: the model's default)."""
    options = {"drop_path_rate": drop_path_rate, "drop_block_rate": drop_block_rate, "shakedrop": shakedrop}
    options = {key: value for key, value in options.items() if value}
    return options if zero_init_last is None else {**options, "zero_init_last": zero_init_last}


def build_timm_model(name: str, *, options: dict, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs, **options)``; UnsupportedOption when the model refuses
    an option (TypeError naming it) or builds without the module the option stands for."""
    import timm

    try:
        model = timm.create_model(name, **kwargs, **options)
    except TypeError as error:  # "__init__() got an unexpected keyword argument 'drop_block_rate'"
        refused = [key for key in options if f"'{key}'" in str(error)]
        if not refused:
            raise
        raise UnsupportedOption(refused[0], name) from None
    for key, module_type in EVIDENCE.items():
        if key in options and not any(isinstance(module, module_type) for module in model.modules()):
            raise UnsupportedOption(key, name)
    return model


def model_option_problem(name: str, *, shakedrop: bool, drop_block_rate: float, drop_path_rate: float = 0.0,
                         zero_init_last: bool | None = None) -> tuple[str, str] | None:
    """None when model ``name`` honours these options; otherwise (key, what is wrong). The model is
    built on the meta device (no memory, no weights, milliseconds), only when an option is on."""
    options = regularization_options(drop_path_rate=drop_path_rate, drop_block_rate=drop_block_rate,
                                     shakedrop=shakedrop, zero_init_last=zero_init_last)
    if not options:
        return None
    try:
        with torch.device("meta"):
            build_timm_model(name, options=options, pretrained=False)
    except UnsupportedOption as error:
        return error.key, error.problem
    except Exception:  # noqa: BLE001 - cannot be built on the meta device: create_model checks it for real
        return None
    return None


def input_size_problem(name: str, *, image_size: int) -> str | None:
    """None when model ``name`` takes ``image_size`` x ``image_size`` images; otherwise what its
    forward said (a ViT is built for one size; a small image can vanish in a deep network's
    poolings). Built and run on the meta device: shapes only, no memory, no arithmetic."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, image_size, image_size))
    except NotImplementedError:  # an operator the meta device lacks: the first step checks it for real
        return None
    except (AssertionError, ValueError, RuntimeError) as error:
        text = " ".join(str(error).split())
        if "meta" in text.lower():  # the meta device's own limits (data-dependent code), not the size
            return None
        return text[:200] or type(error).__name__
    except Exception:  # noqa: BLE001 - anything else says nothing about the size: the first step checks it
        return None
    return None


def pretrained_problem(name: str, error: BaseException) -> str:
    """Why ``model.pretrained=true`` failed, in one line: a compute node without internet retried
    the Hugging Face Hub for a minute and then ended in huggingface_hub's traceback."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return (f"model.pretrained=true: timm could not load the pretrained weights of {name} ({type(error).__name__}: "
            f"{text}); where the nodes have no internet, download them once on a machine that has (python -c "
            f"\"import timm; timm.create_model('{name}', pretrained=True)\") into a Hugging Face cache the nodes "
            f"share (HF_HOME) and run with HF_HUB_OFFLINE=1; or set model.pretrained=false")


def create_model(*, name: str, num_classes: int, pretrained: bool, channels_last: bool, drop_path_rate: float,
                 drop_block_rate: float = 0.0, shakedrop: bool = False,
                 zero_init_last: bool | None = None) -> torch.nn.Module:
    """A timm model with ``num_classes`` outputs and the regularization options asked for (a
    TrainError naming the option when the model lacks one), channels-last if asked;
    ``zero_init_last`` (timm's ResNets): whether each block's last BatchNorm starts at zero (None:
    timm's default, true; false: every BatchNorm at 1, as the paper's code)."""
    check_model_name(name)
    options = regularization_options(drop_path_rate=drop_path_rate, drop_block_rate=drop_block_rate,
                                     shakedrop=shakedrop, zero_init_last=zero_init_last)
    try:
        model = build_timm_model(name, options=options, pretrained=pretrained, num_classes=num_classes)
    except (OSError, RuntimeError) as error:  # huggingface_hub's errors are OSErrors; timm's no-weights a RuntimeError
        if not pretrained:
            raise
        problem = TrainError(pretrained_problem(name, error))
        problem.during_pass = True  # one node's alone, maybe (no internet, its own HF_HOME): that rank says it
        raise problem from error
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
