"""SGD (momentum, Nesterov) with the lr scaled to the global batch, and torch's lr schedulers
(step decay at epochs, or cosine; optional linear warmup), stepped once per optimizer update."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def scaled_lr(*, base_lr: float, global_batch: int, reference_batch: int) -> float:
    """The linear scaling rule: ``base_lr * global_batch / reference_batch``."""
    return base_lr * global_batch / reference_batch


def parameter_groups(model: torch.nn.Module, *, weight_decay: float, decay_norm_and_bias: bool,
                     spare_named: bool = True) -> list[dict]:
    """One group, or two with no weight decay on 1-d parameters (norm weights, biases) and, with
    ``spare_named``, on those the model names in its ``no_weight_decay()`` (timm's ViTs:
    ``cls_token``, ``pos_embed``; Swin's position bias tables; XCiT's ``pos_embed.*`` patterns), as
    timm's ``param_groups_weight_decay`` does. Not that helper itself: it lists the groups the other
    way round, and a checkpoint's SGD state is per group, in order. ``spare_named=False``: the rule
    before these names (1-d only), for checkpoints made by it (``legacy_groups``)."""
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    named = _no_weight_decay(model) if spare_named else set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            spared = parameter.ndim <= 1 or any(fnmatch.fnmatch(name, pattern) for pattern in named)
            (no_decay if spared else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _no_weight_decay(model: torch.nn.Module) -> set[str]:
    """The names (fnmatch patterns, as timm reads them) of ``model.no_weight_decay()``; none without it."""
    return set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()


def legacy_groups(model: torch.nn.Module, *, checkpoint: Path | None, decay_norm_and_bias: bool) -> bool:
    """Whether the SGD state of ``checkpoint`` was grouped by the rule before ``no_weight_decay()``
    was read (a ViT run with ``decay_norm_and_bias=false`` from before it): its group sizes are that
    rule's and not the new one's. Its resume then keeps that grouping; loading the state into the
    new groups failed on their sizes, for every checkpoint of the run."""
    if checkpoint is None or decay_norm_and_bias or not _no_weight_decay(model):
        return False
    sizes = {spare: [len(group["params"]) for group in parameter_groups(model, weight_decay=0.0,
                                                                        decay_norm_and_bias=False,
                                                                        spare_named=spare)]
             for spare in (True, False)}
    if sizes[True] == sizes[False]:
        return False
    from accelerate.utils.constants import OPTIMIZER_NAME

    try:  # the file Accelerate's save_state writes for a run's one optimizer
        saved = torch.load(Path(checkpoint) / f"{OPTIMIZER_NAME}.bin", map_location="cpu", weights_only=True)
        return [len(group["params"]) for group in saved["param_groups"]] == sizes[False]
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError):  # resume's load says what is wrong
        return False


def fused_sgd_available(device: torch.device | str) -> bool:
    """Whether torch has a fused SGD kernel for ``device`` (CPU and CUDA have, since torch 2.4);
    torch's own list, the one ``SGD(fused=True)`` checks its parameters against at the first step."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return torch.device(device).type in _get_fused_kernels_supported_devices()


def create_optimizer(model: torch.nn.Module, *, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                     decay_norm_and_bias: bool, fused: bool = False, spare_named: bool = True) -> torch.optim.SGD:
    """SGD over ``model``'s parameters at the already scaled ``lr``; ``fused``: one kernel for the
    whole update (the parameters must then be, by the first step, on a device of ``fused_sgd_available``);
    ``spare_named``: as ``parameter_groups``."""
    groups = parameter_groups(model, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias,
                              spare_named=spare_named)
    # fused=None, not False, otherwise: torch then picks its default (foreach on CUDA).
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           fused=True if fused else None)


def keep_kernel_choice(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: torch takes every group setting from the checkpoint, ``fused``
    included, so a checkpoint of another device or ``optim.fused`` would decide the kernel; the
    run's own choice (its ``defaults``, which loading leaves alone) is put back."""
    for group in optimizer.param_groups:
        group["fused"] = optimizer.defaults["fused"]


def create_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int, steps_per_epoch: int,
                     milestones: tuple[int, ...], decay_factor: float, warmup_epochs: float,
                     warmup_start_factor: float, min_lr: float) -> LRScheduler:
    """A torch scheduler over updates: ``step`` multiplies the lr by ``decay_factor`` at each
    milestone epoch; ``cosine`` decays to ``min_lr`` after the warmup. Call ``.step()`` per update."""
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if name == "step":
        # Milestones are epochs of the whole run, warmup included.
        main = MultiStepLR(optimizer, milestones=[m * steps_per_epoch - warmup for m in milestones],
                           gamma=decay_factor)
    else:
        main = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=min_lr)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup])


def schedule_snapshot(optimizer, scheduler) -> dict:
    """The group settings (lr, momentum, weight decay, ...) and the scheduler's state as this run
    built them from its config, taken before a checkpoint's replace them (``follow_config``)."""
    return {"groups": [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
                       for group in optimizer.param_groups],
            "scheduler": copy.deepcopy(scheduler.state_dict())}


def follow_config(optimizer, scheduler, snapshot: dict, *, position: int) -> None:
    """After loading a checkpoint trained with other settings (``run.resume_with_changes``):
    loading replaced the group settings and the schedule with the checkpoint's (its lr, its
    milestones or cosine length, its global batch), so a changed lr, schedule or batch would
    otherwise be ignored, or a lengthened cosine run its lr back up past the old end. Put back
    ``snapshot``'s (this config's) and step the schedule ``position`` updates on from its start,
    as if the run had had these settings from the start; the momentum buffers stay the checkpoint's.
    Stepping is exact: the same float chain as training."""
    for group, built in zip(optimizer.param_groups, snapshot["groups"]):
        group.update(copy.deepcopy(built))
    scheduler.load_state_dict(copy.deepcopy(snapshot["scheduler"]))
    with warnings.catch_warnings():  # "step() before optimizer.step()": no update is made here
        warnings.simplefilter("ignore")
        for _ in range(position):
            scheduler.step()
