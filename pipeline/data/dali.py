"""The DALI backend: ``fn.readers.webdataset`` over the manifest's shards with their ``.idx``
files, sharded by rank, then one processing graph (a plain function) shared by the train and
val pipelines, and a loader that is built once per run and reads one epoch after another.

The pipeline is built at the loader's first read, for the epoch asked for: its seeds come from
that epoch's seed and its reader starts at that epoch's rank part; the reader then moves one part
on per epoch by itself (``stick_to_shard=False``). With ``enable_checkpointing`` DALI can save the
reader position and every random generator's state (``Pipeline.checkpoint()``); ``state_dict()``
carries it, so a run resumed from a checkpoint reads exactly the batches it would have read."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..mix.staging import to_device
from ..seeds import DALI_PIPELINE_STREAM, DALI_READER_STREAM, epoch_seed, stream_seed
from .augment import Augmentation, check_train_size
from .checks import LoaderError, SplitShards
from .epochs import EpochLoader, as_saved
from .host_resize import finish_on_host
from .labels import check_label_range, dali_place, parse_ascii_labels
from .sharding import epoch_part, part_sizes, reader_batches

# Reader batches of a pass left unread at an epoch's end: a whole epoch leaves at most 1 (the
# smallest part decides the steps, parts differ by one sample, pad_last_batch rounds up; checked
# by brute force in tests/test_loader_sharding.py), which is run to reach the next pass. More
# means the epoch was cut short (run.max_train_steps): then the pipeline is built anew for the
# next epoch from its seed (a pure function of the epoch, like the rest) instead of decoding the
# rest of the pass.
DRAIN_LIMIT = 1

# The version of define_dali_pipeline's operators, in the loader's fingerprint: 2 reads every
# image's header before decoding it (1, unnamed, did not; its CIFAR training graph read sizes).
DALI_GRAPH = 2


def decoder_for(device: torch.device) -> str:
    """The one place that decides where DALI decodes: "mixed" (nvJPEG, outputs on the GPU) for a
    CUDA device, "cpu" otherwise (then the graph stops after decoding; see ``image_graph``)."""
    return "mixed" if device.type == "cuda" else "cpu"


def output_names(*, training: bool, sample_ids: bool, sizes: bool = False) -> tuple[str, ...]:
    """The pipeline's outputs, by name, whatever the decoder: ``mirror`` (the drawn flips) for
    training only, ``ids`` (each sample's ``.json``) only when asked, ``sizes`` (each encoded
    image's HWC shape, read from its header) where the augmentation checks training sizes."""
    return (("images",) + (("mirror",) if training else ()) + ("labels",) + (("ids",) if sample_ids else ())
            + (("sizes",) if sizes else ()))


def reads_sizes(*, training: bool, augmentation: Augmentation) -> bool:
    """Whether the pipeline outputs ``sizes`` (``augment.check_train_size``)."""
    return training and augmentation.checks_train_sizes


def finishes_on_host(decoder: str, augmentation: Augmentation) -> bool:
    """Whether the graph stops after decoding and ``host_resize.finish_on_host`` does the rest:
    ImageNet-style resizing with the CPU decoder (DALI's CPU resize is the slowest step there).
    The CIFAR ops (pad, crop, flip) are cheap in DALI on either device."""
    return decoder == "cpu" and augmentation.kind == "imagenet"


def image_graph(images_encoded, *, training: bool, augmentation: Augmentation, decoder: str,
                hw_decoder_load: float, preallocate_hint: tuple[int, int]):
    """Decode a batch of encoded images (JPEG or PNG) and augment them as ``augmentation.kind``
    says, into uint8 HWC; returns ``(images, mirror)``, ``mirror`` the drawn flips (train) or
    None (val). Where ``finishes_on_host``, ``images`` are the decoded crops (train) or whole
    images (val) and the host resizes and applies ``mirror``."""
    gpu = {}
    if decoder == "mixed":
        gpu = {"hw_decoder_load": hw_decoder_load}
        if preallocate_hint[0] > 0:
            gpu.update(preallocate_width_hint=preallocate_hint[0], preallocate_height_hint=preallocate_hint[1])
    graph = _cifar_graph if augmentation.kind == "cifar" else _imagenet_graph
    return graph(images_encoded, training=training, augmentation=augmentation, decoder=decoder, gpu=gpu)


def _imagenet_graph(jpegs, *, training: bool, augmentation: Augmentation, decoder: str, gpu: dict):
    from nvidia.dali import fn, types

    size = augmentation.image_size
    mirror = None
    if training:
        # Decoding only the crop window (ROI decode) is what makes the crop cheap.
        images = fn.decoders.image_random_crop(
            jpegs, device=decoder, output_type=types.RGB, num_attempts=100,
            random_area=list(augmentation.random_area), random_aspect_ratio=list(augmentation.random_aspect_ratio),
            **gpu)
        mirror = fn.random.coin_flip(probability=augmentation.flip_probability)
        if finishes_on_host(decoder, augmentation):
            return images, mirror
        images = fn.resize(images, resize_x=size, resize_y=size)
    else:
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **gpu)
        if finishes_on_host(decoder, augmentation):
            return images, None
        images = fn.resize(images, resize_shorter=augmentation.val_resize)
    # Without mean/std this is a centre crop + mirror that keeps uint8 HWC.
    images = fn.crop_mirror_normalize(images, crop=(size, size), mirror=0 if mirror is None else mirror,
                                      dtype=types.UINT8, output_layout="HWC")
    return images, mirror


