"""Command line of ``pipeline/train.py``: arguments -> config -> ``run_training``; user errors as
one message, and a clean exit under DDP."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from shards.arguments import CommandParser, path

from .errors import TrainError, loader_errors
from .launcher import end_with_launcher


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``[--config FILE] [section.key=value ...]``."""
    parser = CommandParser(
        prog="pipeline/train.py", description="Train a timm model on shards with CutMix (see configs/).",
        epilog="With no arguments: the embedded demo (configs/demo.yaml), on CPU in a few minutes.\n\n"
               + config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=path, default=None, help="YAML recipe (default: configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. optim.base_lr=0.2")
    parser.add_argument("--check", action="store_true",
                        help="only check the config, the model name, the shards and what a resume would continue "
                             "(as a start does before any work), print one line and exit: 0 if all is in order, "
                             "2 with one error line if not (the Slurm script does this before starting its nodes)")
    # Intermixed: overrides may come before, between or after the options (`run.progress=false
    # --config X schedule.epochs=5` was "unrecognized arguments: schedule.epochs=5").
    return parser.parse_intermixed_args(argv)


def config_keys_help() -> str:
    """Every section and its keys, for --help (what each means, and its default: pipeline/config.py)."""
    import textwrap
    from dataclasses import fields

    from .config import TrainConfig

    lines = ["config keys (section.key=value; each one's meaning and default: pipeline/config.py):"]
    for section in fields(TrainConfig):
        keys = ", ".join(key.name for key in fields(section.default_factory))
        lines += textwrap.wrap(f"{section.name}: {keys}", width=100, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def run_cli(argv: list[str], *, default_config: Path | None) -> int:
    """Resolve the config and train; returns the exit code (2 for bad input, with one message)."""
    end_with_launcher()  # first: an orphaned rank would run on for hours
    args = parse_args(argv)
    started = time.perf_counter()
    config = None
    try:
        from .config import resolve_config

        # The config before torch, DALI and the training code are imported (seconds): a mistyped
        # key or value is reported at once (the model name still loads timm to check it).
        config = resolve_config(config_file=args.config or default_config, overrides=args.overrides)
        from .resume_config import moved_run_problem

        moved = moved_run_problem(args.config, args.overrides, Path(config.run.out_dir))
        if moved:
            raise TrainError(moved)
        from .run import run_training

        if args.check:
            if _global_rank() == 0:
                print(check_config(config), flush=True)
            return 0
        record = run_training(config, config_file=args.config or default_config)
        previous = _ignore_ctrl_c()  # the run's work is written: a Ctrl-C now must not make it a failure
    except (TrainError, *loader_errors()) as error:
        rank = _global_rank()
        # Checks before training are the same on every rank (rank 0 says it); a loader error while
        # training may be one rank's alone (a damaged shard in its part), so that rank says it.
        if rank == 0 or getattr(error, "during_pass", False):
            print(f"error: {'' if rank == 0 else f'(rank {rank}) '}{error}", file=sys.stderr, flush=True)
        else:
            wait_for_rank_zero_to_say_it()
        return 2
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are saved whole or not at all (pipeline/checkpoint.py)
        if _global_rank() == 0:
            # Said, as a stop signal would have kept them: a user took Ctrl-C for the same stop.
            lost = ("the steps since the last checkpoint are not kept (SIGTERM, `kill PID`, stops after the step "
                    "under way with a checkpoint of it); ")
            print(f"interrupted{'' if config is None else ': ' + lost + _how_to_go_on(config)}", file=sys.stderr,
                  flush=True)
        return 130
    try:
        if _global_rank() == 0 and not record:  # a stop signal: the run ended early with a checkpoint
            print(f"stopped with a checkpoint: {_how_to_go_on(config)}", flush=True)
        if _global_rank() == 0 and "top1_err" in record and "best_top1_err" in record:
            print(f"done in {time.perf_counter() - started:.0f} s: {config.data.eval_split} top-1 error "
                  f"{record['top1_err']:.2f}% "
                  f"top-5 error {record['top5_err']:.2f}% (best top-1 {record['best_top1_err']:.2f}% at epoch "
                  f"{record['best_epoch']}{_best_checkpoint(config, record['best_epoch'])}); run folder "
                  f"{config.run.out_dir}", flush=True)
        elif _global_rank() == 0 and record and config.loader.backend == "synthetic":
            print(f"done in {time.perf_counter() - started:.0f} s: {record['img_per_s']:.0f} img/s in the last "
                  f"epoch, on random images (loader.backend=synthetic: nothing evaluated); run folder "
                  f"{config.run.out_dir}", flush=True)
    finally:
        if previous is not None:  # exit_cleanly takes it from here (an in-process caller gets it back)
            signal.signal(signal.SIGINT, previous)
    return 0


def check_config(config) -> str:
    """``--check``: what a start checks before any work, plus the model name and (unless the demo
    builds them) the shards; one line saying what the run would do. TrainError on a problem."""
    from .checkpoint import damaged_after, read_state
    from .data_check import check_batches, check_demo_folder, check_shards, demo_to_build
    from .models import check_model_name
    from .run import check_before_start, earlier_run_left, later_checkpoints
    from .run_lock import check_run_folder_free

    check_run_folder_free(config.run.out_dir)  # first: the other checks read what that training writes
    from .launcher import lone_process_problem

    stale = "" if "LOCAL_RANK" in os.environ else lone_process_problem(1)  # as the start refuses it
    if stale:
        raise TrainError(stale)
    # world_size None: --check runs alone before the launch (Slurm), so the count is not known.
    checkpoint, changes = check_before_start(config, world_size=None)
    check_model_name(config.model.name)
    if demo_to_build(config):  # the start builds them: their checks come after the build
        check_demo_folder(config)
        data = f"the demo digits (to be built) in {config.data.shards}"
    else:
        classes = check_shards(config, checkpoint)
        # The world size is the launcher's (1 for a plain python).
        check_batches(config, world_size=_launched() or 1, num_classes=len(classes))
        data = f"the demo digits in {config.data.shards}" if config.data.demo else \
            f"{len(classes)} classes in {config.data.shards}"
    run_dir = Path(config.run.out_dir)
    if checkpoint is None:
        start = "starts fresh"
        if earlier_run_left(run_dir, resume=config.run.resume):
            start += f" (the earlier run's files move to {run_dir}/replaced-<n>)"
    elif read_state(checkpoint).epoch >= config.schedule.epochs:  # the Slurm script reads this: no requeue
        start = f"already finished ({checkpoint})"
    else:
        start = f"resumes from {checkpoint}"
    if config.run.resume == "auto" and checkpoint is not None:  # the start says it too ("skipped damaged ...")
        start += "".join(f" (skipping damaged {path.name}: {problem})"
                         for path, problem in damaged_after(run_dir, checkpoint))
    later = [] if checkpoint is None or config.run.resume == "auto" else later_checkpoints(run_dir, checkpoint)
    if later:  # what the start will move: a --check before it is where a user learns it
        start += f" (the later {', '.join(f.name for f in later)} move to {run_dir}/replaced-<n>)"
    changed = f" with changed settings ({len(changes)})" if changes else ""
    return (f"config checked: {config.model.name} on {data}; {start}{changed}; {_batch_and_lr(config)}; "
            f"run folder {config.run.out_dir}")


def _launched() -> int | None:
    """The process count of the launcher that started this process; None without one (a
    WORLD_SIZE left in a shell is refused before)."""
    from .launcher import launcher_process_count

    return launcher_process_count()


def _batch_and_lr(config) -> str:
    """The global batch and the lr it scales to: a recipe for 8 GPUs run by one process trains at an
    eighth of its lr, which --check did not show (walkthrough). The process count is the launcher's
    (``_launched``); a --check run alone (Slurm's, before its launch) gives the rule instead."""
    from .run import peak_lr

    processes = _launched()
    if processes is not None:
        return (f"global batch {config.loader.batch_size * processes} on {processes} "
                f"process{'es' if processes > 1 else ''}, peak lr {peak_lr(config, processes=processes):g}")
    return (f"global batch {config.loader.batch_size} x the processes launched, peak lr "
            f"{peak_lr(config, processes=1):g} x the processes launched")


def _best_checkpoint(config, epoch: int) -> str:
    """``: RUN/checkpoints/epoch-NNNN``, the best epoch's checkpoint (pruning keeps it), for
    ``python -m pipeline.evaluate``; '' when it is not there (damaged, or kept by no rule then)."""
    from .checkpoint import TrainState, checkpoint_name, is_complete_checkpoint

    folder = Path(config.run.out_dir) / "checkpoints" / checkpoint_name(TrainState(epoch=epoch))
    return f": {folder}" if is_complete_checkpoint(folder) else ""


def _how_to_go_on(config) -> str:
    """What continues an interrupted run: the same command, or run.resume=auto where the command
    named a checkpoint or started over (it would do that again)."""
    from .checkpoint import valid_checkpoints

    found = valid_checkpoints(config.run.out_dir)
    if not found:
        return f"no checkpoint of {config.run.out_dir} was saved yet: the same command starts over"
    how = "the same command" if config.run.resume == "auto" else "run.resume=auto (instead of " \
        f"run.resume={config.run.resume})"
    return f"{how} resumes from {found[-1]}"


# How long a rank other than 0 stays after a start-up error that rank 0 reports: torchrun ends
# every rank once one exits, and a rank 1 faster than rank 0 (the run-folder lock's refusal reaches
# all ranks at once by a broadcast) took rank 0 with it before it printed (2 of 6 two-rank starts).
REPORT_GRACE_SECONDS = 3.0


def wait_for_rank_zero_to_say_it() -> None:
    """Stay a moment, so that rank 0 prints the error every rank met (see REPORT_GRACE_SECONDS)."""
    time.sleep(REPORT_GRACE_SECONDS)


def _ignore_ctrl_c():
    """While the finished run says so: a Ctrl-C (SIGINT) is let pass (one landing as the run
    printed its last line ended the process with 130 and no word; walkthrough); the handler it
    replaced (None outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_cleanly(code: int) -> None:
    """End the process group, flush, and exit with ``code``. Under DDP the process leaves through
    ``os._exit``: after a finished run, gloo/NCCL and DALI threads torn down during interpreter
    shutdown have aborted the process (SIGABRT, 3 of 27 two-process runs) and turned success into
    a failure; everything worth keeping is written and flushed before this point."""
    if threading.current_thread() is threading.main_thread():
        # A Ctrl-C during the teardown below (DALI's threads, the process group) ends the process
        # at once with the code already decided, not with a KeyboardInterrupt from inside it.
        signal.signal(signal.SIGINT, lambda signum, frame: _exit_now(code))
    dist = sys.modules.get("torch.distributed")  # not imported (a config error): no process group
    distributed = dist is not None and dist.is_available() and dist.is_initialized()
    if distributed:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a failing teardown must not change the exit code
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    if distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _global_rank() -> int:
    return int(os.environ.get("RANK", "0"))
