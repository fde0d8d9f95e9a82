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
