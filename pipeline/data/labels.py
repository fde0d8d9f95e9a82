"""Class labels from the ``.cls`` members: ASCII decimal text (b"417"), padded with zero bytes
to the batch's longest label, parsed for the whole batch at once (no per-sample Python loop), or
one sample's at a time (the torch backend, the preview). A label that is not decimal text, or not
a class of the manifest, is a ``LoaderError`` naming the first such sample's shard and key where
the caller can say where a row came from (``source``: row -> "SHARD.tar: sample KEY")."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .checks import LoaderError

Source = Optional[Callable[[int], str]]


def parse_ascii_labels(padded: np.ndarray, *, source: Source = None, folder: Path | None = None) -> np.ndarray:
    """int64 labels from a ``[batch, width]`` uint8 array of ASCII digits right-padded with 0;
    ``folder``: the shards' folder, for the ``verify`` command an error names."""
    if padded.ndim != 2 or padded.dtype != np.uint8:
        raise ValueError(f"expected a [batch, width] uint8 array, got {padded.dtype} {padded.shape}")
    present = padded != 0
    digits = padded.astype(np.int64) - ord("0")
    lengths = present.sum(axis=1)
    # Per row: a byte that is no digit, a zero byte before a digit (text after padding), or nothing.
    bad = (present & ((digits < 0) | (digits > 9))).any(axis=1) | (present[:, 1:] & ~present[:, :-1]).any(axis=1)
    bad |= lengths == 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise not_decimal(bytes(padded[row]).rstrip(b"\0"), where=source(row) if source else None, folder=folder)
    # Digit j of a row of length L has weight 10**(L-1-j); padding gets weight 0.
    exponents = lengths[:, None] - 1 - np.arange(padded.shape[1])[None, :]
    weights = np.where(present, 10 ** np.clip(exponents, 0, None), 0)
    return (np.where(present, digits, 0) * weights).sum(axis=1)


def check_label_range(labels: np.ndarray, *, num_classes: int, allow_padding: bool, source: Source = None) -> None:
    """Every label in ``[0, num_classes)`` (and -1, the validation padding mark, when allowed).
    Done on the host as the loader parses the labels: on the device it would be a sync per step."""
    if labels.size == 0:
        return
    outside = ((labels < 0) | (labels >= num_classes)) & ~((labels == -1) & allow_padding)
    if outside.any():
        bad = sorted({int(v) for v in labels[outside]})[:5]
        first = f" (the first: {source(int(np.flatnonzero(outside)[0]))})" if source else ""
        raise LoaderError(f"labels {bad} outside [0, {num_classes}) in the shards' .cls members{first}: the "
                          f"manifest lists {num_classes} classes; rebuild the shards (python -m shards build) or "
                          "check them (python -m shards verify)")


def sample_label(sample: dict, *, num_classes: int) -> int:
    """A webdataset sample's ``.cls`` (ASCII decimal text), checked to be a class of the manifest."""
    text, where = sample.get("cls", b""), sample_place(sample)
    if not text.isdigit():  # bytes.isdigit: ASCII digits only, and not empty
        raise not_decimal(text, where=where, folder=Path(sample.get("__url__", ".")).parent)
    label = int(text)
    check_label_range(np.array([label]), num_classes=num_classes, allow_padding=False, source=lambda _: where)
    return label


def sample_place(sample: dict) -> str:
    """"SHARD.tar: sample KEY" of a webdataset sample."""
    return f"{sample.get('__url__', 'a shard')}: sample {sample['__key__']}"


def dali_place(source_info: str) -> str:
    """"SHARD.tar: sample KEY" of DALI's webdataset source info ("SHARD.tar:OFFSET:KEY.cls");
    what there is, for a source info of another form."""
    parts = source_info.rsplit(":", 2)
    if len(parts) != 3:  # not the reader's form: say what there is
        return f"a sample of {source_info or 'a shard'}"
    return f"{parts[0]}: sample {parts[2].rsplit('.', 1)[0]}"


def not_decimal(text: bytes, *, where: str | None, folder: Path | None) -> LoaderError:
    if where is None:
        return LoaderError(f"a .cls member ({text!r}) is not an ASCII decimal number")
    verify = f" (python -m shards verify {folder} finds every such shard)" if folder is not None else ""
    return LoaderError(f"{where}: label {text!r} is not an ASCII decimal number: the shard is damaged{verify}")
