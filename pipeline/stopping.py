"""Preemption: SIGUSR1 (Slurm's warning before the time limit: ``--signal=B:USR1@300`` in
slurm/imagenet_cutmix.sh) and SIGTERM (preemption, ``scancel``) ask the run to stop: the
training loop finishes the step it is in, saves a checkpoint and exits 0. A step can be slow (a
CPU without native bf16, a hung collective), so a watchdog thread also ends the process, without
a checkpoint (the previous one stays valid), when a second SIGTERM arrives or when no step has
ended ``grace_seconds`` after the first signal.

The watchdog sees signals at once, even while the main thread is inside one long C++ call where
Python signal handlers cannot run: Python's C-level handler writes every signal number to a
wakeup fd (``signal.set_wakeup_fd``), and the thread reads it.

Under DDP all ranks must stop at the same step. Each step every rank posts its own flag in an
asynchronous all-reduce over a CPU (gloo) group and reads the result of the previous step's:
no device sync and no blocking collective per step; a stop takes effect one step later."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

import torch

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs the handlers and the watchdog; ``poll`` per step and ``agree`` between epochs tell
    every rank whether any rank was asked to stop; ``honour`` when the loop acts on it."""

    def __init__(self, *, grace_seconds: float, group=None) -> None:
        self.grace_seconds = grace_seconds
        self.group = group  # a gloo process group of all ranks, or None with one process
        self.received: int | None = None  # the first stop signal, set by the watchdog
        self._deadline: float | None = None  # end the process then, unless honoured before
        self._pending = None  # (work, flag) of the all-reduce posted at the previous poll
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        # A Python handler is needed for the C handler to write to the wakeup fd; it does nothing.
        self._previous = {sig: signal.signal(sig, _ignore) for sig in STOP_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._closing = False
        self._watchdog = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._watchdog.start()

    # ---- the training loop's side ----------------------------------------------------------
    def poll(self) -> bool:
        """Per step: True on every rank at the same step once any rank was asked to stop. With
        several processes this returns what the previous call posted (one step later)."""
        if self.group is None:
            return self.received is not None
        agreed = self._collect()
        if not agreed:
            self._post()
        return agreed

    def agree(self) -> bool:
        """Between epochs: the same answer on every rank, including a signal received just now
        (a blocking, CPU-only all-reduce; once per epoch)."""
        if self.group is None:
            return self.received is not None
        earlier = self._collect()
        self._post()
        return self._collect() or earlier

    def honour(self) -> None:
        """The loop is stopping: the grace period no longer applies (the checkpoint may take as long
        as it needs; a second SIGTERM still ends the process)."""
        self._deadline = None

    def close(self) -> None:
        """Finish any posted all-reduce, put back the handlers and the wakeup fd, stop the thread."""
        try:
            if self.group is not None:
                self._collect()
        finally:  # even when the group broke (another rank failed): the handlers go back
            self._restore()

    def _restore(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._closing = True
        os.write(self._write_fd, b"\0")  # wakes the watchdog, which then exits
        self._watchdog.join(timeout=5)
        os.close(self._write_fd)
        os.close(self._read_fd)

    def _post(self) -> None:
        import torch.distributed as dist

        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, group=self.group, async_op=True), flag)

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return int(flag[0]) > 0  # a CPU tensor: no device involved

    # ---- the watchdog thread --------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closing:
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            ready, _, _ = select.select([self._read_fd], [], [], timeout)
            if self._closing:
                return
            if not ready:  # the deadline passed without a step ending
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._end(f"no training step ended within run.stop_grace_seconds={self.grace_seconds:g} s "
                              f"after {signal.Signals(self.received).name}")
                continue
            for byte in os.read(self._read_fd, 64):
                self._on_signal(byte)

    def _on_signal(self, signum: int) -> None:
        if signum not in STOP_SIGNALS:
            return
        if self.received is None:
            self.received = signum
            self._deadline = time.monotonic() + self.grace_seconds
            print(f"{signal.Signals(signum).name} received: stopping after this step with a checkpoint "
                  "(a second SIGTERM ends the process at once)", file=sys.stderr, flush=True)
        elif signum == signal.SIGTERM:
            self._end("a second SIGTERM")

    def _end(self, why: str) -> None:
        signum = self.received or signal.SIGTERM
        print(f"error: {why}: ending now, without a checkpoint (the previous one is kept)", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)  # the code a process killed by that signal reports to its shell


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watchdog thread does the work."""
