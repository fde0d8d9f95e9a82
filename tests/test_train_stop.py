"""A stop request is honoured promptly even when a step is slow (tests/slow_step_worker.py makes
steps slow on purpose): SIGTERM during a step checkpoints after that step and exits 0 (under
DDP, every rank at the same step, one step later); a step that does not end within
run.stop_grace_seconds, or a second SIGTERM, ends the process at once without a checkpoint."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from processes import started_process
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, small_run_args

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "slow_step_worker.py"
COMMON = ("schedule.epochs=2", "run.max_train_steps=8", "loader.batch_size=32")


def start(shards: Path, tmp_path: Path, *, slow_from: int, seconds: float, grace: float, ddp: bool = False):
    """The worker (one process, or two ranks through accelerate launch), stderr into a file."""
    args = [str(tmp_path / "markers"), str(slow_from), str(seconds),
            *small_run_args(shards, tmp_path / "run", *COMMON, f"run.stop_grace_seconds={grace}")[2:]]
    command = [*LAUNCH_TWO_CPU_RANKS, str(WORKER), *args] if ddp else [sys.executable, str(WORKER), *args]
    env = dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1") if ddp else child_env()
    stderr = open(tmp_path / "stderr.txt", "w")
    return started_process(command, cwd=REPO, env=env, stdout=stderr, stderr=stderr), tmp_path / "stderr.txt"


def markers(tmp_path: Path, rank: str = "") -> list[str]:
    path = tmp_path / f"markers{rank}"
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition, process, what: str, *, timeout: float = 300) -> None:
    """Poll ``condition`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def mid_epoch_checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("epoch-*-step-*") if (p / "COMPLETE").exists())


def test_sigterm_during_a_slow_step_checkpoints_after_that_step(demo_shards, tmp_path):
    launched, _ = start(demo_shards, tmp_path, slow_from=2, seconds=3, grace=120)
    with launched as process:
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    # The step under way when the signal came ends; no other starts.
    assert markers(tmp_path)[-2:] == ["start 2", "end 2"]
    assert mid_epoch_checkpoints(tmp_path / "run") == ["epoch-0000-step-000003"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "epoch-0000-step-000003" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)


def test_a_step_that_outlasts_the_grace_period_ends_the_process(demo_shards, tmp_path):
    launched, stderr = start(demo_shards, tmp_path, slow_from=2, seconds=3600, grace=2)
    with launched as process:
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert code == 128 + signal.SIGTERM, stderr.read_text()[-3000:]
    assert "error: no training step ended within run.stop_grace_seconds=2 s after SIGTERM" in stderr.read_text()
    assert "end 2" not in markers(tmp_path)  # ended inside the step, by the watchdog
    assert mid_epoch_checkpoints(tmp_path / "run") == []


def test_a_second_sigterm_ends_the_process_at_once(demo_shards, tmp_path):
    launched, stderr = start(demo_shards, tmp_path, slow_from=2, seconds=3600, grace=3600)
    with launched as process:
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in stderr.read_text(), process, "the first SIGTERM noted")
        process.send_signal(signal.SIGUSR1)  # a USR1 after a stop request changes nothing
        time.sleep(1)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert code == 128 + signal.SIGTERM, stderr.read_text()[-3000:]
    assert "error: a second SIGTERM: ending now, without a checkpoint" in stderr.read_text()
    assert "end 2" not in markers(tmp_path) and mid_epoch_checkpoints(tmp_path / "run") == []


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(demo_shards, tmp_path):
    launched, stderr = start(demo_shards, tmp_path, slow_from=2, seconds=2, grace=120, ddp=True)
    with launched as process:
        wait_for(lambda: "start 2" in markers(tmp_path, "1"), process, "step 2 on rank 1")
        rank1 = int((tmp_path / "markers1.pid").read_text())
        import os

        os.kill(rank1, signal.SIGTERM)  # rank 0 gets nothing: it learns of the stop from rank 1
        assert process.wait(timeout=300) == 0, stderr.read_text()[-3000:]
    # Rank 1 posts its flag after step 2; every rank reads the sum after step 3 and stops there.
    for rank in ("0", "1"):
        assert markers(tmp_path, rank)[-2:] == ["start 3", "end 3"], (rank, markers(tmp_path, rank))
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch-0000-step-000004"
    assert mid_epoch_checkpoints(tmp_path / "run") == [checkpoint.name]
    assert (checkpoint / "loader-rank0.json").exists() and (checkpoint / "loader-rank1.json").exists()
