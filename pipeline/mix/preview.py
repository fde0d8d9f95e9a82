"""A picture of what the mixing does: a grid of one mixed batch with each image's label weights.

For people, not for speed: the first samples of a split are read from our shards as the torch
backend reads them (`<split>.json` lists the `<split>-NNNNNN.tar` files, each sample a `<key>.jpg`
or `.png` and a `<key>.cls`), decoded, centre-cropped and resized with PIL, and stacked into the
uint8 NHWC batch that the loader would deliver. A damaged shard is a `LoaderError` naming it and
the sample, never a traceback and never a batch quietly made of other samples.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import shutil
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..data.checks import LoaderError, SplitShards, load_split_shards
from ..data.labels import sample_label
from ..data.torch_backend import read_range
from .preview_limits import DEFAULT_NAME

# timm's IMAGENET_DEFAULT_MEAN / _STD, written out: importing timm pulls in torchvision.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_shards(shards_dir: Path, *, split: str) -> SplitShards:
    """The split's shards as its manifest lists them, each present with the manifest's size (a
    truncated tar is caught here); a LoaderError starting with 'shards_dir:' otherwise."""
    try:
        # Only the tars are read: the DALI indexes need not be checked.
        return load_split_shards(shards_dir, split, check_indexes=False)
    except LoaderError as error:
        raise LoaderError(f"shards_dir: {error}") from None


def load_preview_batch(shards_dir: Path, *, split: str, batch_size: int, size: int) -> tuple[Tensor, Tensor]:
    """The first `batch_size` samples as (uint8 [B, size, size, 3], int64 labels [B])."""
    shards = find_shards(shards_dir, split=split)
    if batch_size > shards.num_samples:
        raise ValueError(f"batch_size: asked for {batch_size} samples, {shards_dir} holds only {shards.num_samples}")
    images, labels = [], []
    try:
        # The torch backend's reader: a shard that ends before the samples its manifest lists (tarfile
        # stops quietly at a damaged header) is a LoaderError naming it, not the next shard's samples.
        for sample in read_range(shards, first=0, stop=batch_size):
            images.append(fitted_image(sample, size=size))
            labels.append(sample_label(sample, num_classes=shards.num_classes))
    except LoaderError:
        raise
    except (tarfile.TarError, OSError, ValueError) as error:  # raised by webdataset's tar reading
        # The samples are read in order, so the one that failed is the next one: its shard is known.
        raise damaged(shard_at(shards, len(labels)), f"unreadable ({one_line(error)})") from None
    if len(labels) != batch_size:  # cannot happen with the checks above; never show fewer images
        raise LoaderError(f"shards_dir: read {len(labels)} of {batch_size} samples from {shards_dir}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def fitted_image(sample: dict, *, size: int) -> Tensor:
    """A sample's image (its .jpg, or .png for CIFAR) as uint8 [size, size, 3], centre-cropped."""
    key, data = sample["__key__"], sample["jpg"] if "jpg" in sample else sample.get("png")
    if data is None:
        raise damaged(sample["__url__"], f"sample {key} has no .jpg or .png image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fitted = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BILINEAR)
    except UnidentifiedImageError:  # its own message names only a BytesIO object
        problem = f"sample {key} is not an image Pillow knows"
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for bad bytes (as shards.verify)
        problem = f"sample {key} does not decode ({one_line(error)})"
    else:
        return torch.from_numpy(np.asarray(fitted).copy())
    raise damaged(sample["__url__"], problem, decode=True)


def shard_at(shards: SplitShards, position: int) -> str:
    """The tar that holds the sample at global `position` (manifest order)."""
    ends = itertools.accumulate(shards.shard_samples)
    return next(path for path, end in zip(shards.tar_paths, ends) if position < end)


def damaged(shard: str, problem: str, *, decode: bool = False) -> LoaderError:
    """The error for a shard damaged after its build, worded as the torch backend's."""
    check = f"python -m shards verify {Path(shard).parent}{' --decode' if decode else ''}"
    return LoaderError(f"{shard}: {problem}: the shard is damaged ({check} finds every such shard)")


def one_line(error: BaseException) -> str:
    """A library's message on one line: the CLI prints one `error:` line."""
    return " ".join(str(error).split())


def caption(targets_row: Tensor, *, mode: str, top: int = 2, names: Sequence[str] | None = None) -> str:
    """'cutmix' over '3: 0.62 | 7: 0.38' for one sample's soft target row; with ``names`` (the
    split's class list) 'dog: 0.62 | cat: 0.38'."""
    weights, classes = targets_row.float().topk(min(top, len(targets_row)))

    def name(k) -> str:
        return names[int(k)] if names is not None and int(k) < len(names) else str(int(k))

    # At the smoothing floor a class is not part of the mix: show only the mixed labels. The floor is
    # what the classes outside the top ones hold (none with two classes: the row's minimum there was
    # the partner's weight, hidden; walkthrough).
    rest = torch.ones(len(targets_row), dtype=torch.bool)
    rest[classes] = False
    floor = float(targets_row.float()[rest].min()) if bool(rest.any()) else 0.0
    shown = [f"{name(k)}: {float(w):.2f}" for w, k in zip(weights, classes) if w > floor + 1e-6]
    return f"{mode}\n" + " | ".join(shown or [f"{name(classes[0])}: {float(weights[0]):.2f}"])


def output_file(out_path: str | Path) -> Path:
    """The file the grid is written to, exactly: `DEFAULT_NAME` in a folder that exists or is
    written with a trailing slash (created then), `.png` added to a name without a suffix
    (matplotlib would add it unsaid), else the path as given, in the format its suffix names; a
    ValueError naming `out` for a suffix matplotlib cannot write."""
    folder = str(out_path).endswith(("/", os.sep))  # text: Path() drops the slash
    out_path = Path(out_path)
    if folder or out_path.is_dir():
        return out_path / DEFAULT_NAME
    if not out_path.suffix:
        return out_path.with_name(out_path.name + ".png")
    formats = picture_formats()
    if out_path.suffix[1:].lower() not in formats:
        raise ValueError(f"out: {out_path}: {out_path.suffix} is not a picture format matplotlib writes here "
                         f"({', '.join(formats)})")
    return out_path


def picture_formats() -> list[str]:
    """The suffixes matplotlib writes here: its own formats, pgf only with the LaTeX program it runs
    to write one (``pgf.texsystem``, xelatex by default), which it looks for only as it saves:
    a RuntimeError traceback after the shards were read (walkthrough)."""
    import matplotlib

    formats = set(FigureCanvasBase.get_supported_filetypes())
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:
        formats.discard("pgf")
    return sorted(formats)


def draw_preview_grid(
    images: Tensor,
    targets: Tensor,
    *,
    modes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    out_path: Path,
    columns: int = 4,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a grid of normalized images [B, C, H, W] (undone to [0, 1] for display) with captions;
    returns the file written (`output_file(out_path)`)."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.4 * columns, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    # What the model sees, mapped back to colours: Cutout's zeros show as the mean colour.
    pictures = (images.float().cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for index, axis in enumerate(axes):
        axis.set_axis_off()
        if index < count:
            axis.imshow(pictures[index])
            axis.set_title(caption(targets[index].cpu(), mode=modes[index], names=class_names), fontsize=8)
    out_path = output_file(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # The format named outright: matplotlib then writes exactly this path.
        figure.savefig(out_path, dpi=100, format=out_path.suffix[1:].lower())
    except OSError as error:  # a parent that is a file, no permission, a full disk
        raise ValueError(f"out: cannot write {out_path} ({one_line(error)})") from None
    return out_path
