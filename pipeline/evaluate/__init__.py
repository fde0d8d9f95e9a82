"""Evaluation: the training loop's top-1/top-5 error (``evaluate``) and the paper's evaluations
behind ``python -m pipeline.evaluate`` (classification, CAM localization, occlusion,
in-between-class samples, FGSM, out-of-distribution detection)."""

from .classify import count_correct, evaluate, loss_sum, normalize_batch

__all__ = ["count_correct", "evaluate", "loss_sum", "normalize_batch"]
