"""Class labels from the ``.cls`` members: ASCII decimal text (b"417"), padded with zero bytes
to the batch's longest label, parsed for the whole batch at once (no per-sample Python loop)."""

from __future__ import annotations

import numpy as np

from .checks import LoaderError


def parse_ascii_labels(padded: np.ndarray) -> np.ndarray:
    """int64 labels from a ``[batch, width]`` uint8 array of ASCII digits right-padded with 0."""
    if padded.ndim != 2 or padded.dtype != np.uint8:
        raise ValueError(f"expected a [batch, width] uint8 array, got {padded.dtype} {padded.shape}")
    present = padded != 0
    digits = padded.astype(np.int64) - ord("0")
    if np.any(present & ((digits < 0) | (digits > 9))) or np.any(present[:, 1:] & ~present[:, :-1]):
        bad = [bytes(row).rstrip(b"\0") for row in padded][:4]
        raise ValueError(f".cls members are not ASCII decimal numbers (e.g. {bad})")
    lengths = present.sum(axis=1)
    if np.any(lengths == 0):
        raise ValueError("a .cls member is empty")
    # Digit j of a row of length L has weight 10**(L-1-j); padding gets weight 0.
    exponents = lengths[:, None] - 1 - np.arange(padded.shape[1])[None, :]
    weights = np.where(present, 10 ** np.clip(exponents, 0, None), 0)
    return (np.where(present, digits, 0) * weights).sum(axis=1)


def check_label_range(labels: np.ndarray, *, num_classes: int, allow_padding: bool) -> None:
    """Every label in ``[0, num_classes)`` (and -1, the validation padding mark, when allowed).
    Done on the host as the loader parses the labels: on the device it would be a sync per step."""
    if labels.size == 0:
        return
    real = labels[labels != -1] if allow_padding else labels
    if real.size and (real.min() < 0 or real.max() >= num_classes):
        bad = sorted({int(v) for v in real if not 0 <= v < num_classes})[:5]
        raise LoaderError(f"labels {bad} outside [0, {num_classes}) in the shards' .cls members: the manifest lists "
                          f"{num_classes} classes; rebuild the shards (python -m shards build) or check them "
                          "(python -m shards verify)")
