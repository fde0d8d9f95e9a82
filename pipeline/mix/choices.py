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


def unused_mode_option(mode: str, *, said: str, **values) -> tuple[str, str] | None:
    """The first of ``values`` (cutmix_alpha, mixup_alpha, switch_prob, prob, per, partner) set
    away from its default for a ``mode`` that does not read it, as (name, why); None when every
    one is used or left.
    ``said``: how the caller's user gave the mode (``mix.mode=cutmix``, ``--mode cutmix``)."""
    for name, value in values.items():
        modes, default = _MODE_OPTIONS[name]
        if mode not in modes and value != default:
            return name, (f"{said} does not use it (only {', '.join(modes)} do), so {value} would change nothing; "
                          f"give its default {default} or a mode that uses it")
    return None


def unread_mode_options(mode: str) -> tuple[str, ...]:
    """The mode-specific options (``_MODE_OPTIONS``) that ``mode`` never reads."""
    return tuple(name for name, (modes, _) in _MODE_OPTIONS.items() if mode not in modes)
