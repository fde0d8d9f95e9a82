"""The loader benchmarks' stand-ins keep the torch backend's contract: bench_loader's PIL row
(patched over ``torch_backend._prepare``) and bench_augment's torch row called it with an older
signature and both scripts crashed before printing a figure (a walkthrough). Checked on one JPEG
against what the backend's own ``_prepare`` returns for it; no timing is judged."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_augment import tensor_augment  # noqa: E402
from bench_loader import pillow_prepare, pillow_transform  # noqa: E402

from pipeline.data import torch_backend  # noqa: E402
from pipeline.data.augment import Augmentation  # noqa: E402


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_pil_row_returns_what_the_backend_returns():
    sample = {"jpg": _jpeg(), "cls": b"2", "__key__": "k0"}
    augmentation = Augmentation(image_size=24)
    ours = pillow_prepare(sample, pillow_transform(augmentation, training=True), num_classes=3)
    theirs = torch_backend._prepare(sample, torch_backend._transform(augmentation, training=True), num_classes=3)
    assert [type(value) for value in ours] == [type(value) for value in theirs]
    assert ours[0].shape == theirs[0].shape == (24, 24, 3) and ours[0].dtype == theirs[0].dtype == torch.uint8
    assert ours[1] == theirs[1] == 2 and ours[2]["source"] == theirs[2]["source"] == "k0"


def test_the_pil_row_takes_every_argument_the_backend_passes():
    # The backend's workers call _prepare(..., size_rule=...): the swapped-in function raised TypeError.
    import inspect

    assert inspect.signature(pillow_prepare).parameters.keys() == \
        inspect.signature(torch_backend._prepare).parameters.keys()


def test_the_augment_bench_runs_the_backends_prepare():
    tensor_augment([_jpeg(), _jpeg()])()  # raised a TypeError (num_classes) before


def test_the_header_check_bench_times_both_graphs(capsys):
    """A short run prints both rows and their ratio; both graphs decode the same images (a graph
    that failed or read nothing would not print a rate)."""
    import re

    from bench_header_check import main

    assert main(["--images", "64", "--batch-size", "16", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rates = re.findall(r"^(decode \+ crop \(no header check\)|header check \+ decode \+ crop)\s+(\d+)$", out, re.M)
    assert [name for name, _ in rates] == ["decode + crop (no header check)", "header check + decode + crop"]
    assert all(int(rate) > 0 for _, rate in rates) and re.search(r"^ratio checked / plain: \d\.\d{3}$", out, re.M)


def test_the_header_check_bench_refuses_fewer_images_than_a_batch(capsys):
    import pytest

    from bench_header_check import main

    with pytest.raises(SystemExit) as exit_:
        main(["--images", "8", "--batch-size", "16"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --images must be >= --batch-size (16), got 8: a pass times whole batches")
