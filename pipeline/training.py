"""One training epoch: loader -> MixSampler/apply_mix -> model -> soft-target CE -> backward -> step.

Nothing in the per-step path waits for the device: labels were range-checked by the loader on
the host, the loss is summed on the device and shown from an asynchronous copy, and the stop
flag is agreed over a CPU group (``stopping.StopRequest``), so the host can run ahead of the GPU."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .logs import Progress
from .mix import MixSampler, apply_mix, mix_targets, resolve_mix, soft_target_cross_entropy
from .mix.params import image_holes


@dataclass
class MixOptions:
    """What ``apply_mix`` needs besides the batch and its randomness."""

    mean: tuple[float, ...]  # normalization, [0, 1] units
    std: tuple[float, ...]  # normalization, [0, 1] units
    num_classes: int  # width of the soft targets
    label_smoothing: float  # applied to each one-hot before mixing
    out_dtype: torch.dtype  # bf16 under bf16 mixed precision: half the bytes written
    memory_format: torch.memory_format  # channels_last to match the model
    features: object = None  # a mix.feature.FeatureMixer for the feature-level modes, else None
    layer_shapes: dict | None = None  # (height, width) of each layer the feature-level modes mix at


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did on this rank; ``loss_sum`` is still on the device."""

    steps: int = 0  # updates run in this call (skipped ones not counted)
    last_step: int = 0  # index of the next step in the epoch (== steps_per_epoch when complete)
    loss_sum: torch.Tensor | None = None  # sum of per-step mean losses
    images: int = 0  # samples of this rank that went through the model
    step_seconds: float = 0.0  # wall time of the steps (data wait included)
    wait_seconds: float = 0.0  # wall time spent waiting for the loader
    stop_requested: bool = False  # every rank learnt of a stop signal during this epoch
    stopped: bool = False  # ... and the epoch ended early because of it
    # The lr of the latest update (the scheduler steps after each, so the optimizer's own lr is
    # already the next update's: at an epoch's end, the next epoch's, one milestone early).
    lr: float | None = None


class LossReader:
    """The loss for the progress bar without a device sync: each log point copies the device
    scalar into pinned host memory behind a CUDA event; a later log point shows it once the copy
    has landed (``query`` never waits). On the CPU the copy is immediate."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), dtype=torch.float32, pin_memory=self.cuda)
        self.event = None
        self.shown: float | None = None

    def push(self, loss: torch.Tensor) -> None:
        """Start copying ``loss`` (unless the previous copy is still in flight)."""
        if self.event is not None and not self.event.query():
            return
        self.latest()
        self.host.copy_(loss.detach(), non_blocking=True)
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.event = _Done()

    def latest(self) -> float | None:
        """The newest loss whose copy has finished (None before the first)."""
        if self.event is not None and self.event.query():
            self.shown, self.event = float(self.host), None
        return self.shown


class _Done:
    """A completed event: CPU copies are synchronous."""

    @staticmethod
    def query() -> bool:
        return True


def train_one_epoch(*, model, optimizer, scheduler, batches, steps: int, sampler: MixSampler, accelerator,
                    mix: MixOptions, start_step: int, carried_loss: float, stop, progress: Progress,
                    log_every: int, color=None) -> EpochResult:
    """Run steps ``start_step..steps-1`` of an epoch on ``batches`` (the loader's batches from
    ``start_step``), each batch colour-augmented first when ``color`` (a ``ColorAugment``) is given.
    The mix (and colour) parameters of the first ``start_step`` steps (done before a resume)
    are drawn and dropped, so that every later draw is the one an uninterrupted run makes.
    ``carried_loss`` is this rank's loss sum over those steps (saved with the checkpoint), so the
    epoch's mean loss is the uninterrupted one."""
    # torch.full, not torch.tensor(value, device=...): that one copies a host scalar to the GPU
    # synchronously (a host sync, refused by set_sync_debug_mode("error")); a fill is a launch.
    result = EpochResult(loss_sum=torch.full((), float(carried_loss), dtype=torch.float32, device=accelerator.device),
                         last_step=start_step)
    loss_reader = LossReader(accelerator.device)
    tick = time.perf_counter()
    for step in range(start_step, steps):
        images, labels = next(batches)[:2]
        shape = dict(batch_size=images.shape[0], height=images.shape[1], width=images.shape[2])
        if step == start_step:
            for _ in range(start_step):
                sampler.sample(**shape)
                if color is not None:
                    color.draw(shape["batch_size"])
        params = sampler.sample(**shape)
        # The colour change as per-image maps, applied by apply_mix in its pass over the batch.
        maps = None if color is None else color.maps(images, color.draw(shape["batch_size"]))
        loaded = time.perf_counter()
        result.lr = optimizer.param_groups[0]["lr"]  # a Python float: no device sync
        loss = train_step(model=model, optimizer=optimizer, scheduler=scheduler, images=images, labels=labels,
                          params=params, accelerator=accelerator, mix=mix, color=maps)
        result.loss_sum += loss.detach()
        result.steps, result.last_step, result.images = result.steps + 1, step + 1, result.images + len(labels)
        now = time.perf_counter()
        result.wait_seconds += loaded - tick
        result.step_seconds += now - tick
        tick = now
        if result.steps % log_every == 0 or step + 1 == steps:
            loss_reader.push(loss)
            _show(progress, result, steps=result.steps % log_every or log_every, loss=loss_reader.latest(),
                  world_size=accelerator.num_processes)
        if stop.poll():
            stop.honour()
            result.stop_requested, result.stopped = True, step + 1 < steps
            break
    return result


def train_step(*, model, optimizer, scheduler, images, labels, params, accelerator, mix: MixOptions,
               color=None) -> torch.Tensor:
    """One update on a uint8 NHWC batch; returns the (mean) loss, on the device. ``params.layer``
    set: the batch is only normalized here and the layer's output is mixed in the forward pass.
    ``color``: the batch's colour maps (``ColorAugment.maps``), or None."""
    # A layer's draw: the images get only their Cutout holes (Cutout + Manifold Mixup), if any.
    image_params = params if params.layer is None else image_holes(params)
    # check_labels=False: the loader checked the labels on the host (a check here is a device sync).
    inputs, targets = apply_mix(images, labels, params=image_params, mean=mix.mean, std=mix.std,
                                num_classes=mix.num_classes, label_smoothing=mix.label_smoothing,
                                out_dtype=mix.out_dtype, memory_format=mix.memory_format, check_labels=False,
                                color=color)
    if params.layer is None:
        with accelerator.autocast():
            logits = model(inputs)
    else:
        height, width = mix.layer_shapes[params.layer]
        resolved = resolve_mix(params, batch_size=images.shape[0], height=height, width=width)
        targets = mix_targets(labels, resolved, num_classes=mix.num_classes, label_smoothing=mix.label_smoothing)
        with mix.features.mixing(params.layer, resolved), accelerator.autocast():
            logits = model(inputs)
    loss = soft_target_cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    return loss


def _show(progress: Progress, result: EpochResult, *, steps: int, loss: float | None, world_size: int) -> None:
    seconds = max(result.step_seconds, 1e-9)
    progress.update(steps, loss="..." if loss is None else f"{loss:.3f}", lr=f"{result.lr:.3g}",
                    img_s=f"{result.images * world_size / seconds:.0f}",
                    wait=f"{100 * result.wait_seconds / seconds:.0f}%")
