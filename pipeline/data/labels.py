"""Class labels from the ``.cls`` members: ASCII decimal text (b"417"), padded with zero bytes
to the batch's longest label, parsed for the whole batch at once (no per-sample Python loop)."""

from __future__ import annotations

import numpy as np


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
