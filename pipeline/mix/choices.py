"""The sampler's choices (modes, per, partner), without torch: the config checks them before
anything heavy is imported, so a mistyped value is reported in a fraction of a second."""

SAMPLER_MODES = ("cutmix", "mixup", "cutmix_or_mixup", "cutout", "none", "feature_cutmix", "manifold_mixup")
# Feature-level modes: the operation, done on the output of a layer drawn per batch from `layers`
# ("input" = the image, as the image-level mode): Feature CutMix (the CutMix paper's Table 3) and
# Manifold Mixup (Verma et al. 2019). The box is drawn on that layer's grid (`layer_shapes`).
FEATURE_MODES = {"feature_cutmix": "cutmix", "manifold_mixup": "mixup"}
INPUT_LAYER = "input"
# With `cutout_size`, these modes first cut a hole in every image (Cutout + Mixup, Cutout +
# Manifold Mixup: rows of the CutMix paper's CIFAR table), then mix.
WITH_CUTOUT = ("mixup", "manifold_mixup")
PER_CHOICES = ("batch", "elem")
PARTNER_CHOICES = ("permutation", "flip", "roll")

# Which modes draw from each mode-specific option, and the option's default (the sampler's and the
# config's): a value other than the default given to a mode that never reads it is a mistake
# (mixup_alpha=0.2 added to a cutmix recipe trained CutMix at alpha 1 without a word).
_PAIRED = ("cutmix", "mixup", "cutmix_or_mixup", "feature_cutmix", "manifold_mixup")  # each sample has a partner
_MODE_OPTIONS = {
    "cutmix_alpha": (("cutmix", "cutmix_or_mixup", "feature_cutmix"), 1.0),
    "mixup_alpha": (("mixup", "cutmix_or_mixup", "manifold_mixup"), 1.0),
    "switch_prob": (("cutmix_or_mixup",), 0.5),
    "prob": ((*_PAIRED, "cutout"), 1.0),
    "per": ((*_PAIRED, "cutout"), "batch"),
    "partner": (_PAIRED, "permutation"),
}


def unused_mode_option(mode: str, *, said: str, key=str, **values) -> tuple[str, str] | None:
    """Those of ``values`` (cutmix_alpha, mixup_alpha, switch_prob, prob, per, partner) set away
    from their defaults for a ``mode`` that does not read them, as (their names, why), all at once:
    a recipe switched to another mode (mix.mode=none over a Cutout recipe) was refused one of them
    at a time (walkthrough: three tries). None when every one is used or left.
    ``said``: how the caller's user gave the mode (``mix.mode=cutmix``, ``--mode cutmix``); ``key``:
    an option's name as that user gives it (``mix.prob``, ``--prob``)."""
    unused = [(name, value, *_MODE_OPTIONS[name]) for name, value in values.items()
              if mode not in _MODE_OPTIONS[name][0] and value != _MODE_OPTIONS[name][1]]
    if not unused:
        return None
    if len(unused) == 1:
        [(name, value, modes, default)] = unused
        return key(name), (f"{said} does not use it (only {', '.join(modes)} do), so {value} would change "
                           f"nothing; give its default {default} or a mode that uses it")
    values_given = " and ".join(str(value) for _, value, _, _ in unused)
    defaults = " ".join(f"{key(name)}={default}" for name, _, _, default in unused)
    return ", ".join(key(name) for name, *_ in unused), (
        f"{said} uses none of them, so {values_given} would change nothing; give their defaults ({defaults}) "
        "or a mode that uses them")


def unread_mode_options(mode: str) -> tuple[str, ...]:
    """The mode-specific options (``_MODE_OPTIONS``) that ``mode`` never reads."""
    return tuple(name for name, (modes, _) in _MODE_OPTIONS.items() if mode not in modes)


def mix_words(mode: str, *, cutout_size: int | None, label_smoothing: float, feature_layers, **values) -> str:
    """The start line's account of the mixing: the mode and only the values it reads
    (``values``: the mode-specific options of ``_MODE_OPTIONS``), e.g. ``mix cutmix (cutmix_alpha 1,
    prob 0.5, per batch, partner permutation)``. The settings a recipe or the demo carries (its
    prob 0.5) were in config.yaml only (walkthrough: mix.mode=mixup over the demo mixed half the
    batches without a word)."""
    read = [f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
            for name, value in values.items() if mode in _MODE_OPTIONS[name][0]]
    if cutout_size is not None:  # cutout, or Cutout + Mixup / Manifold Mixup
        read.insert(0, f"cutout_size {cutout_size}")
    if mode in FEATURE_MODES:
        read.append(f"feature_layers {','.join(feature_layers)}")
    words = "no mixing" if mode == "none" else f"mix {mode} ({', '.join(read)})"
    return words + (f", label smoothing {label_smoothing:g}" if label_smoothing else "")
