"""``create_loader``: one factory for every data backend (DALI, torch, synthetic), returning
``(loader, steps_per_epoch)`` with the same batches: uint8 NHWC images on ``device`` and int64
labels (-1 marks validation padding), or normalized float NCHW with ``normalize=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from .augment import Augmentation
from .checks import LoaderError, check_batch_fits, check_num_classes, load_split_shards
from .sharding import part_sizes, train_steps, val_steps


def create_loader(shards_dir: str | Path | None, split: str, *, batch_size: int, image_size: int, rank: int,
                  world_size: int, device: str | torch.device, seed: int, backend: str = "dali",
                  training: bool | None = None, num_classes: int | None = None, normalize: bool = False,
                  num_threads: int = 2, random_area: tuple[float, float] = (0.08, 1.0),
                  random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_probability: float = 0.5,
                  crop_pct: float = 0.875, shuffle_buffer: int = 4096, hw_decoder_load: float = 0.65,
                  preallocate_hint: tuple[int, int] = (0, 0), with_sample_ids: bool = False,
                  synthetic_steps: int | None = None):
    """Build the loader of one rank. ``training`` defaults to ``split == "train"``; ``num_threads``
    is DALI's thread count or the torch DataLoader's worker count; ``num_classes`` (the model's)
    is checked against the manifest; ``with_sample_ids`` adds each sample's source path (tests)."""
    if backend not in BACKENDS:
        raise LoaderError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise LoaderError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_threads < 1:
        raise LoaderError(f"num_threads must be >= 1, got {num_threads}")
    options = dict(
        split=split, batch_size=batch_size, rank=rank, world_size=world_size, device=torch.device(device),
        seed=seed, training=split == "train" if training is None else training, num_classes=num_classes,
        normalize=normalize, num_threads=num_threads, shuffle_buffer=shuffle_buffer,
        augmentation=Augmentation(image_size=image_size, random_area=tuple(random_area),
                                  random_aspect_ratio=tuple(random_aspect_ratio),
                                  flip_probability=flip_probability, crop_pct=crop_pct),
        hw_decoder_load=hw_decoder_load, preallocate_hint=tuple(preallocate_hint),
        with_sample_ids=with_sample_ids, synthetic_steps=synthetic_steps,
    )
    return BACKENDS[backend](shards_dir, **options)


def steps_per_epoch(shards_dir: str | Path, split: str, *, batch_size: int, world_size: int,
                    num_classes: int | None = None, training: bool | None = None, backend: str = "dali") -> int:
    """The ``steps_per_epoch`` ``create_loader`` returns for these arguments, after the same shard
    checks, without building a loader (a DALI pipeline allocates memory and starts threads)."""
    _, steps = _checked_shards(shards_dir, split=split, batch_size=batch_size, world_size=world_size,
                               num_classes=num_classes, training=split == "train" if training is None else training,
                               check_indexes=backend != "synthetic")
    return steps


def _checked_shards(shards_dir, *, split: str, batch_size: int, world_size: int, num_classes: int | None,
                    training: bool, check_indexes: bool = True):
    """The split's shards after every start-up check, and the steps per epoch of each rank."""
    if shards_dir is None:
        raise LoaderError("shards_dir is required for this backend")
    shards = load_split_shards(shards_dir, split, check_indexes=check_indexes)
    check_num_classes(shards, num_classes=num_classes, split=split)
    smallest = min(part_sizes(num_samples=shards.num_samples, world_size=world_size))
    check_batch_fits(smallest_rank_samples=smallest, batch_size=batch_size, world_size=world_size, split=split)
    count_steps = train_steps if training else val_steps
    return shards, count_steps(num_samples=shards.num_samples, world_size=world_size, batch_size=batch_size)


def _create_dali(shards_dir, *, split, batch_size, rank, world_size, device, seed, training, num_classes,
                 normalize, num_threads, shuffle_buffer, augmentation, hw_decoder_load, preallocate_hint,
                 with_sample_ids, synthetic_steps):
    from .dali import DaliLoader, create_dali_pipeline

    shards, steps = _checked_shards(shards_dir, split=split, batch_size=batch_size, world_size=world_size,
                                    num_classes=num_classes, training=training)
    device_id = None
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", device_id)
    pipeline = create_dali_pipeline(
        shards, training=training, batch_size=batch_size, rank=rank, world_size=world_size, device_id=device_id,
        seed=seed, num_threads=num_threads, augmentation=augmentation, normalize=normalize,
        shuffle_buffer=shuffle_buffer, hw_decoder_load=hw_decoder_load, preallocate_hint=preallocate_hint,
        with_sample_ids=with_sample_ids)
    loader = DaliLoader(pipeline, steps=steps, training=training, num_samples=shards.num_samples, rank=rank,
                        world_size=world_size, batch_size=batch_size, device=device, normalize=normalize,
                        host_augmentation=augmentation if device_id is None else None)
    return loader, steps


def _create_torch(shards_dir, *, split, batch_size, rank, world_size, device, seed, training, num_classes,
                  normalize, num_threads, shuffle_buffer, augmentation, hw_decoder_load, preallocate_hint,
                  with_sample_ids, synthetic_steps):
    from .torch_backend import TorchLoader

    shards, steps = _checked_shards(shards_dir, split=split, batch_size=batch_size, world_size=world_size,
                                    num_classes=num_classes, training=training)
    loader = TorchLoader(shards, steps=steps, training=training, batch_size=batch_size, rank=rank,
                         world_size=world_size, device=device, seed=seed, num_workers=num_threads,
                         augmentation=augmentation, normalize=normalize, shuffle_buffer=shuffle_buffer,
                         with_sample_ids=with_sample_ids)
    return loader, steps


def _create_synthetic(shards_dir, *, split, batch_size, rank, world_size, device, seed, training, num_classes,
                      normalize, num_threads, shuffle_buffer, augmentation, hw_decoder_load, preallocate_hint,
                      with_sample_ids, synthetic_steps):
    from .synthetic import SyntheticLoader

    if synthetic_steps is None or num_classes is None:
        # Same epoch length and classes as the real shards (manifest only: no tar is read).
        shards, steps = _checked_shards(shards_dir, split=split, batch_size=batch_size, world_size=world_size,
                                        num_classes=num_classes, training=training, check_indexes=False)
        num_classes = shards.num_classes if num_classes is None else num_classes
        synthetic_steps = steps if synthetic_steps is None else synthetic_steps
    loader = SyntheticLoader(steps=synthetic_steps, batch_size=batch_size, image_size=augmentation.image_size,
                             num_classes=num_classes, device=device, seed=seed, rank=rank, normalize=normalize)
    return loader, synthetic_steps


BACKENDS = {"dali": _create_dali, "torch": _create_torch, "synthetic": _create_synthetic}
