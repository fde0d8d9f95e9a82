"""The synthetic backend: random batches created once on the device, to measure the model's
throughput with no data loading at all (the ceiling the real loaders are compared with)."""

from __future__ import annotations

import torch

from .normalize import to_normalized_nchw
from .sharding import derive_seed


class SyntheticLoader:
    """``steps`` batches of the same random uint8 NHWC images and int64 labels per epoch."""

    def __init__(self, *, steps: int, batch_size: int, image_size: int, num_classes: int, device: torch.device,
                 seed: int, rank: int, normalize: bool):
        generator = torch.Generator().manual_seed(derive_seed(seed=seed, rank=rank))
        images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, num_classes, (batch_size,), dtype=torch.int64, generator=generator)
        self.images, self.labels = images.to(device), labels.to(device)
        if normalize:
            self.images = to_normalized_nchw(self.images)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels
