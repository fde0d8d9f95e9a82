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

import importlib

# Imported on first use (PEP 562): the config imports .choices, which needs no torch, and a
# mistyped config value is then reported before torch is loaded.
_HOMES = {"apply_mix": "core", "normalization_affine": "core", "soft_target_cross_entropy": "loss",
          "MODES": "params", "MixParams": "params", "box_lambda": "params", "resolve_mix": "params",
          "MixSampler": "sampler", "mix_targets": "targets", "soft_targets": "targets"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