def _cifar_graph(encoded, *, training: bool, augmentation: Augmentation, decoder: str, gpu: dict):
    from nvidia.dali import fn, types

    size, pad = augmentation.image_size, augmentation.padding
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, **gpu)
    if not training:
        return fn.crop(images, crop=(size, size), out_of_bounds_policy="pad", fill_values=0), None
    # Zero padding + a random crop in one slice: the window's corner is drawn uniformly from the
    # (2 * pad + 1)^2 integer offsets in [-pad, pad] (torchvision's RandomCrop(size, padding)).
    corner = fn.random.uniform(values=[float(v) for v in range(-pad, pad + 1)], shape=[2])
    images = fn.slice(images, corner, [float(size), float(size)], axes=[0, 1], normalized_anchor=False,
                      normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
    mirror = fn.random.coin_flip(probability=augmentation.flip_probability)
    return fn.flip(images, horizontal=mirror), mirror


def define_dali_pipeline(shards: SplitShards, *, training: bool, batch_size: int, rank: int, world_size: int,
                         decoder: str, device_id: int | None, seed: int, part: int, num_threads: int,
                         augmentation: Augmentation, shuffle_buffer: int, hw_decoder_load: float,
                         preallocate_hint: tuple[int, int], sample_ids: bool, checkpoint: bytes | None = None):
    """The DALI pipeline of one rank, defined (every operator argument checked against DALI's
    schema) but not built. Its reader starts at rank part ``part``; ``seed`` is the seed of the
    epoch it is built for; ``checkpoint`` (from ``Pipeline.checkpoint()``) restores a position.
    Outputs: ``output_names(training, sample_ids, sizes=reads_sizes(...))``."""
    from nvidia.dali import fn, pipeline_def, types

    # "jpg;png": a sample's image is its .jpg or its .png member (CIFAR is stored losslessly).
    extensions = ["jpg;png", "cls"] + (["json"] if sample_ids else [])

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, enable_checkpointing=True,
                  seed=stream_seed(seed=seed, rank=rank, stream=DALI_PIPELINE_STREAM))
    def pipeline():
        members = fn.readers.webdataset(
            paths=shards.tar_paths, index_paths=shards.index_paths, ext=extensions,
            missing_component_behavior="error", name="reader", shard_id=part, num_shards=world_size,
            # pad_last_batch ends each pass over a part on a batch boundary, so an epoch never
            # borrows samples from the next one; val always reads the same part, unshuffled.
            pad_last_batch=True, stick_to_shard=not training, random_shuffle=training,
            initial_fill=shuffle_buffer, seed=stream_seed(seed=seed, rank=rank, stream=DALI_READER_STREAM))
        encoded, others = members[0], members[1:]
        # DALI 2.4's CPU image decoder crashes the process (SIGSEGV in ImageDecoder<CPUBackend>, in a
        # third of the runs on a JPEG whose markers were overwritten) where peek_image_shape, reading
        # the same header, fails cleanly. Feeding the decoder through a reshape to the same shape (no
        # copy) whose argument comes from the peek makes DALI run the peek first: a damaged header
        # stops the pipeline with an error, never the process. The peek also gives the CIFAR sizes.
        # The extent is the wildcard -1 (DALI fills in the byte count): a factor of 1.0 went through
        # a float32 product and refused every file over 16 MiB of an odd size.
        shapes = fn.peek_image_shape(encoded)
        encoded = fn.reshape(encoded, rel_shape=fn.cast(shapes[0:1] * 0 - 1, dtype=types.FLOAT))
        images, mirror = image_graph(encoded, training=training, augmentation=augmentation, decoder=decoder,
                                     hw_decoder_load=hw_decoder_load, preallocate_hint=preallocate_hint)
        flips = () if mirror is None else (mirror,)
        sizes = (shapes,) if reads_sizes(training=training, augmentation=augmentation) else ()
        return (images, *flips, *(fn.pad(member, fill_value=0) for member in others), *sizes)

    return pipeline(checkpoint=checkpoint) if checkpoint is not None else pipeline()


