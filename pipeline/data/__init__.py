"""Data loading for training: ``create_loader`` over the shards built by ``python -m shards``.

    loader, steps = create_loader(shards, "train", augmentation=Augmentation(image_size=224),
                                  options=LoaderOptions(batch_size=256), rank=rank, world_size=world,
                                  device=device, seed=run_seed)
    for epoch in range(epochs):
        for images, labels in loader:      # uint8 NHWC and int64 on `device`, `steps` batches
            ...
"""

from .augment import Augmentation
from .checks import LoaderError
from .factory import create_loader, steps_per_epoch
from .options import LoaderOptions

__all__ = ["Augmentation", "LoaderError", "LoaderOptions", "create_loader", "steps_per_epoch"]
