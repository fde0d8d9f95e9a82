"""``create_loader``: one factory for every data backend (DALI, torch, synthetic), returning
``(loader, steps_per_epoch)``. Every loader yields the same batches, uint8 NHWC images on
``device`` and int64 labels (-1 marks validation padding), is built once per run and reads one
epoch per ``iter()`` (or ``iter_epoch(epoch, start_step)``; see ``epochs.EpochLoader``)."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import torch

from .augment import Augmentation
from .checks import LoaderError, check_batch_fits, check_num_classes, load_split_shards
from .options import LoaderOptions
from .sharding import part_sizes, train_steps, val_steps


def create_loader(shards_dir: str | Path, split: str, *, augmentation: Augmentation, options: LoaderOptions,
                  rank: int, world_size: int, device: str | torch.device, seed: int, num_classes: int | None = None,
                  training: bool | None = None, restore: dict | None = None, metadata: bool = False):
    """The loader of one rank and its steps per epoch. ``seed`` is the run's seed (each epoch's
    randomness derives from it and the epoch number, ``pipeline.seeds``); ``training`` defaults
    to ``split == "train"`` (False: the validation resize and centre crop, in order, padded);
    ``num_classes`` (the model's) is checked against the manifest; ``restore`` is the
    ``state_dict()`` of this loader in an earlier process (a resumed run); ``metadata`` adds each
    sample's ``.json`` (a dict: source, size, boxes, ...) as a third element of every batch, padding
    rows included (the evaluation's boxes)."""
    return _create_loader(shards_dir, split, augmentation=augmentation, options=options, rank=rank,
                          world_size=world_size, device=device, seed=seed, num_classes=num_classes,
                          training=training, restore=restore, metadata=metadata)


def steps_per_epoch(shards_dir: str | Path, split: str, *, batch_size: int, world_size: int,
                    num_classes: int | None = None, training: bool | None = None, backend: str = "dali") -> int:
    """The ``steps_per_epoch`` ``create_loader`` returns for these arguments, after the same shard
    checks, without building a loader (a DALI pipeline allocates memory and starts threads)."""
    _, steps = _checked_shards(shards_dir, split=split, batch_size=batch_size, world_size=world_size,
                               num_classes=num_classes, training=split == "train" if training is None else training,
                               check_indexes=backend != "synthetic")
    return steps


def _create_loader(shards_dir, split: str, *, augmentation: Augmentation, options: LoaderOptions, rank: int,
                   world_size: int, device, seed: int, num_classes: int | None = None, training: bool | None = None,
                   restore: dict | None = None, sample_ids: bool = False, metadata: bool = False):
    """``create_loader`` plus ``sample_ids``: each batch also carries every sample's source path
    (from its ``.json``), which the tests use to check coverage and order."""
    if not (_is_integer(world_size) and world_size >= 1 and _is_integer(rank) and 0 <= rank < world_size):
        raise LoaderError(f"need integers 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    device = check_arguments(split=split, augmentation=augmentation, options=options, device=device, seed=seed,
                             num_classes=num_classes, restore=restore)
    # numpy integers pass the checks; the saved states are JSON, which takes Python ints only.
    seed, num_classes = int(seed), None if num_classes is None else int(num_classes)
    rank, world_size = int(rank), int(world_size)
    training = split == "train" if training is None else training
    shards, steps = _checked_shards(shards_dir, split=split, batch_size=options.batch_size, world_size=world_size,
                                    num_classes=num_classes, training=training,
                                    check_indexes=options.backend != "synthetic")
    common = dict(steps=steps, training=training, batch_size=options.batch_size, rank=rank, world_size=world_size,
                  device=device, seed=seed, augmentation=augmentation, shuffle_buffer=options.shuffle_buffer,
                  sample_ids=sample_ids, metadata=metadata)
    if options.backend == "dali":
        from .dali import DaliLoader

        loader = DaliLoader(shards, num_threads=options.num_threads, hw_decoder_load=options.hw_decoder_load,
                            preallocate_hint=options.preallocate_hint, restore=restore, **common)
    elif options.backend == "torch":
        from .torch_backend import TorchLoader

        loader = TorchLoader(shards, num_workers=options.num_threads, restore=restore, **common)
    else:
        if metadata:
            raise LoaderError("the synthetic backend has no samples, so no metadata: use dali or torch")
        from .synthetic import SyntheticLoader

        loader = SyntheticLoader(steps=steps, batch_size=options.batch_size, image_size=augmentation.image_size,
                                 num_classes=shards.num_classes, device=device, seed=seed, rank=rank,
                                 restore=restore)
    return loader, steps


def check_arguments(*, split, augmentation, options, device, seed, num_classes, restore) -> torch.device:
    """Raise LoaderError for an argument of the wrong kind before anything is read (each of these
    otherwise failed at the first batch, inside a worker or DALI, or was silently ignored: a
    ``restore`` that is not a state). Returns ``device`` as a torch.device."""
    if not isinstance(split, str) or not split:
        raise LoaderError(f"split must be a split name such as 'train' or 'val', got {split!r}")
    for name, value, kind in (("augmentation", augmentation, Augmentation), ("options", options, LoaderOptions)):
        if not isinstance(value, kind):
            raise LoaderError(f"{name} must be a pipeline.data.{kind.__name__}, got {type(value).__name__}")
    check_seed(seed)
    if num_classes is not None and (not _is_integer(num_classes) or num_classes < 1):
        raise LoaderError(f"num_classes must be a positive integer (the model's class count) or None, "
                          f"got {num_classes!r}")
    # A state without "format" is one of before formats ({"cursor": ...} alone), which is not used.
    if restore is not None and not (isinstance(restore, dict) and ("format" in restore or set(restore) == {"cursor"})):
        what = f"a dict with keys {sorted(restore)[:5]}" if isinstance(restore, dict) else type(restore).__name__
        raise LoaderError(f"restore must be a loader's state_dict() (a dict, as saved with a checkpoint) or None, "
                          f"got {what}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise LoaderError(f"device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoaderError(f"device {device}: torch sees no CUDA GPU here; use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise LoaderError(f"device must be a CPU or CUDA device, got {device}")
    return device


def _is_integer(value) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_seed(seed) -> None:
    """The run's seed: a non-negative integer (numpy, DALI and torch derive theirs from it; None
    would draw an unrepeatable one from the OS)."""
    if not _is_integer(seed) or seed < 0:
        raise LoaderError(f"seed must be an integer >= 0, got {seed!r}")


def _checked_shards(shards_dir, *, split: str, batch_size: int, world_size: int, num_classes: int | None,
                    training: bool, check_indexes: bool = True):
    """The split's shards after every start-up check, and the steps per epoch of each rank. The
    synthetic backend reads the manifest only (the same epoch length and classes, no tar)."""
    shards = load_split_shards(shards_dir, split, check_indexes=check_indexes)
    check_num_classes(shards, num_classes=num_classes, split=split)
    smallest = min(part_sizes(num_samples=shards.num_samples, world_size=world_size))
    check_batch_fits(smallest_rank_samples=smallest, batch_size=batch_size, world_size=world_size, split=split)
    count_steps = train_steps if training else val_steps
    return shards, count_steps(num_samples=shards.num_samples, world_size=world_size, batch_size=batch_size)
