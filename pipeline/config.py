"""The training config: one typed dataclass per section, YAML recipes over the defaults, then
``section.key=value`` overrides. Unknown keys, wrong types and values outside a field's rules
(``config_rules``) are errors that name the key, raised before anything is built.

    config = resolve_config(config_file="configs/imagenet1k/resnet50_cutmix.yaml",
                            overrides=["optim.base_lr=0.2", "run.out_dir=runs/x"])

A YAML file may start with ``base: other.yaml`` (relative to itself): the recipes are a small base
plus deltas. The defaults below are close to the paper's ImageNet ResNet-50 recipe without mixing
(configs/imagenet1k/resnet50_baseline.yaml is that recipe: colour jitter and lighting, every
BatchNorm starting at 1, 32 images per process on 8 GPUs).
Values are read by each field's declared type (``config_values``): ``run.mixed_precision=no``
is the text "no", not YAML 1.1's boolean.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from shards.durable import write_text_atomic

from .config_rules import validate
from .config_values import coerce, load_yaml
from .errors import ConfigError


@dataclass
class DataConfig:
    shards: str = "data/imagenet1k"  # folder with train.json/val.json and their tars (python -m shards build)
    demo: bool = False  # build the scikit-learn digits into `shards` first when they are missing
    image_size: int = 224  # train crop and val centre crop side, pixels
    crop_pct: float = 0.875  # val: resize the shorter side to image_size / crop_pct, then centre crop
    random_area: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (Inception crop)
    random_aspect_ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # RandomResizedCrop aspect range
    flip_probability: float = 0.5  # horizontal flip of train images
    # "imagenet" (RandomResizedCrop, val resize + centre crop) or "cifar" (zero padding of
    # crop_padding pixels + random image_size crop, val as it is): pipeline.data.augment
    augmentation: str = "imagenet"
    crop_padding: int = 4  # cifar: pixels of zero padding on each side before the random crop
    eval_split: str = "val"  # the split evaluated every run.eval_every epochs ("test" for CIFAR's test batch)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # normalization, [0, 1] units (ImageNet)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # normalization, [0, 1] units (ImageNet)
    # The paper's ImageNet colour augmentation (its official code, from fb.resnet.torch): ColorJitter
    # with brightness = contrast = saturation = color_jitter (0.4) in a random order per image, then
    # PCA lighting noise of std lighting_std (0.1); on the device before mixing
    # (pipeline/data/color.py). 0 = off (timm's and torchvision's ImageNet recipes have none)
    color_jitter: float = 0.0
    lighting_std: float = 0.0


@dataclass
class ModelConfig:
    name: str = "resnet50"  # any timm model name (timm.list_models()), ours included (pipeline/models: pyramidnet*)
    pretrained: bool = False  # start from timm's pretrained weights (downloads; classifier re-initialized)
    channels_last: bool = True  # NHWC memory format: what tensor cores and the mix kernel want
    # torch.compile the model (inductor) after DDP wrapping: tens of seconds of compiling first on a
    # CPU with an empty cache (bench/bench_compile_start.py), faster steps on GPU; the feature-level
    # mix modes compile a graph per mixed layer
    compile: bool = False
    drop_path_rate: float = 0.0  # stochastic depth, for models that support it (0 = off, the paper's ResNet)
    # DropBlock (Ghiasi et al. 2018) drop rate: our PyramidNets (last two stages, block 7) and timm's
    # ResNet family (its own placement); an error for other models. 0 = off
    drop_block_rate: float = 0.0
    shakedrop: bool = False  # ShakeDrop on every residual branch (our PyramidNets only; final drop probability 0.5)
    # timm's ResNets start each block's last BatchNorm at zero (true, timm's default); the paper's
    # code starts every BatchNorm at 1 (false, its ImageNet recipes); null: the model's own default
    zero_init_last: Optional[bool] = None


@dataclass
class OptimConfig:
    base_lr: float = 0.1  # lr at a global batch of reference_batch; scaled linearly with the real one
    reference_batch: int = 256  # lr = base_lr * global_batch / reference_batch (Goyal et al.)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum (the paper's code)
    weight_decay: float = 1e-4  # L2 via SGD's weight_decay
    # False: no weight decay on norm weights and biases (1-d params), nor on what the model's
    # no_weight_decay() names (timm's ViT tokens and position embeddings), as timm's own groups
    decay_norm_and_bias: bool = True
    # torch.optim.SGD(fused=True): the whole update in one kernel per device and dtype, where torch
    # has one for the run's device (CPU and CUDA do); elsewhere, and with false, torch's default
    fused: bool = True


@dataclass
class ScheduleConfig:
    epochs: int = 300  # training epochs
    name: str = "step"  # "step" (x decay_factor at milestones, the paper) or "cosine"
    milestones: tuple[int, ...] = (75, 150, 225)  # step: epochs at which lr is multiplied by decay_factor
    decay_factor: float = 0.1  # step: the multiplier at each milestone
    warmup_epochs: float = 0.0  # linear warmup length (both schedules); 0 = none
    warmup_start_factor: float = 0.1  # warmup starts at this fraction of the lr
    min_lr: float = 0.0  # cosine: the lr it decays to, at reference_batch (scaled with the batch as base_lr)


@dataclass
class MixConfig:
    # cutmix, mixup, cutmix_or_mixup, cutout, none, or the feature-level feature_cutmix and
    # manifold_mixup (pipeline.mix.feature: a layer drawn per batch from feature_layers)
    mode: str = "none"
    cutmix_alpha: float = 1.0  # lam ~ Beta(alpha, alpha) for CutMix
    mixup_alpha: float = 1.0  # lam ~ Beta(alpha, alpha) for Mixup
    prob: float = 1.0  # probability that a batch (sample) is mixed at all
    switch_prob: float = 0.5  # cutmix_or_mixup: probability of CutMix
    per: str = "batch"  # "batch" (one lambda and box per batch, the paper) or "elem"
    partner: str = "permutation"  # permutation (the paper), flip (timm) or roll (torchvision)
    cutout_size: Optional[int] = None  # cutout: box side in pixels
    label_smoothing: float = 0.0  # applied to each one-hot before mixing (timm's convention)
    # feature_cutmix / manifold_mixup: where to mix, one drawn per batch; "input" is the image,
    # the others modules of the model's feature_info (the CutMix paper: k in {0, 1, 2, 3})
    feature_layers: tuple[str, ...] = ("input", "layer1", "layer2", "layer3")


@dataclass
class LoaderConfig:
    backend: str = "dali"  # dali, torch or synthetic (pipeline.data.create_loader)
    batch_size: int = 256  # per process; the global batch is batch_size * processes
    val_batch_size: Optional[int] = None  # per process for evaluation; None = batch_size
    num_threads: int = 4  # DALI threads or torch DataLoader workers per process
    shuffle_buffer: int = 4096  # samples in the reader's shuffle buffer


@dataclass
class RunConfig:
    out_dir: str = "runs/default"  # run folder: config, metrics, checkpoints, weights, plots
    seed: int = 0  # everything random derives from (seed, epoch, rank)
    # "auto": bf16 where the process runs on a GPU, full precision elsewhere (pipeline/precision.py:
    # a CPU without native bf16 takes minutes per ResNet-50 step in bf16); "bf16" or "no" force one.
    mixed_precision: str = "auto"
    deterministic: bool = False  # torch deterministic algorithms (exact resume on CPU; slower on GPU)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    resume: str = "auto"  # "auto" (newest valid checkpoint in out_dir, if any), "none", or a checkpoint folder
    # Resume although training settings (not threads, paths, progress: pipeline/resume_config.py)
    # or the process count differ from the checkpoint's; false refuses, naming them. The old config
    # is kept; lr and schedule follow the new settings from where the checkpoint stands.
    resume_with_changes: bool = False
    # Newest checkpoints kept in out_dir/checkpoints; the best epoch's (state.json "best") is kept
    # too, so the epoch the paper reports stays evaluable (python -m pipeline.evaluate RUN/checkpoints/epoch-NNNN).
    keep_checkpoints: int = 2
    tensorboard: bool = False  # log through Accelerate's TensorBoard tracker into out_dir/tensorboard
    progress: bool = True  # tqdm bar on the main process
    log_every: int = 10  # steps between progress updates (each reads the loss: a device sync)
    max_train_steps: Optional[int] = None  # cap on steps per epoch (smoke tests, benchmarks); None = all
    # After SIGTERM/SIGUSR1, how long a step may still take before the stop is given up on and the
    # process ends without a checkpoint (a second SIGTERM ends it at once). Slurm warns 300 s ahead.
    stop_grace_seconds: float = 120.0


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys that name a file or folder: "~" there is the user's home, as in a shell.
PATH_KEYS = ("data.shards", "run.out_dir", "run.resume")


def resolve_config(*, config_file: str | Path | None, overrides: list[str], recorded: bool = False) -> TrainConfig:
    """Defaults, then the YAML file (and its ``base`` chain), then ``section.key=value`` overrides;
    every value checked (``config_rules.validate``; ``recorded``: a run's own config.yaml read again)."""
    values: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        values = read_yaml_chain(Path(config_file))
    for override in overrides:
        section, key, text = parse_override(override)
        values.setdefault(section, {})[key] = text
    return build_config(values, recorded=recorded)


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line with line numbers, without its ``in "<unicode string>"`` (the
    text was read from a file the message names) and its source excerpts."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).replace('in "<unicode string>", ', "").split())
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context:
        where = f" at line {error.context_mark.line + 1}" if error.context_mark is not None else ""
        text += f" ({error.context}{where})"
    return text


def read_yaml_chain(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, dict[str, Any]]:
    """The sections of ``path`` merged over those of its ``base`` (recursively)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: base files form a cycle")
    if path.is_dir() and not _seen:  # a run folder, say, whose config.yaml was meant, or configs/cifar100
        recipes = sorted(found.name for found in path.glob("*.yaml") if found.is_file())
        if (path / "config.yaml").is_file():
            inside = f": its {path / 'config.yaml'}?"
        elif recipes:
            shown = ", ".join(recipes[:8]) + (f" and {len(recipes) - 8} more" if len(recipes) > 8 else "")
            inside = f"; it holds {shown}"
        else:
            inside = ""
        raise ConfigError(f"--config {path}: a folder, not a YAML file{inside}")
    if not path.is_file():
        # A base named by a recipe: which recipe names it, or the user looks for the wrong file.
        missing = "is a folder, not a YAML file" if path.is_dir() else "is not found"
        raise ConfigError(f"{_seen[-1]}: its base file {path} {missing}" if _seen else
                          f"config file not found: {path}")
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(error)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (a YAML config is expected)") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    has_base = "base" in loaded
    base = loaded.pop("base", None)
    if has_base and (not isinstance(base, str) or not base.strip()):
        # A list, number or mapping was a TypeError traceback; an empty text was ignored unsaid.
        raise ConfigError(f"{path}: base: must name one YAML file (a path, relative to this file's folder), got "
                          f"{base!r}")
    merged = read_yaml_chain(path.parent / base, (*_seen, path)) if base else {}
    for section, entries in loaded.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value")
        merged.setdefault(section, {}).update(entries)
    return merged


def parse_override(text: str) -> tuple[str, str, str]:
    """``"optim.base_lr=0.2"`` -> ("optim", "base_lr", "0.2"); the text is read later by the
    field's type (``config_values.coerce``)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value (e.g. optim.base_lr=0.2)")
    return section, key, raw


def build_config(values: dict[str, dict[str, Any]], *, recorded: bool = False) -> TrainConfig:
    """A TrainConfig from nested plain values, checking every section, key, type and value."""
    sections = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    built = {}
    for section, entries in values.items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}; sections are {sorted(sections)}")
        section_type = hints[section]
        known = {f.name for f in dataclasses.fields(section_type)}
        field_types = typing.get_type_hints(section_type)
        checked = {}
        for key, value in entries.items():
            if key not in known:
                raise ConfigError(f"unknown config key {section}.{key}; {section} has {sorted(known)}")
            checked[key] = coerce(value, field_types[key], name=f"{section}.{key}")
            if f"{section}.{key}" in PATH_KEYS and checked[key].startswith("~"):
                # The shell leaves run.out_dir=~/x as it is (no tilde expansion after a key with a
                # dot), and YAML does too: a folder named "~" appeared under the working folder.
                checked[key] = os.path.expanduser(checked[key])
                if checked[key].startswith("~"):  # ~name of no user: it stays as it is
                    user = checked[key][1:].split("/", 1)[0]
                    raise ConfigError(f"{section}.{key}: {checked[key]}: this machine has no user {user!r} whose "
                                      "home folder ~ could name")
        built[section] = section_type(**checked)
    config = TrainConfig(**built)
    validate(config, recorded=recorded)
    return config


def field_names() -> list[str]:
    """Every ``section.key`` of the config, in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    return [f"{section.name}.{entry.name}" for section in dataclasses.fields(TrainConfig)
            for entry in dataclasses.fields(hints[section.name])]


def config_to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Plain nested values (tuples as lists), ready for YAML or JSON."""
    return {section: {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}
            for section, values in dataclasses.asdict(config).items()}


def write_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (readable back with ``--config``), atomically (a kill
    must not leave half of the run's record). How this command resumed is not part of the recipe:
    ``run.resume`` is written as auto and ``run.resume_with_changes`` as false, so that a run
    started from this file does not resume a named checkpoint or take changes unasked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = config_to_dict(config)
    values["run"].update(resume="auto", resume_with_changes=False)
    write_text_atomic(path, yaml.safe_dump(values, sort_keys=False))
