"""The training config: one typed dataclass per section, YAML recipes over the defaults, then
``section.key=value`` overrides. Unknown keys and wrong types are errors that name the key.

    config = resolve_config(config_file="configs/imagenet1k/resnet50_cutmix.yaml",
                            overrides=["optim.base_lr=0.2", "run.out_dir=runs/x"])

A YAML file may start with ``base: other.yaml`` (relative to itself): the recipes are a small base
plus deltas. The defaults below are the paper's ImageNet ResNet-50 recipe without mixing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError
from .mix.sampler import PARTNER_CHOICES, PER_CHOICES, SAMPLER_MODES


@dataclass
class DataConfig:
    shards: str = "data/imagenet1k"  # folder with train.json/val.json and their tars (python -m shards build)
    demo: bool = False  # build the scikit-learn digits into `shards` first when they are missing
    image_size: int = 224  # train crop and val centre crop side, pixels
    crop_pct: float = 0.875  # val: resize the shorter side to image_size / crop_pct, then centre crop
    random_area: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (Inception crop)
    random_aspect_ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # RandomResizedCrop aspect range
    flip_probability: float = 0.5  # horizontal flip of train images
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # normalization, [0, 1] units (ImageNet)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # normalization, [0, 1] units (ImageNet)


@dataclass
class ModelConfig:
    name: str = "resnet50"  # any timm model name (timm.list_models())
    pretrained: bool = False  # start from timm's pretrained weights (downloads; classifier re-initialized)
    channels_last: bool = True  # NHWC memory format: what tensor cores and the mix kernel want
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    drop_path_rate: float = 0.0  # stochastic depth, for models that support it (0 = off, the paper's ResNet)


@dataclass
class OptimConfig:
    base_lr: float = 0.1  # lr at a global batch of reference_batch; scaled linearly with the real one
    reference_batch: int = 256  # lr = base_lr * global_batch / reference_batch (Goyal et al.)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum (the paper's code)
    weight_decay: float = 1e-4  # L2 via SGD's weight_decay
    decay_norm_and_bias: bool = True  # False: no weight decay on norm weights and biases (1-d params)


@dataclass
class ScheduleConfig:
    epochs: int = 300  # training epochs
    name: str = "step"  # "step" (x decay_factor at milestones, the paper) or "cosine"
    milestones: tuple[int, ...] = (75, 150, 225)  # step: epochs at which lr is multiplied by decay_factor
    decay_factor: float = 0.1  # step: the multiplier at each milestone
    warmup_epochs: float = 0.0  # linear warmup length (both schedules); 0 = none
    warmup_start_factor: float = 0.1  # warmup starts at this fraction of the lr
    min_lr: float = 0.0  # cosine: the lr it decays to


@dataclass
class MixConfig:
    mode: str = "none"  # cutmix, mixup, cutmix_or_mixup, cutout or none (pipeline.mix)
    cutmix_alpha: float = 1.0  # lam ~ Beta(alpha, alpha) for CutMix
    mixup_alpha: float = 1.0  # lam ~ Beta(alpha, alpha) for Mixup
    prob: float = 1.0  # probability that a batch (sample) is mixed at all
    switch_prob: float = 0.5  # cutmix_or_mixup: probability of CutMix
    per: str = "batch"  # "batch" (one lambda and box per batch, the paper) or "elem"
    partner: str = "permutation"  # permutation (the paper), flip (timm) or roll (torchvision)
    cutout_size: Optional[int] = None  # cutout: box side in pixels
    label_smoothing: float = 0.0  # applied to each one-hot before mixing (timm's convention)


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
    mixed_precision: str = "bf16"  # "bf16", "no" or "auto" (bf16 on CUDA, full precision elsewhere)
    deterministic: bool = False  # torch deterministic algorithms (exact resume on CPU; slower on GPU)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    resume: str = "auto"  # "auto" (newest valid checkpoint in out_dir, if any), "none", or a checkpoint folder
    keep_checkpoints: int = 2  # newest checkpoints kept in out_dir/checkpoints
    tensorboard: bool = False  # log through Accelerate's TensorBoard tracker into out_dir/tensorboard
    progress: bool = True  # tqdm bar on the main process
    log_every: int = 10  # steps between progress updates (each reads the loss: a device sync)
    max_train_steps: Optional[int] = None  # cap on steps per epoch (smoke tests, benchmarks); None = all


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    run: RunConfig = field(default_factory=RunConfig)


def resolve_config(*, config_file: str | Path | None, overrides: list[str]) -> TrainConfig:
    """Defaults, then the YAML file (and its ``base`` chain), then ``section.key=value`` overrides."""
    values: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        values = read_yaml_chain(Path(config_file))
    for override in overrides:
        section, key, value = parse_override(override)
        values.setdefault(section, {})[key] = value
    return build_config(values)


def read_yaml_chain(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, dict[str, Any]]:
    """The sections of ``path`` merged over those of its ``base`` (recursively)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: base files form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    merged = read_yaml_chain(path.parent / base, (*_seen, path)) if base else {}
    for section, entries in loaded.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value")
        merged.setdefault(section, {}).update(entries)
    return merged


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.base_lr=0.2"`` -> ("optim", "base_lr", 0.2); the value is parsed as YAML."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value (e.g. optim.base_lr=0.2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return section, key, value


def build_config(values: dict[str, dict[str, Any]]) -> TrainConfig:
    """A TrainConfig from nested plain values, checking every section, key and type."""
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
        built[section] = section_type(**checked)
    config = TrainConfig(**built)
    validate(config)
    return config


def coerce(value: Any, expected: Any, *, name: str) -> Any:
    """``value`` checked against the annotation ``expected`` (ints pass as floats, lists as tuples)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name=name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(item, args[0], name=name) for item in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(item, arg, name=name) for item, arg in zip(value, args))
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected in (int, str) and isinstance(value, expected) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{name}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")


CHOICES = {
    "schedule.name": ("step", "cosine"),
    "mix.mode": SAMPLER_MODES,
    "mix.per": PER_CHOICES,
    "mix.partner": PARTNER_CHOICES,
    "loader.backend": ("dali", "torch", "synthetic"),
    "run.mixed_precision": ("bf16", "no", "auto"),
}
POSITIVE = ("data.image_size", "loader.batch_size", "loader.num_threads", "schedule.epochs", "run.eval_every",
            "run.keep_checkpoints", "run.log_every", "optim.reference_batch")


def validate(config: TrainConfig) -> None:
    """Value checks that types cannot express, each naming its key."""
    for name, choices in CHOICES.items():
        value = lookup(config, name)
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {list(choices)}, got {value!r}")
    for name in POSITIVE:
        if lookup(config, name) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {lookup(config, name)}")
    if config.optim.base_lr <= 0:
        raise ConfigError(f"optim.base_lr: must be > 0, got {config.optim.base_lr}")
    if config.mix.mode == "cutout" and config.mix.cutout_size is None:
        raise ConfigError("mix.cutout_size: mix.mode=cutout needs a box side in pixels")
    if list(config.schedule.milestones) != sorted(config.schedule.milestones):
        raise ConfigError(f"schedule.milestones: must be increasing, got {list(config.schedule.milestones)}")


def lookup(config: TrainConfig, name: str) -> Any:
    """The value of ``section.key``."""
    section, key = name.split(".")
    return getattr(getattr(config, section), key)


def config_to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Plain nested values (tuples as lists), ready for YAML or JSON."""
    return {section: {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}
            for section, values in dataclasses.asdict(config).items()}


def write_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (readable back with ``--config``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
