"""``python slow_step_worker.py MARKERS FROM HOW section.key=value ...``: the real command line of
pipeline/train.py (``pipeline.cli.run_cli``, demo config) whose training steps from update FROM on
are slow, as on a CPU without native bf16: HOW is a number of seconds to sleep before the real
step, or ``signal``: wait (in the step) until the stop watchdog has noted a signal, so that the
step a signal lands in is known exactly. ``SLOW_RANKS=1`` (environment) makes only rank 1 slow.
Each step appends ``start N`` and ``end N`` to MARKERS (N counts updates of this process from 0;
under DDP MARKERS gets the rank appended; MARKERS.pid holds the process id). ``SIGNAL_AT_END=1``
sends the process a SIGTERM of its own as the run ends (in Accelerate's end_training, after the
training loop and the last barrier) and waits until the watchdog has noted it: a late copy of a
stop signal, as Slurm's arrive on a loaded node. ``SIGINT_AT_DONE=1`` sends it a SIGINT (Ctrl-C)
while the finished run prints its last line."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.stopping as stopping  # noqa: E402
import pipeline.training as training  # noqa: E402
from pipeline.cli import exit_cleanly, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD = 600  # seconds a "signal" step waits at most


def main() -> None:
    markers, slow_from, how, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    rank = os.environ.get("RANK", "")
    markers = Path(f"{markers}{rank}")
    markers.with_suffix(".pid").write_text(str(os.getpid()))
    slow_here = rank in os.environ.get("SLOW_RANKS", rank).split(",")
    noted = threading.Event()
    on_signal = stopping.StopRequest._on_signal

    def noting(self, signum):
        on_signal(self, signum)
        noted.set()

    stopping.StopRequest._on_signal = noting
    original, done = training.train_step, [0]

    def slow_step(**kwargs):
        step = done[0]
        with open(markers, "a") as log:
            log.write(f"start {step}\n")
        if slow_here and step >= slow_from:
            if how == "signal":
                noted.wait(HANG_GUARD)
            else:
                time.sleep(float(how))
        loss = original(**kwargs)
        with open(markers, "a") as log:
            log.write(f"end {step}\n")
        done[0] += 1
        return loss

    training.train_step = slow_step
    if os.environ.get("SIGNAL_AT_END"):
        import accelerate

        end_training = accelerate.Accelerator.end_training

        def signalled_end(self):
            noted.clear()
            os.kill(os.getpid(), signal.SIGTERM)
            noted.wait(HANG_GUARD)
            end_training(self)

        accelerate.Accelerator.end_training = signalled_end
    if os.environ.get("SIGINT_AT_DONE"):  # a Ctrl-C as the finished run prints its last line
        import pipeline.cli as cli

        best_checkpoint = cli._best_checkpoint

        def interrupted_there(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # where a KeyboardInterrupt would be raised, it has been by now
            return best_checkpoint(*args, **kwargs)

        cli._best_checkpoint = interrupted_there
    exit_cleanly(run_cli(["--config", str(REPO / "configs" / "demo.yaml"), *argv], default_config=None))


if __name__ == "__main__":
    main()
