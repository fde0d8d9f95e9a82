"""Preemption: SIGUSR1 (Slurm's warning before the time limit: ``--signal=B:USR1@300`` in slurm/imagenet_cutmix.sh) and SIGTERM
(preemption, ``scancel``) only set a flag; the training loop checks it between steps, saves a
checkpoint and exits 0, so the process never dies in the middle of a step or a save."""

from __future__ import annotations

import signal

import torch

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs the handlers; ``should_stop`` tells every rank at once whether any rank got one."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def should_stop(self, accelerator) -> bool:
        """True on every rank when any rank received a stop signal. A collective: all ranks must
        call it at the same step (a small all-reduce and, on CUDA, a host sync; with one process
        neither: this runs every step)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
