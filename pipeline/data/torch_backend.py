"""The torch backend: the same shards and the same rank parts as DALI, read with ``webdataset``
and augmented with torchvision in a ``DataLoader`` with workers. For platforms without DALI, and
the baseline of the loader benchmark. Each worker streams a contiguous run of the rank's part and
yields whole batches; the DataLoader takes them round-robin, so an epoch has exactly ``steps``."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .augment import Augmentation
from .checks import SplitShards
from .normalize import to_normalized_nchw
from .sharding import derive_seed, epoch_part, rank_range


def worker_plan(*, begin: int, end: int, steps: int, batch_size: int, num_workers: int,
                training: bool) -> list[tuple[int, int, int]]:
    """Per worker, ``(first, stop, batches)``: its contiguous samples and how many batches it yields.
    Batches go round-robin (batch k from worker k % num_workers), matching the DataLoader's order;
    in training the samples beyond ``steps * batch_size`` (dropped) go to worker 0."""
    batches = [steps // num_workers + (w < steps % num_workers) for w in range(num_workers)]
    plan, first = [], begin
    for worker, count in enumerate(batches):
        size = count * batch_size
        if training and worker == 0:
            size += (end - begin) - steps * batch_size
        stop = min(first + size, end)
        plan.append((first, stop, count))
        first = stop
    return plan


class _EpochSamples(IterableDataset):
    """One epoch of one rank: every worker yields its batches (val batches padded with label -1)."""

    def __init__(self, shards: SplitShards, *, plan, training: bool, batch_size: int, augmentation: Augmentation,
                 shuffle_buffer: int, seed: int, with_sample_ids: bool):
        self.shards, self.plan, self.training, self.batch_size = shards, plan, training, batch_size
        self.augmentation, self.shuffle_buffer, self.seed = augmentation, shuffle_buffer, seed
        self.with_sample_ids = with_sample_ids

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        first, stop, batches = self.plan[worker]
        # torchvision draws from torch's global RNG: seed it per (seed, rank, epoch, worker).
        torch.manual_seed(self.seed + worker)
        rng = np.random.default_rng(self.seed + worker)
        transform = _transform(self.augmentation, training=self.training)
        samples = _read_range(self.shards, first=first, stop=stop)
        if self.training:
            samples = _buffer_shuffle(samples, size=self.shuffle_buffer, rng=rng)
        chunk = []
        for sample in samples:
            chunk.append(_prepare(sample, transform))
            if len(chunk) == self.batch_size:
                yield self._collate(chunk, valid=len(chunk))
                chunk, batches = [], batches - 1
                if batches == 0:
                    return
        for _ in range(batches):  # val only: pad with copies marked invalid
            filler = chunk[-1] if chunk else _prepare(next(_read_range(self.shards, first=stop - 1, stop=stop)), transform)
            valid = len(chunk)
            yield self._collate(chunk + [filler] * (self.batch_size - valid), valid=valid)
            chunk = []

    def _collate(self, chunk, *, valid: int):
        images = torch.stack([c[0] for c in chunk])
        labels = torch.tensor([c[1] if i < valid else -1 for i, c in enumerate(chunk)], dtype=torch.int64)
        return (images, labels, [c[2] for c in chunk]) if self.with_sample_ids else (images, labels)


def _read_range(shards: SplitShards, *, first: int, stop: int):
    """Samples at global positions ``[first, stop)``, streamed from the tars that hold them."""
    import webdataset as wds

    offset = 0
    for path, count in zip(shards.tar_paths, shards.shard_samples):
        if offset + count > first and offset < stop:
            dataset = wds.WebDataset(path, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
            for position, sample in enumerate(dataset, start=offset):
                if position >= stop:
                    break
                if position >= first:
                    yield sample
        offset += count


def _buffer_shuffle(samples, *, size: int, rng: np.random.Generator):
    # The same kind of shuffle as DALI's reader: a buffer of `size` samples, random picks.
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer


def _transform(augmentation: Augmentation, *, training: bool):
    from torchvision import transforms  # only this backend needs torchvision

    size = augmentation.image_size
    if training:
        return transforms.Compose([
            transforms.RandomResizedCrop(size, scale=augmentation.random_area, ratio=augmentation.random_aspect_ratio),
            transforms.RandomHorizontalFlip(augmentation.flip_probability),
            transforms.PILToTensor(),
        ])
    return transforms.Compose([transforms.Resize(augmentation.val_resize), transforms.CenterCrop(size),
                               transforms.PILToTensor()])


def _prepare(sample: dict, transform) -> tuple[torch.Tensor, int, str]:
    from PIL import Image

    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    pixels = transform(image).permute(1, 2, 0).contiguous()  # CHW -> HWC, as DALI returns
    source = json.loads(sample["json"]).get("source", sample["__key__"]) if "json" in sample else sample["__key__"]
    return pixels, int(sample["cls"].decode("ascii")), source


class TorchLoader:
    """Iterates one epoch of ``steps`` batches per call; the same interface as the DALI loader."""

    def __init__(self, shards: SplitShards, *, steps: int, training: bool, batch_size: int, rank: int,
                 world_size: int, device: torch.device, seed: int, num_workers: int, augmentation: Augmentation,
                 normalize: bool, shuffle_buffer: int, with_sample_ids: bool):
        self.shards, self.steps, self.training, self.batch_size = shards, steps, training, batch_size
        self.rank, self.world_size, self.device, self.seed = rank, world_size, device, seed
        self.num_workers, self.augmentation, self.normalize = num_workers, augmentation, normalize
        self.shuffle_buffer, self.with_sample_ids = shuffle_buffer, with_sample_ids
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        part = epoch_part(rank=self.rank, world_size=self.world_size, epoch=self.epoch, stick_to_shard=not self.training)
        begin, end = rank_range(num_samples=self.shards.num_samples, part=part, num_parts=self.world_size)
        plan = worker_plan(begin=begin, end=end, steps=self.steps, batch_size=self.batch_size,
                           num_workers=max(1, self.num_workers), training=self.training)
        dataset = _EpochSamples(
            self.shards, plan=plan, training=self.training, batch_size=self.batch_size,
            augmentation=self.augmentation, shuffle_buffer=self.shuffle_buffer, with_sample_ids=self.with_sample_ids,
            seed=derive_seed(seed=self.seed, rank=self.rank, stream=2 + self.epoch) * 64 % 2**31)
        self.epoch += 1
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.num_workers else None)
        for images, labels, *ids in loader:
            images = images.to(self.device, non_blocking=True)
            batch = (to_normalized_nchw(images) if self.normalize else images, labels.to(self.device, non_blocking=True))
            yield batch + tuple(ids)
