"""The DALI backend: ``fn.readers.webdataset`` over the manifest's shards with their ``.idx``
files, sharded by rank, then one processing graph (a plain function) shared by the train and
val pipelines, and a thin iterator that runs exactly ``steps`` batches per epoch on every rank."""

from __future__ import annotations

import json

import numpy as np
import torch

from .augment import IMAGENET_MEAN, IMAGENET_STD, Augmentation
from .checks import SplitShards
from .host_resize import finish_on_host
from .labels import parse_ascii_labels
from .normalize import to_normalized_nchw
from .sharding import derive_seed, epoch_part, part_sizes, reader_batches


def image_graph(jpegs, *, training: bool, augmentation: Augmentation, decoder_device: str,
                normalize: bool, hw_decoder_load: float, preallocate_hint: tuple[int, int]):
    """Decode + crop + resize + flip (train) or decode + resize + centre crop (val) of a batch of
    JPEG bytes; uint8 HWC, or normalized float CHW when ``normalize``. Returns ``(images, mirror)``.
    With the CPU decoder the graph stops after decoding (``images`` are the decoded crops, or whole
    images for val, ``mirror`` the drawn flips or None) and ``host_resize.finish_on_host`` does the
    rest: DALI's CPU resize is the slowest step there (see that module)."""
    from nvidia.dali import fn, types

    size = augmentation.image_size
    on_host = decoder_device == "cpu"
    mixed = {"hw_decoder_load": hw_decoder_load} if decoder_device == "mixed" else {}
    if decoder_device == "mixed" and preallocate_hint[0] > 0:
        mixed.update(preallocate_width_hint=preallocate_hint[0], preallocate_height_hint=preallocate_hint[1])
    if training:
        # Decoding only the crop window (ROI decode) is what makes the crop cheap.
        images = fn.decoders.image_random_crop(
            jpegs, device=decoder_device, output_type=types.RGB, num_attempts=100,
            random_area=list(augmentation.random_area), random_aspect_ratio=list(augmentation.random_aspect_ratio),
            **mixed)
        mirror = fn.random.coin_flip(probability=augmentation.flip_probability)
        if on_host:
            return images, mirror
        images = fn.resize(images, resize_x=size, resize_y=size)
    else:
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB, **mixed)
        if on_host:
            return images, None
        images = fn.resize(images, resize_shorter=augmentation.val_resize)
        mirror = 0
    if normalize:
        images = fn.crop_mirror_normalize(images, crop=(size, size), mirror=mirror, dtype=types.FLOAT,
                                          output_layout="CHW", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    else:  # without mean/std this is a centre crop + mirror that keeps uint8 HWC
        images = fn.crop_mirror_normalize(images, crop=(size, size), mirror=mirror, dtype=types.UINT8,
                                          output_layout="HWC")
    return images, None


def create_dali_pipeline(shards: SplitShards, **options):
    """``define_dali_pipeline(shards, **options)``, built (memory allocated, threads started)."""
    pipeline = define_dali_pipeline(shards, **options)
    pipeline.build()
    return pipeline


def define_dali_pipeline(shards: SplitShards, *, training: bool, batch_size: int, rank: int, world_size: int,
                         device_id: int | None, seed: int, num_threads: int, augmentation: Augmentation,
                         normalize: bool, shuffle_buffer: int, hw_decoder_load: float,
                         preallocate_hint: tuple[int, int], with_sample_ids: bool):
    """The DALI pipeline reading rank ``rank``'s part, defined (every operator argument checked
    against DALI's schema) but not built; outputs (images[, mirror], padded .cls[, padded .json]),
    ``mirror`` only for training on the CPU (see ``image_graph``)."""
    from nvidia.dali import fn, pipeline_def

    extensions = ["jpg", "cls"] + (["json"] if with_sample_ids else [])

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=derive_seed(seed=seed, rank=rank, stream=0))
    def pipeline():
        members = fn.readers.webdataset(
            paths=shards.tar_paths, index_paths=shards.index_paths, ext=extensions,
            missing_component_behavior="error", name="reader", shard_id=rank, num_shards=world_size,
            # pad_last_batch ends each pass over a part on a batch boundary, so an epoch never
            # borrows samples from the next one; val always reads the same part, unshuffled.
            pad_last_batch=True, stick_to_shard=not training, random_shuffle=training,
            initial_fill=shuffle_buffer, seed=derive_seed(seed=seed, rank=rank, stream=1))
        jpegs, others = members[0], members[1:]
        images, mirror = image_graph(jpegs, training=training, augmentation=augmentation,
                                     decoder_device="cpu" if device_id is None else "mixed", normalize=normalize,
                                     hw_decoder_load=hw_decoder_load, preallocate_hint=preallocate_hint)
        flips = () if mirror is None else (mirror,)
        return (images, *flips, *(fn.pad(member, fill_value=0) for member in others))

    return pipeline()


