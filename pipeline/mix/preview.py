"""A picture of what the mixing does: a grid of one mixed batch with each image's label weights.

For people, not for speed: samples are read with the `webdataset` library from our shards
(`<split>-NNNNNN.tar` with `<key>.jpg` and `<key>.cls`), centre-cropped and resized with PIL, and
stacked into the uint8 NHWC batch that the loader would deliver.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import webdataset
from matplotlib.figure import Figure
from PIL import Image, ImageOps
from torch import Tensor

# timm's IMAGENET_DEFAULT_MEAN / _STD, written out: importing timm pulls in torchvision.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_shards(shards_dir: Path, *, split: str) -> list[Path]:
    """The `<split>-*.tar` files of a shard folder, sorted; ValueError naming the folder if none."""
    shards = sorted(Path(shards_dir).glob(f"{split}-*.tar"))
    if not shards:
        raise ValueError(f"shards_dir: no {split}-*.tar files in {shards_dir}")
    return shards


def load_preview_batch(shards_dir: Path, *, split: str, batch_size: int, size: int) -> tuple[Tensor, Tensor]:
    """The first `batch_size` samples as (uint8 [B, size, size, 3], int64 labels [B])."""
    urls = [str(path) for path in find_shards(shards_dir, split=split)]
    dataset = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "cls")
    images, labels = [], []
    for image, label in dataset:
        fitted = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(fitted).copy()))
        labels.append(int(label))
        if len(labels) == batch_size:
            break
    if len(labels) < batch_size:
        raise ValueError(f"batch_size: asked for {batch_size} samples, {shards_dir} holds only {len(labels)}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def caption(targets_row: Tensor, *, mode: str, top: int = 2) -> str:
    """'cutmix' over 'class 3: 0.62 | class 7: 0.38' for one sample's soft target row."""
    weights, classes = targets_row.float().topk(min(top, len(targets_row)))
    # Below the smoothing floor a class is not part of the mix: show only the mixed labels.
    shown = [f"{int(k)}: {float(w):.2f}" for w, k in zip(weights, classes) if w > targets_row.min() + 1e-6]
    return f"{mode}\n" + " | ".join(shown or [f"{int(classes[0])}: {float(weights[0]):.2f}"])


def draw_preview_grid(
    images: Tensor,
    targets: Tensor,
    *,
    modes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    out_path: Path,
    columns: int = 4,
) -> Path:
    """Save a grid of normalized images [B, C, H, W] (undone to [0, 1] for display) with captions."""
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
            axis.set_title(caption(targets[index].cpu(), mode=modes[index]), fontsize=8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)
    return out_path
