"""``python slow_step_worker.py MARKERS FROM SECONDS section.key=value ...``: the real command line
of pipeline/train.py (``pipeline.cli.run_cli``, demo config) whose training steps from update
FROM on take SECONDS longer (a sleep before the real step), as a slow step on a CPU without
native bf16 would. Each step appends ``start N`` and ``end N`` to MARKERS (N counts updates of
this process from 0; under DDP MARKERS gets the rank appended)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.training as training  # noqa: E402
from pipeline.cli import exit_cleanly, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    markers, slow_from, seconds, argv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    markers = Path(f"{markers}{os.environ.get('RANK', '')}")
    original, done = training.train_step, [0]
    markers.with_suffix(".pid").write_text(str(os.getpid()))

    def slow_step(**kwargs):
        step = done[0]
        with open(markers, "a") as log:
            log.write(f"start {step}\n")
        if step >= slow_from:
            time.sleep(seconds)
        loss = original(**kwargs)
        with open(markers, "a") as log:
            log.write(f"end {step}\n")
        done[0] += 1
        return loss

    training.train_step = slow_step
    exit_cleanly(run_cli(["--config", str(REPO / "configs" / "demo.yaml"), *argv], default_config=None))


if __name__ == "__main__":
    main()
