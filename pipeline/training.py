"""One training epoch: loader -> MixSampler/apply_mix -> model -> soft-target CE -> backward -> step."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .logs import Progress
from .mix import MixSampler, apply_mix, soft_target_cross_entropy


@dataclass
class MixOptions:
    """What ``apply_mix`` needs besides the batch and its randomness."""

    mean: tuple[float, ...]  # normalization, [0, 1] units
    std: tuple[float, ...]  # normalization, [0, 1] units
    num_classes: int  # width of the soft targets
    label_smoothing: float  # applied to each one-hot before mixing
    out_dtype: torch.dtype  # bf16 under bf16 mixed precision: half the bytes written
    memory_format: torch.memory_format  # channels_last to match the model


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did on this rank; ``loss_sum`` is still on the device."""

    steps: int = 0  # updates run in this call (skipped ones not counted)
    last_step: int = 0  # index of the next step in the epoch (== steps_per_epoch when complete)
    loss_sum: torch.Tensor | None = None  # sum of per-step mean losses
    images: int = 0  # samples of this rank that went through the model
    step_seconds: float = 0.0  # wall time of the steps (data wait included)
    wait_seconds: float = 0.0  # wall time spent waiting for the loader
    stopped: bool = False  # a stop signal ended the epoch early


def train_one_epoch(*, model, optimizer, scheduler, loader, steps: int, sampler: MixSampler, accelerator,
                    mix: MixOptions, start_step: int, carried_loss: float, stop, progress: Progress,
                    log_every: int) -> EpochResult:
    """Run steps ``start_step..steps-1`` of an epoch. The first ``start_step`` batches (done before a
    resume) are read and their mix parameters drawn, but not trained on, so that every later batch
    and draw is the one an uninterrupted run would see. ``carried_loss`` is this rank's loss sum over
    those steps (saved with the checkpoint), so the epoch's mean loss is the uninterrupted one."""
    result = EpochResult(loss_sum=torch.tensor(carried_loss, device=accelerator.device), last_step=start_step)
    batches = iter(loader)
    tick = time.perf_counter()
    for step in range(steps):
        images, labels = next(batches)[:2]
        params = sampler.sample(batch_size=images.shape[0], height=images.shape[1], width=images.shape[2])
        if step < start_step:
            tick = time.perf_counter()
            continue
        loaded = time.perf_counter()
        loss = train_step(model=model, optimizer=optimizer, scheduler=scheduler, images=images, labels=labels,
                          params=params, accelerator=accelerator, mix=mix)
        result.loss_sum += loss.detach()
        result.steps, result.last_step, result.images = result.steps + 1, step + 1, result.images + len(labels)
        now = time.perf_counter()
        result.wait_seconds += loaded - tick
        result.step_seconds += now - tick
        tick = now
        if result.steps % log_every == 0 or step + 1 == steps:
            _show(progress, result, steps=result.steps % log_every or log_every,
                  loss=loss, optimizer=optimizer, world_size=accelerator.num_processes)
        if stop.should_stop(accelerator):
            result.stopped = step + 1 < steps
            break
    return result


def train_step(*, model, optimizer, scheduler, images, labels, params, accelerator, mix: MixOptions) -> torch.Tensor:
    """One update on a uint8 NHWC batch; returns the (mean) loss."""
    inputs, targets = apply_mix(images, labels, params=params, mean=mix.mean, std=mix.std,
                                num_classes=mix.num_classes, label_smoothing=mix.label_smoothing,
                                out_dtype=mix.out_dtype, memory_format=mix.memory_format)
    with accelerator.autocast():
        logits = model(inputs)
    loss = soft_target_cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    return loss


def _show(progress: Progress, result: EpochResult, *, steps: int, loss, optimizer, world_size: int) -> None:
    # .item() is a device sync: done every log_every steps only.
    seconds = max(result.step_seconds, 1e-9)
    progress.update(steps, loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                    img_s=f"{result.images * world_size / seconds:.0f}",
                    wait=f"{100 * result.wait_seconds / seconds:.0f}%")