class DaliLoader(EpochLoader):
    """Epochs of ``steps`` batches ``(images, labels)`` (``(images, labels, ids)`` with sample
    ids, ``(images, labels, records)`` with ``metadata``: each sample's ``.json`` as a dict): uint8 NHWC images and int64 labels on ``device``. Train drops the rest of the reader's
    pass (read, not used: the next epoch must start at the next pass); val pads with label -1.
    ``restore`` is a ``state_dict()`` of the same loader in an earlier process."""

    def __init__(self, shards: SplitShards, *, training: bool, batch_size: int, steps: int, rank: int,
                 world_size: int, device: torch.device, seed: int, num_threads: int, shuffle_buffer: int,
                 augmentation: Augmentation, hw_decoder_load: float, preallocate_hint: tuple[int, int],
                 sample_ids: bool = False, metadata: bool = False, restore: dict | None = None):
        super().__init__(steps)
        self.metadata = metadata
        self.decoder = decoder_for(device)
        if self.decoder == "mixed" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.shards, self.training, self.batch_size, self.device = shards, training, batch_size, device
        self.rank, self.world_size, self.seed, self.augmentation = rank, world_size, seed, augmentation
        self.names = output_names(training=training, sample_ids=sample_ids or metadata,
                                  sizes=reads_sizes(training=training, augmentation=augmentation))
        self._define = dict(
            training=training, batch_size=batch_size, rank=rank, world_size=world_size, decoder=self.decoder,
            device_id=device.index if self.decoder == "mixed" else None, num_threads=num_threads,
            augmentation=augmentation, shuffle_buffer=shuffle_buffer, hw_decoder_load=hw_decoder_load,
            preallocate_hint=preallocate_hint, sample_ids=sample_ids or metadata)
        self.sizes = part_sizes(num_samples=shards.num_samples, world_size=world_size)
        self.pipeline = None
        self.built_for_epoch: int | None = None
        self._unread = 0  # reader batches of the open pass not yet run
        self._last = None  # the last outputs run (val pads with them)
        self.folder = Path(shards.tar_paths[0]).parent  # what an error tells to verify
        self._saved = self._restore(restore)
        if self._saved is not None:
            self._unread = self._saved["unread"]

    def fingerprint(self) -> dict:
        """What a saved state must have been made with to apply to this loader."""
        values = {"backend": "dali", "decoder": self.decoder, "training": self.training,
                  "batch_size": self.batch_size, "steps": self.steps, "rank": self.rank, "world_size": self.world_size,
                  "seed": self.seed, "shuffle_buffer": self._define["shuffle_buffer"],
                  "augmentation": asdict(self.augmentation), "shards": self.shards.listing()}
        if reads_sizes(training=self.training, augmentation=self.augmentation):
            values["reads_sizes"] = True
        # A DALI state restores only into a graph of the same operators: states of an earlier graph
        # (no "graph": before the header check) are not used (EpochLoader._restore says why).
        values["graph"] = DALI_GRAPH
        return as_saved(values)

    def state_dict(self) -> dict:
        checkpoint = self.pipeline.checkpoint() if self.pipeline is not None else None
        return {**super().state_dict(), "unread": self._unread, "built_for_epoch": self.built_for_epoch,
                "dali": None if checkpoint is None else base64.b64encode(checkpoint).decode("ascii")}

    def _forget_state(self) -> None:
        super()._forget_state()
        self._saved, self._unread = None, 0

    def _read(self, epoch: int, start_step: int):
        continuing = self.cursor.continues(epoch, start_step)
        if not continuing and self._unread > DRAIN_LIMIT:
            self._release()  # an epoch cut short: build anew for this epoch rather than decode the rest
        if self.pipeline is None:
            self._build(epoch)
        if not continuing:
            self._drain()
            self.cursor.begin(epoch)
            self._unread = reader_batches(part_samples=self._part_samples(epoch), batch_size=self.batch_size)
            for _ in range(start_step):  # a resume without a saved DALI state: read, not used
                self._next_batch()
        while self.cursor.consumed < self.steps:
            batch = self._next_batch()
            yield batch
        self._drain()
        self.cursor.close()

    def _build(self, epoch: int) -> None:
        saved, checkpoint = self._saved, None
        if saved is not None and saved["dali"] is not None:
            epoch, checkpoint = saved["built_for_epoch"], base64.b64decode(saved["dali"])
        part = epoch_part(rank=self.rank, world_size=self.world_size, epoch=epoch, stick_to_shard=not self.training)
        self.pipeline = define_dali_pipeline(self.shards, seed=epoch_seed(self.seed, epoch), part=part,
                                             checkpoint=checkpoint, **self._define)
        self.pipeline.build()
        self.built_for_epoch, self._saved = epoch, None

    def _release(self) -> None:
        """Drop the pipeline (its threads and buffers) and any saved state of it."""
        self.pipeline, self._saved, self._unread, self._last = None, None, 0, None

    def _part_samples(self, epoch: int) -> int:
        return self.sizes[epoch_part(rank=self.rank, world_size=self.world_size, epoch=epoch,
                                     stick_to_shard=not self.training)]

    def _next_batch(self):
        try:
            return self._read_batch()
        except LoaderError:
            # A shard that does not read or decode, a bad label: the pipeline is of no more use,
            # and its threads must not outlive the error. The error's traceback keeps this loader
            # alive (until a garbage collection), and a process forked while DALI's threads run (a
            # torch DataLoader's workers) inherits their locks mid-use: such workers segfaulted or hung.
            self._release()
            raise

    def _read_batch(self):
        step, part_samples = self.cursor.consumed, self._part_samples(self.cursor.open_epoch)
        if self._unread:
            self._last = self._run()
            first = step * self.batch_size
        else:  # val only: this rank's part is a batch shorter than the largest part
            first = part_samples
        self.cursor.consumed += 1
        return self._to_torch(self._last, first=first, part_samples=part_samples)

    def _run(self):
        self._unread -= 1
        try:
            return dict(zip(self.names, self.pipeline.run()))
        except RuntimeError as error:  # DALI stops at what it cannot read or decode, naming its operator
            raise LoaderError(f"DALI could not read the shards in {self.folder}: {_dali_cause(error)}; a shard may "
                              f"be damaged (python -m shards verify {self.folder} --decode finds it)") from None

    def _drain(self) -> None:
        # Runs the rest of the reader's pass so that the next epoch starts at its beginning.
        while self._unread:
            self._run()

    def _to_torch(self, outputs: dict, *, first: int, part_samples: int):
        if finishes_on_host(self.decoder, self.augmentation):
            mirror = np.asarray(outputs["mirror"].as_tensor()) if self.training else None
            images = finish_on_host(outputs["images"], mirror, training=self.training,
                                    augmentation=self.augmentation)
        elif self.decoder == "cpu":  # DALI reuses its output buffers: copy before the next run
            images = torch.from_numpy(np.array(outputs["images"].as_tensor()))
        else:
            images = _gpu_images_to_torch(outputs["images"], self.device)
        members = outputs["labels"]

        def source(row: int) -> str:  # only asked for when a label is wrong
            return dali_place(members[row].source_info())

        labels = parse_ascii_labels(np.asarray(members.as_tensor()), source=source,
                                    folder=self.folder)
        if "sizes" in outputs:  # per batch: one comparison of the whole [B, 3] array, the message for the first misfit
            sizes = np.asarray(outputs["sizes"].as_tensor())
            misfits = np.flatnonzero((sizes[:, :2] != self.augmentation.image_size).any(axis=1))
            if misfits.size:
                row = int(misfits[0])
                check_train_size(self.augmentation, height=int(sizes[row, 0]), width=int(sizes[row, 1]),
                                 where=source(row))
        if not self.training:  # padding duplicates are marked so that metrics skip them
            labels = np.where(first + np.arange(len(labels)) < part_samples, labels, -1)
        # Checked here, on the host, where it costs no device sync.
        check_label_range(labels, num_classes=self.shards.num_classes, allow_padding=not self.training, source=source)
        # Through reused pinned memory: a non_blocking copy from pageable memory may still wait
        # for the GPU's stream (CUDA stages it), and the host must keep ahead of the GPU.
        labels = to_device(np.ascontiguousarray(labels, dtype=np.int64), self.device)
        if "ids" not in outputs:
            return images, labels
        records = [json.loads(bytes(row).rstrip(b"\0").decode()) for row in np.asarray(outputs["ids"].as_tensor())]
        return images, labels, records if self.metadata else [r.get("source") for r in records]


def _dali_cause(error: RuntimeError) -> str:
    """The line of a DALI pipeline error that says what went wrong (after "encountered:"; the rest
    is the pipeline definition's traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        cause = lines[lines.index("encountered:") + 1]
        # The header check before every decode (define_dali_pipeline) is what usually fails first.
        return f"an image's header does not parse ({cause})" if "peek_image_shape" in str(error) else cause
    return lines[0] if lines else type(error).__name__


def _gpu_images_to_torch(images, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = images.as_tensor()
    out = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
    return out


__all__ = ["DaliLoader", "LoaderError", "decoder_for", "define_dali_pipeline", "finishes_on_host", "image_graph",
           "output_names", "reads_sizes"]
