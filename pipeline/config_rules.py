"""The value rules of the training config: one entry per field (``RULES``) and the rules that tie
fields together (``CROSS_RULES``). ``validate`` runs them all before anything is built (no
model, loader or process group), so a mistake costs one line, not a set-up and a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .mix.choices import (FEATURE_MODES, PARTNER_CHOICES, PER_CHOICES, SAMPLER_MODES, unread_mode_options,
                          unused_mode_option)

Rule = Callable[[Any], "str | None"]  # the value -> what is wrong with it, or None


def at_least(low: float) -> Rule:
    return lambda value: None if value >= low else f"must be >= {low}, got {_shown(value)}"


def above(low: float) -> Rule:
    return lambda value: None if value > low else f"must be > {low}, got {_shown(value)}"


def between(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Rule:
    def rule(value):
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return None if ok else f"must be in {interval}, got {_shown(value)}"
    return rule


def one_of(choices) -> Rule:
    return lambda value: None if value in choices else f"must be one of {list(choices)}, got {_shown(value)}"


def ordered_pair(low: float, high: float | None = None) -> Rule:
    """(a, b) with low < a <= b (<= high when given)."""
    def rule(value):
        a, b = value
        ok = low < a <= b and (high is None or b <= high)
        bound = f" <= {high}" if high is not None else ""
        return None if ok else f"must be [a, b] with {low} < a <= b{bound}, got {_shown(value)}"
    return rule


def pair_within(low: float, high: float) -> Rule:
    """(a, b) with low <= a <= b <= high."""
    def rule(value):
        a, b = value
        return None if low <= a <= b <= high else f"must be [a, b] with {low} <= a <= b <= {high}, got {_shown(value)}"
    return rule


def each(inner: Rule) -> Rule:
    def rule(values):
        for value in values:
            problem = inner(value)
            if problem:
                return f"every value {problem} (in {_shown(values)})"
        return None
    return rule


def optional(inner: Rule) -> Rule:
    return lambda value: None if value is None else inner(value)


def non_empty(value: str) -> str | None:
    return None if value.strip() else f"must not be empty, got {value!r}"


def non_empty_names(names) -> str | None:
    if not names or not all(name.strip() for name in names):
        return f"must be a non-empty list of layer names, got {list(names)!r}"
    # A layer named twice is drawn twice as often: a weighting nobody asks for by listing it again.
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        return f"names {repeated} more than once (each layer is drawn with equal chance), got {list(names)!r}"
    return None


def known_model(name: str) -> str | None:
    from .models import unknown_model_message

    return unknown_model_message(name)


def resume_choice(value: str) -> str | None:
    from .checkpoint import is_complete_checkpoint, resume_hint

    if value in ("auto", "none") or is_complete_checkpoint(Path(value)):
        return None
    return (f"must be auto, none or a complete checkpoint folder (RUN/checkpoints/epoch-NNNN), got {value!r}"
            f"{resume_hint(Path(value))}")


TYPE_ONLY = None  # booleans: their type is their only rule

RULES: dict[str, Rule | None] = {
    "data.shards": non_empty,
    "data.demo": TYPE_ONLY,
    "data.image_size": at_least(8),
    "data.crop_pct": between(0, 1, low_open=True),
    "data.random_area": ordered_pair(0, 1),
    "data.random_aspect_ratio": ordered_pair(0),
    "data.flip_probability": between(0, 1),
    "data.augmentation": one_of(("imagenet", "cifar")),
    "data.crop_padding": at_least(0),
    "data.eval_split": one_of(("val", "test")),
    "data.mean": each(between(0, 1)),
    "data.std": each(above(0)),
    "data.color_jitter": between(0, 1),
    "data.lighting_std": between(0, 1),
    "model.name": known_model,
    "model.pretrained": TYPE_ONLY,
    "model.channels_last": TYPE_ONLY,
    "model.compile": TYPE_ONLY,
    "model.drop_path_rate": between(0, 1, high_open=True),
    "model.drop_block_rate": between(0, 1, high_open=True),
    "model.shakedrop": TYPE_ONLY,
    "model.zero_init_last": TYPE_ONLY,
    "optim.base_lr": above(0),
    "optim.reference_batch": at_least(1),
    "optim.momentum": between(0, 1, high_open=True),
    "optim.nesterov": TYPE_ONLY,
    "optim.weight_decay": at_least(0),
    "optim.decay_norm_and_bias": TYPE_ONLY,
    "optim.fused": TYPE_ONLY,
    "schedule.epochs": at_least(1),
    "schedule.name": one_of(("step", "cosine")),
    "schedule.milestones": each(at_least(1)),
    "schedule.decay_factor": between(0, 1, low_open=True),
    "schedule.warmup_epochs": at_least(0),
    "schedule.warmup_start_factor": between(0, 1, low_open=True),
    "schedule.min_lr": at_least(0),
    "mix.mode": one_of(SAMPLER_MODES),
    "mix.cutmix_alpha": between(0, 1e6, low_open=True),  # MixSampler's MAX_ALPHA: 1e308 drew lam 0
    "mix.mixup_alpha": between(0, 1e6, low_open=True),
    "mix.prob": between(0, 1),
    "mix.switch_prob": between(0, 1),
    "mix.per": one_of(PER_CHOICES),
    "mix.partner": one_of(PARTNER_CHOICES),
    "mix.cutout_size": optional(at_least(1)),
    "mix.label_smoothing": between(0, 1, high_open=True),
    "mix.feature_layers": non_empty_names,
    "loader.backend": one_of(("dali", "torch", "synthetic")),
    "loader.batch_size": at_least(1),
    "loader.val_batch_size": optional(at_least(1)),
    "loader.num_threads": at_least(1),
    "loader.shuffle_buffer": at_least(1),
    "run.out_dir": non_empty,
    "run.seed": between(0, 2**32 - 1),  # Accelerate's set_seed (numpy's global RNG) takes 32 bits
    "run.mixed_precision": one_of(("auto", "bf16", "no")),
    "run.deterministic": TYPE_ONLY,
    "run.eval_every": at_least(1),
    "run.resume": resume_choice,
    "run.keep_checkpoints": at_least(1),
    "run.resume_with_changes": TYPE_ONLY,
    "run.tensorboard": TYPE_ONLY,
    "run.progress": TYPE_ONLY,
    "run.log_every": at_least(1),
    "run.max_train_steps": optional(at_least(1)),
    "run.stop_grace_seconds": above(0),
}


def _milestones(config) -> tuple[str, str] | None:
    milestones, epochs = list(config.schedule.milestones), config.schedule.epochs
    if milestones != sorted(set(milestones)):
        return "schedule.milestones", f"must be strictly increasing, got {milestones}"
    if config.schedule.name == "step" and milestones and milestones[-1] > epochs:
        # A short try of a recipe (schedule.epochs=2 on CIFAR's 150,225) meets this first: say what to give.
        return "schedule.milestones", (f"must lie before schedule.epochs={epochs} (a decay at or after its end "
                                       f"changes nothing), got {milestones}; give them with schedule.epochs, "
                                       f"{_milestones_example(milestones, epochs)}schedule.milestones=[] for no decay")
    return None


def _milestones_example(milestones: list[int], epochs: int) -> str:
    """``e.g. schedule.milestones=[75,150], or `` with those before the end (else [1]), or ''."""
    within = [m for m in milestones if m < epochs] or ([1] if epochs > 1 else [])
    return f"e.g. schedule.milestones=[{','.join(str(m) for m in within)}], or " if within else ""


def _milestone_at_the_end(config) -> tuple[str, str] | None:
    """A decay at the end of the last epoch (a milestone equal to schedule.epochs) comes after the
    last update: it changes nothing. Refused as ``_milestones`` refuses one past the end."""
    milestones, epochs = list(config.schedule.milestones), config.schedule.epochs
    if config.schedule.name == "step" and milestones and milestones[-1] == epochs:
        return "schedule.milestones", (f"must lie before schedule.epochs={epochs} (a decay at its end changes "
                                       f"nothing), got {milestones}; {_milestones_example(milestones, epochs)}"
                                       "schedule.milestones=[] for no decay")
    return None


def _unused_schedule_options(config) -> tuple[str, str] | None:
    """A step-only or cosine-only value given to the other schedule changes nothing: refused, so
    that schedule.name=cosine on a recipe with milestones says what it leaves out."""
    from .config import ScheduleConfig

    schedule, default = config.schedule, ScheduleConfig()
    if schedule.name == "cosine":
        if schedule.milestones and tuple(schedule.milestones) != default.milestones:
            return "schedule.milestones", (f"schedule.name=cosine decays smoothly and does not use milestones, got "
                                           f"{list(schedule.milestones)}; give schedule.milestones=[] with it")
        if schedule.decay_factor != default.decay_factor:
            return "schedule.decay_factor", (f"schedule.name=cosine does not use it (the step schedule's "
                                             f"multiplier), got {schedule.decay_factor}; give its default "
                                             f"{default.decay_factor}, or use "
                                             "schedule.min_lr for where cosine ends")
    if schedule.name == "step" and schedule.min_lr != default.min_lr:
        return "schedule.min_lr", (f"schedule.name=step does not use it (where cosine ends), got {schedule.min_lr}; "
                                   f"give its default {default.min_lr}, or set schedule.name=cosine")
    return None


def _unused_mix_options(config) -> tuple[str, str] | None:
    mix = config.mix
    return unused_mode_option(mix.mode, said=f"mix.mode={mix.mode}", key=lambda name: f"mix.{name}",
                              cutmix_alpha=mix.cutmix_alpha, mixup_alpha=mix.mixup_alpha, switch_prob=mix.switch_prob,
                              prob=mix.prob, per=mix.per, partner=mix.partner)


def _unused_data_options(config) -> tuple[str, str] | None:
    """Crop options of the other augmentation: ``imagenet`` never pads, ``cifar`` takes a fixed
    crop of the padded image (no random area or aspect) and evaluates the image as it is."""
    from .config import DataConfig

    data, default = config.data, DataConfig()
    if data.augmentation == "imagenet" and data.crop_padding != default.crop_padding:
        return "data.crop_padding", (f"data.augmentation=imagenet does not pad (only cifar does), so "
                                     f"{data.crop_padding} would change nothing; give its default "
                                     f"{default.crop_padding}")
    if data.augmentation == "cifar":
        for key in ("random_area", "random_aspect_ratio", "crop_pct"):
            if getattr(data, key) != getattr(default, key):
                return f"data.{key}", (f"data.augmentation=cifar does not use it (a random crop of the padded "
                                       f"image, the test images as they are), so {_shown(getattr(data, key))} would "
                                       f"change nothing; give its default {_shown(getattr(default, key))}")
    return None


def _warmup(config) -> tuple[str, str] | None:
    schedule = config.schedule
    if schedule.warmup_epochs > schedule.epochs:
        return "schedule.warmup_epochs", (f"must be at most schedule.epochs={schedule.epochs}, "
                                          f"got {schedule.warmup_epochs}")
    return None


# Upper bounds past which a start failed later (a traceback, a crash), lower for crop_pct: val images
# are resized to image_size / crop_pct. Intent rules: a run recorded with a value beyond them trained.
SIZE_BOUNDS = (("data.image_size", between(8, 2048)),  # the evaluator's; 10^6 px: the allocator's traceback
               ("data.crop_pct", between(0.25, 1)),  # 1e-9: an overflow at the first evaluation
               ("loader.shuffle_buffer", between(1, 2**20)),  # samples per rank: 2^31 crashed DALI, 10^8 hung
               # [500, 1000]: the torch backend's fallback crop of a small image had no rows (a traceback);
               # the loader's own bound (pipeline/data/augment.py ASPECT_BOUNDS: importing it imports torch)
               ("data.random_aspect_ratio", pair_within(0.1, 10.0)))


def _size_bounds(config) -> tuple[str, str] | None:
    for name, rule in SIZE_BOUNDS:
        section, key = name.split(".")
        problem = rule(getattr(getattr(config, section), key))
        if problem:
            return name, problem
    return None


def _milestones_in_warmup(config) -> tuple[str, str] | None:
    schedule = config.schedule
    early = [m for m in schedule.milestones if m < schedule.warmup_epochs]
    if schedule.name == "step" and early:
        # The warm-up ramps to base_lr and the step decays follow it: a decay inside it came all at
        # once at its end, or never (a warm-up to the last epoch), without a word (walkthrough).
        return "schedule.milestones", (f"must not lie inside the warm-up (schedule.warmup_epochs="
                                       f"{schedule.warmup_epochs}), got {list(schedule.milestones)}: a decay there "
                                       "would come at its end, or never; move them after it or shorten the warm-up")
    return None


def _crop_padding(config) -> tuple[str, str] | None:
    data = config.data
    if data.augmentation == "cifar" and data.crop_padding >= data.image_size:
        # A crop could then hold padding only: 10^6 px trained on black images (loss ln 10) unsaid.
        return "data.crop_padding", (f"must be less than data.image_size={data.image_size} (a crop could hold no "
                                     f"pixel of the image), got {data.crop_padding}; CIFAR's is 4 at 32 px")
    return None


def _unused_warmup_factor(config) -> tuple[str, str] | None:
    from .config import ScheduleConfig

    factor = config.schedule.warmup_start_factor
    if config.schedule.warmup_epochs == 0 and factor != ScheduleConfig().warmup_start_factor:
        return "schedule.warmup_start_factor", (f"without a warmup (schedule.warmup_epochs=0) it changes nothing, "
                                                f"got {factor}; give schedule.warmup_epochs with it, or its default "
                                                f"{ScheduleConfig().warmup_start_factor}")
    return None


def _min_lr(config) -> tuple[str, str] | None:
    if config.schedule.name == "cosine" and config.schedule.min_lr >= config.optim.base_lr:
        return "schedule.min_lr", f"must be below optim.base_lr={config.optim.base_lr}, got {config.schedule.min_lr}"
    return None


def _nesterov(config) -> tuple[str, str] | None:
    if config.optim.nesterov and config.optim.momentum == 0:
        return "optim.nesterov", "true needs optim.momentum > 0 (or set optim.nesterov=false)"
    return None


def _cutout(config) -> tuple[str, str] | None:
    size, image = config.mix.cutout_size, config.data.image_size
    if config.mix.mode == "cutout" and size is None:
        return "mix.cutout_size", "mix.mode=cutout needs a box side in pixels"
    if size is not None and size > image:
        return "mix.cutout_size", f"must be at most data.image_size={image}, got {size}"
    if size is not None and config.mix.mode not in ("cutout", "mixup", "manifold_mixup"):
        return "mix.cutout_size", (f"Cutout goes alone (mix.mode=cutout) or before mixup / manifold_mixup, "
                                   f"not with mix.mode={config.mix.mode}; unset it (null)")
    if size is not None and config.mix.mode == "mixup" and config.mix.per != "batch":
        # The sampler's rule, found here rather than as a traceback once the model and loaders were built.
        return "mix.per", f"Cutout + mixup mixes whole batches: needs batch, got {config.mix.per!r}"
    return None


def _mix_batch(config) -> tuple[str, str] | None:
    mode, batch = config.mix.mode, config.loader.batch_size
    if mode in ("cutmix", "mixup", "cutmix_or_mixup", *FEATURE_MODES) and batch < 2:
        return "loader.batch_size", f"mix.mode={mode} mixes each sample with a partner: needs >= 2, got {batch}"
    if config.mix.partner == "flip" and mode != "none" and batch % 2:
        return "loader.batch_size", f"mix.partner=flip pairs sample i with B-1-i: needs an even batch, got {batch}"
    return None


def _feature_layers(config) -> tuple[str, str] | None:
    if config.mix.mode not in FEATURE_MODES:
        from .config import MixConfig

        # Layers given to an input-level mode (feature_layers added to the cutmix recipe, mix.mode
        # forgotten) trained image CutMix without a word, a layer that does not exist included.
        if tuple(config.mix.feature_layers) != MixConfig().feature_layers:
            return "mix.feature_layers", (f"only {' and '.join(FEATURE_MODES)} mix at layers; mix.mode="
                                          f"{config.mix.mode} mixes the images: set mix.mode=feature_cutmix (or "
                                          "manifold_mixup), or leave mix.feature_layers out")
        return None
    if config.mix.per != "batch":
        return "mix.per", f"mix.mode={config.mix.mode} mixes one layer per batch: needs batch, got {config.mix.per!r}"
    from .mix.feature import model_layer_shapes  # torch and timm: only when a feature-level mode is asked for

    known = list(model_layer_shapes(config.model.name, image_size=config.data.image_size))
    unknown = [name for name in config.mix.feature_layers if name not in known]
    if unknown:
        return "mix.feature_layers", f"{config.model.name} has no layers {unknown}; it has {known}"
    return None


def _feature_box_size(config) -> tuple[str, str] | None:
    """The official box (cut // 2 on either side of its centre) is empty on a grid of side 2 or
    less: a feature_cutmix layer that small never mixed, without a word (resnet10t's layer3 and
    layer4 at 32 px; walkthrough). After _feature_layers: the layers are the model's."""
    if config.mix.mode != "feature_cutmix":
        return None
    from .mix.feature import model_layer_shapes  # cached: _feature_layers built the model

    shapes = model_layer_shapes(config.model.name, image_size=config.data.image_size)
    small = [name for name in config.mix.feature_layers if min(shapes[name]) <= 2]
    if not small:
        return None
    sizes = ", ".join(f"{name} {h}x{w}" for name, (h, w) in shapes.items())
    return "mix.feature_layers", (f"{', '.join(small)} of {config.model.name} at data.image_size="
                                  f"{config.data.image_size} {'is' if len(small) == 1 else 'are'} too small for a "
                                  f"CutMix box (it is empty on a side of 2 or less, so the layer would never mix); "
                                  f"the layers: {sizes}")


def _model_options(config) -> tuple[str, str] | None:
    from .models import model_option_problem

    model = config.model
    found = model_option_problem(model.name, shakedrop=model.shakedrop, drop_block_rate=model.drop_block_rate,
                                 drop_path_rate=model.drop_path_rate, zero_init_last=model.zero_init_last)
    if found is None and model.shakedrop and model.drop_path_rate > 0:
        return "model.drop_path_rate", ("ShakeDrop (model.shakedrop=true) already drops residual branches: "
                                        "use one of them")
    return found


def _pretrained(config) -> tuple[str, str] | None:
    """A model timm has no weights for (PyramidNet, many others): the start failed, after the
    set-up, in timm's RuntimeError. Whether the weights can be fetched is the start's to find
    (create_model says it in one line: a compute node without internet)."""
    import timm

    if not config.model.pretrained or timm.is_model_pretrained(config.model.name):
        return None
    return "model.pretrained", (f"timm has no pretrained weights for {config.model.name}; set "
                                "model.pretrained=false (or choose a model timm.list_models(pretrained=True) names)")


def _input_size(config) -> tuple[str, str] | None:
    from .models import input_size_problem

    found = input_size_problem(config.model.name, image_size=config.data.image_size)
    if found is None:
        return None
    return "data.image_size", (f"{config.model.name} does not take {config.data.image_size} px images ({found}); "
                               "train it at the size it is built for, or choose another model")


CROSS_RULES = (_milestones, _milestone_at_the_end, _size_bounds, _crop_padding, _unused_schedule_options, _warmup,
               _milestones_in_warmup, _unused_warmup_factor, _min_lr, _nesterov, _unused_data_options, _cutout,
               _unused_mix_options, _mix_batch, _input_size, _feature_layers, _feature_box_size, _model_options,
               _pretrained)
# Rules against a value that would train as if it were not there, or that later versions found to
# fail: a new command's mistake. A run's recorded config.yaml (read again to evaluate it) skips them:
# runs made before a rule existed stay evaluable, and what they trained with is what they trained with.
INTENT_RULES = (_milestone_at_the_end, _size_bounds, _milestones_in_warmup, _unused_schedule_options,
                _unused_warmup_factor, _unused_data_options, _unused_mix_options, _feature_box_size, _pretrained)


def unread_keys(config) -> frozenset[str]:
    """The settings that ``config``'s mode, augmentation and schedule never read (those the intent
    rules keep at their defaults): a resume does not compare them, as no value there trains."""
    keys = {f"mix.{name}" for name in unread_mode_options(config.mix.mode)}
    if config.data.augmentation == "imagenet":
        keys.add("data.crop_padding")
    else:
        keys |= {"data.random_area", "data.random_aspect_ratio", "data.crop_pct"}
    cosine = config.schedule.name == "cosine"
    keys |= {"schedule.milestones", "schedule.decay_factor"} if cosine else {"schedule.min_lr"}
    if config.schedule.warmup_epochs == 0:
        keys.add("schedule.warmup_start_factor")
    return frozenset(keys)


# Rules that import torch or timm (seconds): they run after all the others, field and cross-field
# rules alike, so that any other mistake is reported before they load.
IMPORTING_RULES = ("model.name", "run.resume")
IMPORTING_CROSS_RULES = (_input_size, _feature_layers, _feature_box_size, _model_options, _pretrained)


def validate(config, *, recorded: bool = False) -> None:
    """Every rule of every field, then the cross-field rules (those that import torch or timm
    last); the first problem is a ConfigError naming the key and the value. ``recorded``: a run's
    own config.yaml, read again, without the ``INTENT_RULES``."""
    fields = [name for name in RULES if name not in IMPORTING_RULES]
    skipped = INTENT_RULES if recorded else ()
    crosses = [rule for rule in CROSS_RULES if rule not in IMPORTING_CROSS_RULES and rule not in skipped]
    importing = [rule for rule in IMPORTING_CROSS_RULES if rule not in skipped]
    for check in (*fields, *crosses, *IMPORTING_RULES, *importing):
        found = _field_problem(config, check) if isinstance(check, str) else check(config)
        if found:
            raise ConfigError(f"{found[0]}: {found[1]}")


def _field_problem(config, name: str) -> tuple[str, str] | None:
    rule = RULES[name]
    problem = rule(lookup(config, name)) if rule is not None else None
    return (name, problem) if problem else None


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def lookup(config, name: str) -> Any:
    """The value of ``section.key``."""
    section, key = name.split(".")
    return getattr(getattr(config, section), key)