class DaliLoader:
    """Iterates one epoch of ``steps`` batches ``(images, labels)`` (``(images, labels, ids)``
    with sample ids). Train drops the rest of the reader's pass; val pads with label -1.
    ``host_augmentation`` (CPU decoder only) finishes the images in torch (``finish_on_host``)."""

    def __init__(self, pipeline, *, steps: int, training: bool, num_samples: int, rank: int, world_size: int,
                 batch_size: int, device: torch.device, normalize: bool,
                 host_augmentation: Augmentation | None = None):
        self.pipeline, self.steps, self.training = pipeline, steps, training
        self.host_augmentation, self.normalize = host_augmentation, normalize
        self.sizes = part_sizes(num_samples=num_samples, world_size=world_size)
        self.rank, self.world_size, self.batch_size, self.device = rank, world_size, batch_size, device
        self.dtype = torch.float32 if normalize else torch.uint8
        self.epoch = 0
        self._unread = 0  # reader batches of the current pass not yet run (an epoch left early)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        self._drain()
        part = epoch_part(rank=self.rank, world_size=self.world_size, epoch=self.epoch, stick_to_shard=not self.training)
        part_samples = self.sizes[part]
        self._unread = reader_batches(part_samples=part_samples, batch_size=self.batch_size)
        self.epoch += 1
        last = None
        for step in range(self.steps):
            if self._unread:
                last = self._run()
                self._unread -= 1
                batch = self._to_torch(last, first=step * self.batch_size, part_samples=part_samples)
            else:  # val only: this rank's part is a batch shorter than the largest part
                batch = self._to_torch(last, first=part_samples, part_samples=part_samples)
            yield batch
        self._drain()

    def _run(self):
        return self.pipeline.run()

    def _drain(self) -> None:
        # Runs the rest of the reader's pass so that the next epoch starts at its beginning.
        while self._unread:
            self._run()
            self._unread -= 1

    def _to_torch(self, outputs, *, first: int, part_samples: int):
        images, *members = outputs
        if self.host_augmentation is None:
            images = _images_to_torch(images, self.device, dtype=self.dtype)
        else:
            mirror = np.asarray(members.pop(0).as_tensor()) if self.training else None
            images = finish_on_host(images, mirror, training=self.training, augmentation=self.host_augmentation)
            images = to_normalized_nchw(images) if self.normalize else images
        labels = parse_ascii_labels(np.asarray(members[0].as_tensor()))
        if not self.training:  # padding duplicates are marked so that metrics skip them
            labels = np.where(first + np.arange(len(labels)) < part_samples, labels, -1)
        labels = torch.from_numpy(labels).to(self.device, non_blocking=True)
        if len(members) == 1:
            return images, labels
        texts = [bytes(row).rstrip(b"\0").decode() for row in np.asarray(members[1].as_tensor())]
        return images, labels, [json.loads(t).get("source", t) for t in texts]


def _images_to_torch(images, device: torch.device, *, dtype: torch.dtype) -> torch.Tensor:
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = images.as_tensor()
        out = torch.empty(dense.shape(), dtype=dtype, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    # DALI reuses its output buffers: copy before the next run overwrites them.
    return torch.from_numpy(np.array(images.as_tensor()))
