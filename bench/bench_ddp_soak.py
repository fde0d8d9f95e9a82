"""DDP soak on CPU: N short two-rank trainings of the demo through ``accelerate launch``, each
checked for its exit code, a hang, and processes left running after it ended. A flaky teardown
(gloo/DALI threads aborting a finished run, pipeline/cli.py exit_cleanly) or ranks that outlive
their launcher show up here as a rate, which one test run cannot show.

    python bench/bench_ddp_soak.py --out bench/results/ddp_soak_cpu.txt       # 30 runs
    python bench/bench_ddp_soak.py --runs 2                                     # a quick look

Each run is what tests/test_train_ddp.py launches: ``ACCELERATE_USE_CPU=true accelerate launch
--multi_gpu --num_processes 2 pipeline/train.py --config configs/demo.yaml`` (gloo, one thread per
rank) on the digits shards, built once into a temporary folder, with ``schedule.epochs=1
schedule.warmup_epochs=0 loader.batch_size=16 run.max_train_steps=STEPS``: start-up, a few
steps, one evaluation, the weights written and the process group torn down.

The launcher runs in a session of its own and its environment carries a tag (tests/processes.py)
that every process it starts inherits, the ranks included: what still carries the tag once the
launcher has ended was left behind. After a hang (--timeout) everything carrying the tag is
listed, then killed; so is any leftover. Exit status 1 unless every run was clean.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from processes import TAG_VARIABLE, describe, processes_with, started_process  # noqa: E402
from cli_checks import at_least, writable_out  # noqa: E402
from train_helpers import LAUNCH_TWO_CPU_RANKS, TRAIN, child_env, small_run_args  # noqa: E402

# One epoch (so no warmup: the demo's would not fit), a few steps, then evaluation and teardown.
RUN_OVERRIDES = ("schedule.epochs=1", "schedule.warmup_epochs=0", "loader.batch_size=16")


@dataclass
class SoakRun:
    """One launch: exit code (None after a hang), wall seconds, and the processes of its tree
    still alive when the launcher ended (leftovers) or at the timeout (the hung ones)."""

    index: int
    exit_code: int | None
    seconds: float
    alive: list[str] = field(default_factory=list)
    log_excerpt: str = ""

    @property
    def hung(self) -> bool:
        return self.exit_code is None

    @property
    def leftovers(self) -> list[str]:
        return [] if self.hung else self.alive

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and not self.alive


def launch_once(index: int, shards: Path, work: Path, *, steps: int, timeout: float) -> SoakRun:
    """One two-rank training; its tree is killed before this returns, whatever happened."""
    out = work / f"run-{index:03d}"
    args = small_run_args(shards, out, *RUN_OVERRIDES, f"run.max_train_steps={steps}")
    env = dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    log_path = work / f"run-{index:03d}.log"
    with open(log_path, "wb") as log, started_process([*LAUNCH_TWO_CPU_RANKS, str(TRAIN), *args], cwd=REPO,
                                                      env=env, stdout=log, stderr=subprocess.STDOUT) as launcher:
        started = time.perf_counter()
        try:
            exit_code = launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            exit_code = None  # hung: what is alive now is listed below, the launcher included
        seconds = time.perf_counter() - started
        # The launcher waits for its ranks: once it has ended, whatever carries its tag was left behind.
        alive = [describe(pid) for pid in processes_with(TAG_VARIABLE, launcher.test_tag)]
    failed = exit_code != 0 or alive
    return SoakRun(index, exit_code, seconds, alive, failure_excerpt(log_path) if failed else "")


def failure_excerpt(log_path: Path) -> str:
    """What the ranks wrote last before torchrun's failure report (which names only exit codes)."""
    lines = log_path.read_text(errors="replace").splitlines()
    report = next((i for i, line in enumerate(lines) if "failed (exitcode" in line), len(lines) - 1)
    return "\n".join(lines[max(0, report - 12):report + 1])


def machine() -> str:
    """CPU model, cores, native bf16 or not (DESIGN.md's trap), and the load when the soak started
    (a busy machine stretches the times)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first_cpu = cpuinfo.split("\n\n")[0].splitlines()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu)}
    model = fields.get("model name", platform.machine())
    bf16 = "yes" if {"avx512_bf16", "amx_bf16"} & set(fields.get("flags", "").split()) else "no"
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {model}, {os.cpu_count()} cores, native bf16 {bf16}, {platform.system()} {platform.release()}; "
            f"torch {torch.__version__}; load average at start {load}")


def report_line(run: SoakRun) -> str:
    outcome = "HANG" if run.hung else f"exit {run.exit_code}"
    text = (f"run {run.index:3d}: {outcome:<8} {run.seconds:6.1f} s  hang {'yes' if run.hung else 'no'}"
            f"  leftovers {len(run.leftovers)}")
    for process in run.alive:
        text += f"\n    {'running at the timeout' if run.hung else 'left running'}: {process}"
    if run.log_excerpt:
        text += "\n    " + run.log_excerpt.replace("\n", "\n    ")
    return text


def summary(runs: list[SoakRun]) -> str:
    clean = sum(run.clean for run in runs)
    failed_exits = sum(run.exit_code not in (0, None) for run in runs)
    hangs = sum(run.hung for run in runs)
    leaking = sum(bool(run.leftovers) for run in runs)
    seconds = [run.seconds for run in runs if not run.hung]
    times = (f"; wall median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s" if seconds else "")
    return (f"{clean}/{len(runs)} clean (exit 0, no hang, nothing left running); non-zero exits {failed_exits}, "
            f"hangs {hangs}, runs with leftovers {leaking}{times}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=3, help="training steps per run (run.max_train_steps)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as hung")
    parser.add_argument("--out", type=Path, default=None, help="also append the report to this file (e.g. "
                        "bench/results/ddp_soak_cpu.txt)")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "runs", "steps")
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout must be a finite number of seconds > 0, got {args.timeout}")
    if args.out is not None:
        writable_out(parser, args.out)
    from shards.demo import build_demo_shards

    lines = [f"=== {time.strftime('%Y-%m-%d %H:%M')}: {shlex.join([Path(sys.executable).name, *sys.argv])}",
             machine(),
             f"{args.runs} x two CPU ranks (gloo) through accelerate launch, configs/demo.yaml, "
             f"{' '.join(RUN_OVERRIDES)} run.max_train_steps={args.steps}, timeout {args.timeout:.0f} s"]
    print("\n".join(lines), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ddp-soak-") as tmp:
        shards = build_demo_shards(Path(tmp) / "demo", quiet=True)
        for index in range(1, args.runs + 1):
            runs.append(launch_once(index, shards, Path(tmp), steps=args.steps, timeout=args.timeout))
            lines.append(report_line(runs[-1]))
            print(lines[-1], flush=True)
    lines.append(summary(runs))
    print(lines[-1])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Appended, as every bench script's results: a short look (--runs 2) replaced the recorded soak.
        with args.out.open("a") as results:
            results.write("\n".join(lines) + "\n\n")
    return 0 if all(run.clean for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
