"""``run.mixed_precision=auto``: bf16 where the process computes on a GPU, full precision elsewhere
(a CPU without native bf16 takes minutes per ResNet-50 step in bf16)."""

from __future__ import annotations

import torch


def resolve_precision(setting: str) -> str:
    """Accelerate's ``mixed_precision`` for a configured ``setting`` ("auto", "bf16" or "no")."""
    if setting != "auto":
        return setting
    return "bf16" if computes_on_cuda() else "no"


def computes_on_cuda() -> bool:
    """Whether Accelerate will put this process on a GPU: one is visible, and the run is not sent
    to the CPU by ACCELERATE_USE_CPU (what ``accelerate launch --cpu`` and slurm/imagenet_cutmix.sh
    without GPUs set), which Accelerate itself reads. A visible GPU alone is not enough: a CPU run
    on a GPU node would otherwise compute in bf16 on the CPU."""
    from accelerate.utils import parse_flag_from_env

    return torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
