"""Preemption: SIGUSR1 (Slurm's warning before the time limit: ``--signal=B:USR1@300`` in
slurm/imagenet_cutmix.sh) and SIGTERM (preemption, ``scancel``) ask the run to stop: the
training loop finishes the step it is in, saves a checkpoint and exits 0. A step can be slow (a
CPU without native bf16) or never end (a hung collective), so a watchdog thread also ends the
process, without a checkpoint (the previous one stays valid), when a second SIGTERM arrives or
when, after the signal, the run makes no progress (no step, evaluation batch or checkpoint save
ends) for ``grace_seconds``.

The watchdog sees signals at once, even while the main thread is inside one long C++ call where
Python signal handlers cannot run: Python's C-level handler writes every signal number to a
wakeup fd (``signal.set_wakeup_fd``), and the thread reads it. Forked children (DataLoader
workers) get the previous handlers back and no wakeup fd: a signal to a worker is not a stop.

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
# Slurm (proctrack/cgroup) signals every process of a step: the ranks, and the torchrun agent of
# `accelerate launch`, which passes the SIGTERM on to the ranks a moment later. A SIGTERM within
# this many seconds of the first is that copy, not a second request.
REPEAT_AFTER_SECONDS = 5.0

_active: StopRequest | None = None  # the one installed in this process (handlers are per process)


class StopRequest:
    """Installs the handlers and the watchdog (from the main thread); ``poll`` per step and
    ``agree`` between epochs tell every rank whether any rank was asked to stop; ``progress``
    marks work done; ``honour`` when the loop acts on the stop. Set ``group`` (a gloo group of all
    ranks) once the process group exists; None with one process."""

    def __init__(self, *, grace_seconds: float, group=None) -> None:
        global _active
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopRequest must be created in the main thread (signal handlers live there)")
        self.grace_seconds = grace_seconds
        self.group = group
        self.received: int | None = None  # the first stop signal, set by the watchdog
        self._received_at = 0.0
        self._deadline: float | None = None  # end the process then, unless there is progress first
        self._pending = None  # (work, flag) of the all-reduce posted at the previous poll
        self._loop_over = False  # settle() was called: the training loop has ended
        self._honoured = False  # the loop acted on a stop (this rank's signal or another's)
        self._closing = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        # A Python handler is needed for the C handler to write to the wakeup fd; it does nothing.
        self._previous = {sig: signal.signal(sig, _ignore) for sig in STOP_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        _active = self
        _reset_children_once()
        self._watchdog = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._watchdog.start()

    # ---- the training loop's side ----------------------------------------------------------
    def poll(self) -> bool:
        """Per step: True on every rank at the same step once any rank was asked to stop. With
        several processes this returns what the previous call posted (one step later)."""
        self.progress()
        if self.group is None:
            return self.received is not None
        agreed = self._collect()
        if not agreed:
            self._post()
        return agreed

    def agree(self) -> bool:
        """Between epochs: the same answer on every rank, including a signal received just now
        (a blocking, CPU-only all-reduce; once per epoch)."""
        self.progress()
        if self.group is None:
            return self.received is not None
        earlier = self._collect()
        self._post()
        return self._collect() or earlier

    def progress(self) -> None:
        """Work ended (a step, an evaluation batch, a checkpoint save): after a signal, the
        watchdog's grace period starts again from now."""
        if self._deadline is not None:
            self._deadline = time.monotonic() + self.grace_seconds

    def honour(self) -> None:
        """The loop is stopping: the grace period no longer applies (the checkpoint may take as
        long as it needs; a second SIGTERM still ends the process)."""
        self._deadline = None
        self._honoured = True

    def settle(self) -> None:
        """The training loop has ended: finish the all-reduce it posted while the process group
        still exists. The handlers stay until ``close``, after the last barrier and the group's
        end: a stop agreed on because another rank was signalled ends this loop at once, and this
        rank's own copy of the signal (Slurm signals every node) could then land after the
        handlers went back, where its default action killed the process (exit -15: the job
        failed after a good checkpoint; seen under load)."""
        self._loop_over = True
        self._deadline = None  # no steps to make progress with now: a slow export or barrier is not a hang
        if self.group is not None:
            self._collect()

    def close(self) -> None:
        """Finish any posted all-reduce, put back the handlers and the wakeup fd, stop the thread."""
        global _active
        try:
            if self.group is not None:
                self._collect()
        finally:  # even when the group broke (another rank failed): the handlers go back
            for sig, handler in self._previous.items():  # handlers first: no signal goes unhandled
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._previous_fd)
            _active = None
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
            deadline = self._deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._read_fd], [], [], timeout)
            if self._closing:
                return
            if ready:
                for byte in os.read(self._read_fd, 64):
                    self._on_signal(byte)
            elif self._deadline is not None and time.monotonic() >= self._deadline:
                self._end(f"no progress (a step, an evaluation batch, a checkpoint save) within "
                          f"run.stop_grace_seconds={self.grace_seconds:g} s after {signal.Signals(self.received).name}")

    def _on_signal(self, signum: int) -> None:
        if signum not in STOP_SIGNALS:
            return
        now = time.monotonic()
        if self.received is None:
            self.received, self._received_at = signum, now
            # After the loop (settle) no grace period: nothing marks progress there, and the
            # export or the last barrier may be slow; a second SIGTERM still ends the process.
            self._deadline = None if self._loop_over else now + self.grace_seconds
            if not self._loop_over:
                doing = "stopping after this step with a checkpoint"
            else:  # the loop ended: by a stop another rank's signal started, or at the run's end
                doing = "stopping with a checkpoint (already under way)" if self._honoured else \
                    "the training has ended, finishing"
            print(f"{signal.Signals(signum).name} received: {doing} "
                  f"(a SIGTERM sent again {REPEAT_AFTER_SECONDS:g} s or more later ends the process at once)",
                  file=sys.stderr, flush=True)
        elif signum == signal.SIGTERM and now - self._received_at >= REPEAT_AFTER_SECONDS:
            self._end("a second SIGTERM")

    def _end(self, why: str) -> None:
        signum = self.received or signal.SIGTERM
        print(f"error: {why}: ending now, without a checkpoint (the previous one is kept)", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)  # the code a process killed by that signal reports to its shell


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watchdog thread does the work."""


def _in_forked_child() -> None:
    """After a fork without exec (DataLoader workers): this process is not the training loop."""
    global _active
    request, _active = _active, None
    if request is None:
        return
    try:
        signal.set_wakeup_fd(-1)
        for sig, handler in request._previous.items():
            signal.signal(sig, handler)
    except ValueError:  # forked from a thread that is not the child's main thread
        pass
    for fd in (request._read_fd, request._write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


_registered = False


def _reset_children_once() -> None:
    global _registered
    if not _registered:
        os.register_at_fork(after_in_child=_in_forked_child)
        _registered = True
