"""Helpers for the training tests: run pipeline/train.py as a user would, read what it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processes import run_process

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "pipeline" / "train.py"
# Every test trains the demo (resnet10t at 32 px), never the defaults (the paper's ResNet-50 at
# 224 px): on a CPU without native bf16 one step of that takes minutes.
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
# The settings of conftest's trained_demo run (a command resuming it must repeat them).
TRAINED_DEMO_SETTINGS = ("schedule.epochs=3", "loader.batch_size=32", "schedule.warmup_epochs=0", "optim.base_lr=0.8")
# Keys whose values are wall-clock measurements: everything else must repeat exactly.
TIMING_KEYS = {"img_per_s", "data_wait_share", "epoch_seconds"}
# `accelerate launch` of this interpreter's environment (the CLI may not be on PATH) for two gloo
# ranks on CPU (with ACCELERATE_USE_CPU=true): `--cpu --num_processes 2` silently runs ONE process.
LAUNCH_TWO_CPU_RANKS = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
                        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--main_process_port", "0"]


def small_run_args(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    """The demo config at reduced size: few steps, no bar. ``--config`` is explicit: not every
    entry point defaults to the demo (tests/train_ddp_worker.py does not)."""
    return ["--config", str(DEMO_CONFIG), f"data.shards={shards}", "data.demo=false", f"run.out_dir={out_dir}",
            "run.progress=false", "loader.num_threads=1", *extra]


def train_command(args: list[str]) -> list[str]:
    """``python pipeline/train.py ARGS``."""
    return [sys.executable, str(TRAIN), *args]


def run_train(args: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a training to its end (the timeout a hang guard); stdout and stderr captured as text."""
    return run_process(train_command(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                       env=child_env())


def cli_here(args: list[str], capsys) -> tuple[int, str, str]:
    """``pipeline/train.py ARGS`` in this process, for input the CLI refuses before any training:
    (exit code, stdout, stderr). Milliseconds where a new interpreter costs 4 s (torch, timm); an
    uncaught exception fails the test as a traceback would. Accelerate's process state is cleared
    before (what earlier tests left) and after (what a refusal after the set-up leaves)."""
    from accelerate.state import AcceleratorState, GradientState

    from pipeline.cli import run_cli

    def reset():  # before too: an earlier test in this process may have left another precision
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    try:
        code = run_cli(args, default_config=None)
    finally:
        reset()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def child_env() -> dict:
    """The environment of a test run: quiet, and no GPU even where one exists."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def without_timings(records: list[dict]) -> list[dict]:
    """Metrics records without the wall-clock keys."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
