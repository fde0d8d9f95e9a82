"""Batch mixing between the loader and the model: CutMix, Mixup, Cutout, normalization, soft targets.

    sampler = MixSampler(mode="cutmix", cutmix_alpha=1.0, prob=1.0, seed=seed, rank=rank)
    params = sampler.sample(batch_size=B, height=H, width=W)       # the randomness, on the CPU
    images, targets = apply_mix(uint8_nhwc, labels, params=params, mean=MEAN, std=STD,
                                num_classes=1000, label_smoothing=0.1, out_dtype=torch.bfloat16)
    loss = soft_target_cross_entropy(model(images), targets)

On CUDA `apply_mix` is one Triton kernel (read uint8 once, paste/blend/zero, normalize, cast,
store channels-last, write soft targets); elsewhere it runs the plain PyTorch reference. Both
compute the same function. `MixParams` can be written by hand to inject a box, lambda or partner.
The host side of a step (draw, pack, a copy per 16 steps, launch) reads no device value and
allocates no pinned memory (rows.py, staging.py).
"""

from .core import apply_mix, normalization_affine
from .loss import soft_target_cross_entropy
from .params import MODES, MixParams, box_lambda, resolve_mix
from .sampler import MixSampler
from .targets import mix_targets, soft_targets

__all__ = [
    "MODES",
    "MixParams",
    "MixSampler",
    "apply_mix",
    "box_lambda",
    "normalization_affine",
    "resolve_mix",
    "mix_targets",
    "soft_target_cross_entropy",
    "soft_targets",
]
