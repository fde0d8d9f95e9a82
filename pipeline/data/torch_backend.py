"""The torch backend: the same shards and the same rank parts as DALI, read with ``webdataset``
and augmented with torchvision in a ``DataLoader`` with workers. For platforms without DALI, and
the baseline of the loader benchmark. Each worker streams a contiguous run of the rank's part and
yields whole batches; the DataLoader takes them round-robin, so an epoch has exactly ``steps``."""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..seeds import torch_worker_seed
from .augment import Augmentation, check_train_size
from .checks import LoaderError, SplitShards
from .epochs import EpochLoader, as_saved
from .labels import check_label_range, sample_label, sample_place
from .sharding import epoch_part, rank_range


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


@contextlib.contextmanager
def _any_worker_count():
    """Without torch's multi-line warning (at the DataLoader's creation and at each iter()) when
    the workers outnumber the cores: the count is the user's choice (loader.num_threads,
    --num-threads) and part of the data order (worker_plan), not something to change per machine;
    more workers than cores only share the cores."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


class _EpochSamples(IterableDataset):
    """The epochs of one rank: each ``iter()`` is the next epoch, in which every worker yields its
    batches (val batches padded with label -1). The epoch counter lives in each worker's copy, so
    the workers can persist across epochs: each of them starts exactly one iteration per epoch.
    ``epoch`` is set before the workers start: the epoch their first iteration reads."""

    def __init__(self, shards: SplitShards, *, steps: int, training: bool, batch_size: int, rank: int,
                 world_size: int, num_workers: int, augmentation: Augmentation, shuffle_buffer: int, seed: int,
                 sample_ids: bool, metadata: bool = False):
        self.shards, self.steps, self.training, self.batch_size = shards, steps, training, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle_buffer, self.seed, self.sample_ids, self.metadata = shuffle_buffer, seed, sample_ids, metadata
        # Built here so that torchvision is imported once, before the workers fork.
        self.transform = _transform(augmentation, training=training)
        self.size_rule = augmentation if training and augmentation.checks_train_sizes else None
        self.epoch = 0

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        epoch, self.epoch = self.epoch, self.epoch + 1
        part = epoch_part(rank=self.rank, world_size=self.world_size, epoch=epoch, stick_to_shard=not self.training)
        begin, end = rank_range(num_samples=self.shards.num_samples, part=part, num_parts=self.world_size)
        plan = worker_plan(begin=begin, end=end, steps=self.steps, batch_size=self.batch_size,
                           num_workers=self.num_workers, training=self.training)
        first, stop, batches = plan[worker]
        # torchvision draws from torch's global RNG: seed it per (seed, rank, epoch, worker).
        seed = torch_worker_seed(run_seed=self.seed, rank=self.rank, epoch=epoch, worker=worker)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        samples = read_range(self.shards, first=first, stop=stop)
        if self.training:
            samples = _buffer_shuffle(samples, size=self.shuffle_buffer, rng=rng)
        chunk = []
        for sample in samples:
            chunk.append(_prepare(sample, self.transform, num_classes=self.shards.num_classes,
                                  size_rule=self.size_rule))
            if len(chunk) == self.batch_size:
                yield self._collate(chunk, valid=len(chunk))
                chunk, batches = [], batches - 1
                if batches == 0:
                    return
        for _ in range(batches):  # val only: pad with copies marked invalid
            filler = chunk[-1] if chunk else _prepare(next(read_range(self.shards, first=stop - 1, stop=stop)),
                                                      self.transform, num_classes=self.shards.num_classes)
            valid = len(chunk)
            yield self._collate(chunk + [filler] * (self.batch_size - valid), valid=valid)
            chunk = []

    def _collate(self, chunk, *, valid: int):
        images = torch.stack([c[0] for c in chunk])
        labels = torch.tensor([c[1] if i < valid else -1 for i, c in enumerate(chunk)], dtype=torch.int64)
        if self.metadata:
            return images, labels, [c[2] for c in chunk]
        return (images, labels, [c[2].get("source") for c in chunk]) if self.sample_ids else (images, labels)


def read_range(shards: SplitShards, *, first: int, stop: int):
    """Samples at global positions ``[first, stop)``, streamed from the tars that hold them."""
    import webdataset as wds

    offset = 0
    for path, count in zip(shards.tar_paths, shards.shard_samples):
        if offset + count > first and offset < stop:
            dataset = wds.WebDataset(path, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
            position = offset - 1
            for position, sample in enumerate(dataset, start=offset):
                if position >= stop:
                    break
                if position >= first:
                    yield sample
            else:
                # tarfile ends quietly at a damaged header: the samples after it would be lost unseen.
                if position + 1 < min(stop, offset + count):
                    raise LoaderError(f"{path}: ended after {position + 1 - offset} of the {count} samples the "
                                      f"manifest lists: the shard is damaged (python -m shards verify "
                                      f"{Path(path).parent} finds every such shard)")
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
    # torchvision's tensor transforms (v2) on uint8 tensors: the same RandomResizedCrop sampling
    # and antialiased bilinear filter as its PIL transforms (within one grey level), 1.39x the
    # speed per image of Pillow decode + PIL transforms (bench/results/augment_cpu.txt).
    from torchvision.transforms import v2  # only this backend needs torchvision

    size = augmentation.image_size
    if augmentation.kind == "cifar":
        if not training:
            return v2.CenterCrop(size)
        return v2.Compose([v2.RandomCrop(size, padding=augmentation.padding, fill=0),
                           v2.RandomHorizontalFlip(augmentation.flip_probability)])
    if training:
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=augmentation.random_area, ratio=augmentation.random_aspect_ratio,
                                 antialias=True),
            v2.RandomHorizontalFlip(augmentation.flip_probability),
        ])
    return v2.Compose([v2.Resize(augmentation.val_resize, antialias=True), v2.CenterCrop(size)])


def _prepare(sample: dict, transform, *, num_classes: int,
             size_rule: Augmentation | None = None) -> tuple[torch.Tensor, int, dict]:
    from torchvision.io import ImageReadMode, decode_image

    # bytearray: a writable buffer (torch warns on read-only ones); the copy is ~0.1 MB.
    # The image is the .jpg member, or the .png one (CIFAR is stored losslessly).
    data = torch.frombuffer(bytearray(sample["jpg"] if "jpg" in sample else sample["png"]), dtype=torch.uint8)
    # EXIF orientation applied as DALI's decoders do (adjust_orientation defaults to True).
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as error:  # the build checked every image: a shard damaged since
        shard = sample.get("__url__", "a shard")
        raise LoaderError(f"{shard}: sample {sample['__key__']} does not decode ({error}): the shard is damaged "
                          f"(python -m shards verify {Path(shard).parent} --decode finds every such shard)") from None
    if size_rule is not None:
        check_train_size(size_rule, height=image.shape[1], width=image.shape[2], where=sample_place(sample))
    pixels = transform(image).permute(1, 2, 0).contiguous()  # CHW -> HWC, as DALI returns
    record = json.loads(sample["json"]) if "json" in sample else {}
    record.setdefault("source", sample["__key__"])
    return pixels, sample_label(sample, num_classes=num_classes), record


def _own_message(error: LoaderError) -> LoaderError:
    """A LoaderError raised in a DataLoader worker reaches this process with the worker's
    traceback in its message ("Caught LoaderError in DataLoader worker process 0. Original
    Traceback ..."): its own message is the last line, after the class name."""
    text = str(error)
    if not text.startswith("Caught "):
        return error
    return LoaderError(text.rstrip().splitlines()[-1].split("LoaderError: ", 1)[-1])


class TorchLoader(EpochLoader):
    """Epochs of ``steps`` batches; the same interface as the DALI loader. The workers start at the
    first read, with the epoch it asks for, and persist: restarting them every epoch cost about a
    second each time (process start-up, shuffle buffer refill), which a short epoch notices. Every
    epoch's randomness is a function of (seed, rank, epoch, worker), so any position can be
    reached again without more saved state than the position: a resumed epoch re-reads (not
    re-trains) its first steps. ``restore`` is a ``state_dict()`` of the same loader in an earlier
    process."""

    def __init__(self, shards: SplitShards, *, steps: int, training: bool, batch_size: int, rank: int,
                 world_size: int, device: torch.device, seed: int, num_workers: int, augmentation: Augmentation,
                 shuffle_buffer: int, sample_ids: bool = False, metadata: bool = False, restore: dict | None = None):
        super().__init__(steps)
        self.device, self.training, self.num_classes = device, training, shards.num_classes
        self.dataset = _EpochSamples(
            shards, steps=steps, training=training, batch_size=batch_size, rank=rank, world_size=world_size,
            num_workers=max(1, num_workers), augmentation=augmentation, shuffle_buffer=shuffle_buffer, seed=seed,
            sample_ids=sample_ids, metadata=metadata)
        # generator=: without one, every iter() draws the workers' base seed from torch's global RNG,
        # which the model also draws from (drop path): a resumed run, whose first iter() comes at
        # another point, would then diverge. The workers seed themselves (torch_worker_seed).
        with _any_worker_count():
            self.loader = DataLoader(self.dataset, batch_size=None, num_workers=num_workers,
                                     persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
                                     prefetch_factor=4 if num_workers else None, generator=torch.Generator())
        self._batches = None  # the DataLoader iterator of the open epoch; None until the workers start
        # The worker count is part of the order: each worker streams its own run of the part.
        self._fingerprint = as_saved({
            "backend": "torch", "training": training, "batch_size": batch_size, "steps": steps, "rank": rank,
            "world_size": world_size, "seed": seed, "num_workers": max(1, num_workers),
            "shuffle_buffer": shuffle_buffer, "augmentation": asdict(augmentation), "shards": shards.listing()})
        self._restore(restore)

    def fingerprint(self) -> dict:
        return self._fingerprint

    def _stop_workers(self) -> None:
        """End the workers now, after an error. Left to the garbage collector (the DataLoader's
        iterator is in a reference cycle with the error's frames), the iterator's ``__del__`` runs
        after the finalizers of its queues have closed them: its "stop" never reaches the workers,
        and it waits 5 s for each one before killing it (a process that goes on, an evaluation or a
        notebook, stalled 10 s on the default two workers)."""
        batches, self._batches = self._batches, None
        self.loader._iterator = None  # persistent workers: the DataLoader holds the iterator too
        if batches is not None and self.loader.num_workers:  # without workers: nothing to end
            batches._shutdown_workers()  # what its __del__ calls; torch has no public close

    def _read(self, epoch: int, start_step: int):
        # The workers not started yet (the first read, also of a restored loader, whose position
        # is in its cursor): they start at this epoch.
        if self._batches is None or not self.cursor.continues(epoch, start_step):
            if self._batches is None:
                self.dataset.epoch = epoch  # copied into the workers when they start, just below
            self.cursor.begin(epoch)
            with _any_worker_count():
                self._batches = iter(self.loader)
            for _ in range(start_step):
                self._next_batch()
        while self.cursor.consumed < self.steps:
            yield self._next_batch()
        self.cursor.close()

    def _next_batch(self):
        try:
            images, labels, *ids = next(self._batches)
            # Checked here, on the host, where it costs no device sync.
            check_label_range(labels.numpy(), num_classes=self.num_classes, allow_padding=not self.training)
        except BaseException as error:
            self._stop_workers()
            if isinstance(error, LoaderError):
                raise _own_message(error) from None
            raise
        self.cursor.consumed += 1
        batch = (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))
        return batch + tuple(ids)
