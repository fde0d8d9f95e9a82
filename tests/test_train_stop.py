"""A stop request is honoured promptly even when a step is slow (tests/slow_step_worker.py makes
steps slow on purpose, or holds a step until the signal has been noted, so that the step a signal
lands in is known): SIGTERM during a step checkpoints after that step and exits 0 (under DDP,
every rank at the same step, one step later), also when the launcher passes a copy of the
SIGTERM on; no progress within run.stop_grace_seconds, or a second SIGTERM (5 s or more after the
first), ends the process at once without a checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from processes import started_process
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, cli_here, small_run_args, train_command

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "slow_step_worker.py"
COMMON = ("schedule.epochs=2", "run.max_train_steps=8", "loader.batch_size=32")


# accelerate's one-process launcher (a plain child, not torchrun's agent).
LAUNCH_ONE_CPU_PROCESS = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--num_processes", "1",
                          "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no"]


@contextlib.contextmanager
def start(shards: Path, tmp_path: Path, *, slow_from: int, how: str, grace: float, ddp: bool = False,
          slow_ranks: str | None = None, launch: list[str] | None = None, signal_at_end: bool = False,
          sigint_at_done: bool = False):
    """The worker (one process, or two ranks through accelerate launch, or under ``launch``), its
    output into a file: ``with start(...) as (process, output)``; killed with all it started at the end."""
    run_args = small_run_args(shards, tmp_path / "run", *COMMON, f"run.stop_grace_seconds={grace}")
    args = [str(tmp_path / "markers"), str(slow_from), how, *run_args[2:]]  # [2:]: the worker adds the demo config
    launch = LAUNCH_TWO_CPU_RANKS if ddp else launch
    command = [*launch, str(WORKER), *args] if launch else [sys.executable, str(WORKER), *args]
    env = dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1") if launch else child_env()
    if slow_ranks is not None:
        env["SLOW_RANKS"] = slow_ranks
    if signal_at_end:
        env["SIGNAL_AT_END"] = "1"
    if sigint_at_done:
        env["SIGINT_AT_DONE"] = "1"
    output = tmp_path / "output.txt"
    with open(output, "w") as stream, started_process(command, cwd=REPO, env=env, stdout=stream,
                                                      stderr=stream) as process:
        yield process, output


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
    with start(demo_shards, tmp_path, slow_from=2, how="signal", grace=120) as (process, output):
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        # Twice at once, as under Slurm's proctrack/cgroup: to the process, and the copy a
        # launcher passes on. One request: the run still checkpoints.
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    # The step under way when the signal came ends; no other starts.
    assert markers(tmp_path)[-2:] == ["start 2", "end 2"]
    assert mid_epoch_checkpoints(tmp_path / "run") == ["epoch-0000-step-000003"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "epoch-0000-step-000003" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    assert "second SIGTERM" not in output.read_text()
    # Said last, with what continues the run (it ended silently, exit 0).
    assert output.read_text().rstrip().splitlines()[-1] == (
        f"stopped with a checkpoint: the same command resumes from "
        f"{tmp_path / 'run' / 'checkpoints' / 'epoch-0000-step-000003'}")


def test_a_copy_of_the_signal_after_the_training_loop_does_not_kill_the_run(demo_shards, tmp_path):
    """A stop agreed on because another rank was signalled ends the loop at once; this rank's own
    copy (Slurm signals every node) then came after the handlers went back, and its default action
    killed the process: exit -15 after a good checkpoint, and the Slurm job failed (seen under load).
    Here the copy lands as the run ends (in end_training): the run still ends 0, said as before."""
    with start(demo_shards, tmp_path, slow_from=2, how="signal", grace=120, signal_at_end=True) as (process, output):
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    assert output.read_text().count("SIGTERM received: ") == 1  # the copy within 5 s: the same request
    assert mid_epoch_checkpoints(tmp_path / "run") == ["epoch-0000-step-000003"]
    assert output.read_text().rstrip().splitlines()[-1] == (
        f"stopped with a checkpoint: the same command resumes from "
        f"{tmp_path / 'run' / 'checkpoints' / 'epoch-0000-step-000003'}")


def test_a_signal_after_the_last_epoch_lets_the_run_finish_its_export(demo_shards, tmp_path):
    """A SIGTERM as a finished run ends (its export written, the last barrier passed) is said as
    such, and the run ends 0 with its weights, where the default action killed it (exit -15)."""
    with start(demo_shards, tmp_path, slow_from=10 ** 6, how="0", grace=120, signal_at_end=True) as (process, output):
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    assert ("SIGTERM received: the training has ended, finishing (a SIGTERM sent again 5 s or more later ends the "
            "process at once)") in output.read_text()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_ctrl_c_as_a_finished_run_prints_its_last_line_leaves_it_finished(demo_shards, tmp_path):
    """A Ctrl-C landing as the finished run said "done ..." ended it with 130 and no word
    (walkthrough): the run's work is all written by then, so it ends 0 with its last line."""
    with start(demo_shards, tmp_path, slow_from=10 ** 6, how="0", grace=120, sigint_at_done=True) as (process, output):
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    text = output.read_text()
    assert text.rstrip().splitlines()[-1].startswith("done in ") and "Traceback" not in text, text[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("signal_first", [False, True])
def test_after_the_loop_no_grace_period_ends_a_slow_export(signal_first):
    """Once the loop has ended (settle), nothing marks progress: a signal then, or one that came in
    the last steps, must not end a slow export or last barrier after the grace period (a review:
    exit 143, "no progress"). A second SIGTERM 5 s or more later still ends it."""
    from processes import run_process

    code = ("import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); "
            "from pipeline.stopping import StopRequest; stop = StopRequest(grace_seconds=0.5); "
            f"first = {signal_first}; "
            "first and (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2)); stop.settle(); "
            "first or os.kill(os.getpid(), signal.SIGTERM); time.sleep(2); print('still here', flush=True); "
            "stop.close()")
    done = run_process([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "still here\n", done.stderr[-2000:]
    doing = "stopping after this step with a checkpoint" if signal_first else "the training has ended, finishing"
    assert f"SIGTERM received: {doing}" in done.stderr


def test_a_rank_signalled_after_another_ranks_stop_says_it_is_already_stopping():
    """Rank 0's loop ended by the stop rank 1's signal started (honour), then rank 0's own copy
    arrives: it is the same stop, said as such, and ends nothing."""
    from processes import run_process

    code = ("import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); "
            "from pipeline.stopping import StopRequest; stop = StopRequest(grace_seconds=0.5); "
            "stop.honour(); stop.settle(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(1.5); "
            "print('still here', flush=True); stop.close()")
    done = run_process([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "still here\n", done.stderr[-2000:]
    assert "SIGTERM received: stopping with a checkpoint (already under way)" in done.stderr


def test_no_progress_within_the_grace_period_ends_the_process(demo_shards, tmp_path):
    with start(demo_shards, tmp_path, slow_from=2, how="3600", grace=2) as (process, output):
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGUSR1)
        code = process.wait(timeout=120)
    assert code == 128 + signal.SIGUSR1, output.read_text()[-3000:]
    assert ("error: no progress (a step, an evaluation batch, a checkpoint save) within "
            "run.stop_grace_seconds=2 s after SIGUSR1") in output.read_text()
    assert "end 2" not in markers(tmp_path)  # ended inside the step, by the watchdog
    assert mid_epoch_checkpoints(tmp_path / "run") == []


def test_ctrl_c_ends_the_run_in_one_line_and_the_same_command_resumes_it(demo_shards, tmp_path):
    """SIGINT (Ctrl-C) inside a step of the second epoch: exit 130 with one line and no traceback;
    the epoch-1 checkpoint is whole, and the same command goes on from it to the end."""
    from train_helpers import run_train

    with start(demo_shards, tmp_path, slow_from=10, how="3600", grace=3600) as (process, output):
        wait_for(lambda: "start 10" in markers(tmp_path), process, "step 10")  # 8 steps an epoch
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    text = output.read_text()
    assert code == 130, text[-3000:]
    assert ("interrupted: the steps since the last checkpoint are not kept (SIGTERM, `kill PID`, stops after the "
            "step under way with a checkpoint of it); the same command resumes from "
            f"{tmp_path / 'run' / 'checkpoints' / 'epoch-0001'}\n") in text
    assert "Traceback" not in text
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-0001"]
    done = run_train(small_run_args(demo_shards, tmp_path / "run", *COMMON, "run.stop_grace_seconds=3600"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "(after epoch 1)" in done.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_second_sigterm_ends_the_process_at_once(demo_shards, tmp_path):
    from pipeline.stopping import REPEAT_AFTER_SECONDS

    with start(demo_shards, tmp_path, slow_from=2, how="3600", grace=3600) as (process, output):
        wait_for(lambda: "start 2" in markers(tmp_path), process, "step 2")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in output.read_text(), process, "the first SIGTERM noted")
        process.send_signal(signal.SIGTERM)  # a copy within REPEAT_AFTER_SECONDS: the same request
        process.send_signal(signal.SIGUSR1)  # a USR1 after a stop request changes nothing
        time.sleep(REPEAT_AFTER_SECONDS + 1)  # counted from when the first was noted (printed)
        assert process.poll() is None, output.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert code == 128 + signal.SIGTERM, output.read_text()[-3000:]
    assert "error: a second SIGTERM: ending now, without a checkpoint" in output.read_text()
    assert "end 2" not in markers(tmp_path) and mid_epoch_checkpoints(tmp_path / "run") == []


def _assert_ddp_stopped_at_step_4(tmp_path: Path) -> None:
    # The flag is posted after step 2 (the signalled step) and read after step 3: both stop there.
    for rank in ("0", "1"):
        assert markers(tmp_path, rank)[-2:] == ["start 3", "end 3"], (rank, markers(tmp_path, rank))
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch-0000-step-000004"
    assert mid_epoch_checkpoints(tmp_path / "run") == [checkpoint.name]
    assert (checkpoint / "loader-rank0.json").exists() and (checkpoint / "loader-rank1.json").exists()


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(demo_shards, tmp_path):
    with start(demo_shards, tmp_path, slow_from=2, how="signal", grace=120, ddp=True,
               slow_ranks="1") as (process, output):
        wait_for(lambda: "start 2" in markers(tmp_path, "1"), process, "step 2 on rank 1")
        rank1 = int((tmp_path / "markers1.pid").read_text())
        os.kill(rank1, signal.SIGTERM)  # rank 0 gets nothing: it learns of the stop from rank 1
        assert process.wait(timeout=300) == 0, output.read_text()[-3000:]
    _assert_ddp_stopped_at_step_4(tmp_path)


def test_under_ddp_sigterm_to_the_launcher_and_the_ranks_still_checkpoints(demo_shards, tmp_path):
    # What Slurm's proctrack/cgroup does on scancel or preemption: SIGTERM to every process of the
    # step; the launcher (torchrun's agent) then sends each rank a SIGTERM of its own.
    with start(demo_shards, tmp_path, slow_from=2, how="signal", grace=120, ddp=True) as (process, output):
        for rank in ("0", "1"):
            wait_for(lambda: "start 2" in markers(tmp_path, rank), process, f"step 2 on rank {rank}")
        ranks = [int((tmp_path / f"markers{rank}.pid").read_text()) for rank in ("0", "1")]
        for pid in (process.pid, *ranks):
            os.kill(pid, signal.SIGTERM)
        process.wait(timeout=300)  # the launcher's own code reports the signal it got
    assert "second SIGTERM" not in output.read_text(), output.read_text()[-3000:]
    _assert_ddp_stopped_at_step_4(tmp_path)


def _ended(pid: int) -> bool:
    """Gone, or a zombie (ended; its new parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_sigkill_of_the_launcher_ends_its_ranks(demo_shards, tmp_path, ranks):
    """`kill -9` of `accelerate launch` (or the OOM killer): the ranks, in sessions of their own
    under torchrun, were left running as orphans (holding the run folder and a core each, here
    forever: they wait in step 2). The kernel now ends them with the launcher (PR_SET_PDEATHSIG)."""
    with start(demo_shards, tmp_path, slow_from=2, how="signal", grace=120, ddp=ranks == 2,
               launch=LAUNCH_ONE_CPU_PROCESS) as (process, output):
        names = ("0", "1") if ranks == 2 else ("",)
        for rank in names:
            wait_for(lambda: "start 2" in markers(tmp_path, rank), process, f"step 2 on rank {rank or 0}")
        pids = [int((tmp_path / f"markers{rank}.pid").read_text()) for rank in names]
        assert process.pid not in pids  # the ranks are the launcher's children, not the launcher
        process.kill()
        process.wait(timeout=60)
        deadline = time.monotonic() + 60  # a hang guard: the kernel signals at the parent's exit
        while not all(_ended(pid) for pid in pids):
            assert time.monotonic() < deadline, (
                f"ranks still running 60 s after the launcher's SIGKILL: {[p for p in pids if not _ended(p)]}\n"
                + output.read_text()[-2000:])
            time.sleep(0.1)
    assert mid_epoch_checkpoints(tmp_path / "run") == []  # killed, not stopped


def test_only_a_launchers_child_asks_to_end_with_its_parent():
    from pipeline.launcher import started_by_launcher

    accelerate = b"/venv/bin/python\0-m\0accelerate.commands.accelerate_cli\0launch\0train.py\0"
    assert started_by_launcher({"TORCHELASTIC_RUN_ID": "none"}, parent_command=b"bash\0")  # torchrun's agent
    assert started_by_launcher({"ACCELERATE_USE_CPU": "True"}, parent_command=accelerate)
    assert started_by_launcher({"ACCELERATE_USE_CPU": "False"}, parent_command=b"/venv/bin/accelerate\0launch\0")
    # A run from a shell must outlive it under nohup, even with the variable exported there.
    assert not started_by_launcher({"ACCELERATE_USE_CPU": "True"}, parent_command=b"-bash\0")
    assert not started_by_launcher({}, parent_command=accelerate)


def test_a_training_into_a_run_folder_another_one_is_using_is_refused(demo_shards, tmp_path, capsys):
    """Two trainings into one run.out_dir both ran to the end, saving over each other's checkpoints
    and interleaving one metrics.jsonl: the second is refused (and --check says so) while the first
    lives; a SIGKILL of the first frees the folder at once (the kernel drops the lock)."""
    run = tmp_path / "run"
    args = small_run_args(demo_shards, run, "schedule.epochs=1000", "run.max_train_steps=2", "loader.batch_size=16")
    output = tmp_path / "first.txt"
    with open(output, "w") as stream, started_process(train_command(args), cwd=REPO, env=child_env(), stdout=stream,
                                                      stderr=stream) as first:
        wait_for(lambda: "epoch 1/1000:" in output.read_text(), first, "the first epoch")
        refusal = (f"error: run.out_dir={run} is in use by another training (pid {first.pid} on "
                   f"{socket.gethostname()}): wait for it to end or stop it (its checkpoints resume it), "
                   f"or give another run.out_dir (if that host is down, NFS may keep its lock until it is back: "
                   f"then remove {run / '.lock'})")
        # With other settings too: refused as in use, not as a resume with changes.
        for check in ([], ["--check"], ["optim.base_lr=0.7"], ["--check", "optim.base_lr=0.7"]):
            code, out, err = cli_here([*args[:2], *check, *args[2:]] if check[:1] == ["--check"] else
                                      [*args, *check], capsys)
            assert (code, err.splitlines()) == (2, [refusal]), (check, out + err)
        # The resume check below needs a checkpoint: the kill waits for the first complete one (it
        # came after the checks above in most runs, not all: a fresh clone's run once had none yet).
        wait_for(lambda: any((p / "COMPLETE").exists() for p in (run / "checkpoints").glob("epoch-*")), first,
                 "a complete checkpoint")
        first.kill()
        first.wait(timeout=60)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # the refused starts wrote nothing
    code, out, err = cli_here(["--check", *args], capsys)
    assert code == 0 and " resumes from " in out, err


def test_the_interrupted_line_is_not_run_into_the_progress_bar(demo_shards, tmp_path, capsys, monkeypatch):
    # The bar, cut off mid-line by Ctrl-C, was left on the screen with the cursor after itself:
    # "epoch 2/2:  40%|####  | 4/10 [...] interrupted: ...". Now the bar is closed (removed) first.
    import pipeline.run
    from pipeline.cli import run_cli
    from train_helpers import small_run_args

    def interrupted_mid_epoch(*, progress, **kwargs):
        progress.update(1, loss=1.0)
        raise KeyboardInterrupt

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(pipeline.run, "train_one_epoch", interrupted_mid_epoch)
    args = small_run_args(demo_shards, tmp_path / "run", "run.progress=true")
    assert run_cli(args, default_config=None) == 130
    err = capsys.readouterr().err
    assert "epoch 1/30" in err  # the bar was drawn
    # At the start of a line (after the bar's erasing carriage return), not after the bar's text.
    assert re.search(r"(^|[\r\n])interrupted: the steps since the last checkpoint are not kept", err), repr(err)
