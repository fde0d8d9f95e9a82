"""The synthetic backend: random batches created once on the device, to measure the model's
throughput with no data loading at all (the ceiling the real loaders are compared with)."""

from __future__ import annotations

import torch

from ..seeds import stream_seed
from .epochs import EpochLoader, as_saved


class SyntheticLoader(EpochLoader):
    """``steps`` batches of the same random uint8 NHWC images and int64 labels per epoch."""

    def __init__(self, *, steps: int, batch_size: int, image_size: int, num_classes: int, device: torch.device,
                 seed: int, rank: int, restore: dict | None = None):
        super().__init__(steps)
        self._fingerprint = as_saved({"backend": "synthetic", "steps": steps, "batch_size": batch_size,
                                      "image_size": image_size, "num_classes": num_classes, "seed": seed, "rank": rank})
        self._restore(restore)
        generator = torch.Generator().manual_seed(stream_seed(seed=seed, rank=rank))
        images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, num_classes, (batch_size,), dtype=torch.int64, generator=generator)
        self.images, self.labels = images.to(device), labels.to(device)

    def fingerprint(self) -> dict:
        return self._fingerprint

    def _read(self, epoch: int, start_step: int):
        if not self.cursor.continues(epoch, start_step):
            self.cursor.begin(epoch)
            self.cursor.consumed = start_step
        while self.cursor.consumed < self.steps:
            self.cursor.consumed += 1
            yield self.images, self.labels
        self.cursor.close()
