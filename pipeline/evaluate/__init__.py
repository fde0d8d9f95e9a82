"""Evaluation: the training loop's top-1/top-5 error (``evaluate``) and the paper's evaluations
behind ``python -m pipeline.evaluate`` (classification, CAM localization, occlusion,
in-between-class samples, FGSM, out-of-distribution detection)."""

import importlib

__all__ = ["count_correct", "evaluate", "loss_sum", "normalize_batch"]


def __getattr__(name: str):
    """The training loop's evaluation, imported on first use (PEP 562): ``python -m
    pipeline.evaluate`` checks its arguments before torch is loaded."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".classify", __name__), name)
    globals()[name] = value
    return value
