"""What `model.compile=true` costs at the start of a run, and what it gains after: the real trainer
(`pipeline/train.py` on the demo's digits shards) run eager, compiled with an empty inductor cache,
compiled again with that cache warm, and eager again (the eager baseline is the median of its two
runs, taken around the compiled ones: these machines are noisy).

Per run: the whole run's wall time (interpreter start, imports, loader, every epoch's steps and
evaluation, whose graph is compiled at the first one, checkpoints), and the training steps of its
first epoch (where the train step is compiled) and of its last (the compiled graph reused), as the
trainer records them in metrics.jsonl (`epoch_seconds`, the steps without the evaluation); the
ratios are against eager's.

    python bench/bench_compile_start.py     # appends to bench/results/compile_start_cpu.txt
    python bench/bench_compile_start.py --epochs 3 --steps 4 --out /tmp/compile_start.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_mix import cpu_name, publish  # bench/ is on the path when run as a script
from cli_checks import at_least, writable_out

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RUNS = ("eager", "compiled, empty cache", "compiled, warm cache", "eager again")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="train steps per epoch (run.max_train_steps, default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compile_start_cpu.txt",
                        help="results file to append to (default bench/results/compile_start_cpu.txt)")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "epochs", "steps")
    at_least(parser, args, 2, "batch_size")  # CutMix's partner
    writable_out(parser, args.out)
    return args


def train(shards: Path, out_dir: Path, cache: Path, *, compiled: bool, args) -> dict:
    """One run of the trainer; its wall time and the epoch_seconds of its first and last epochs."""
    command = [sys.executable, str(REPO / "pipeline" / "train.py"), f"data.shards={shards}", "data.demo=false",
               f"run.out_dir={out_dir}", f"schedule.epochs={args.epochs}", "schedule.warmup_epochs=0",
               f"run.max_train_steps={args.steps}", f"loader.batch_size={args.batch_size}", "loader.num_threads=1",
               "run.progress=false", f"model.compile={str(compiled).lower()}"]
    # The inductor's and Triton's caches in a folder of this run's own: empty for the first compiled run.
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"error: the training run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall": wall, "first": epochs[0]["epoch_seconds"], "last": epochs[-1]["epoch_seconds"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    from shards.demo import build_demo_shards

    with tempfile.TemporaryDirectory(prefix="compile_start_") as tmp:
        root = Path(tmp)
        shards = build_demo_shards(root / "data", quiet=True)
        results = {}
        for index, name in enumerate(RUNS):
            print(f"== {name}", flush=True)
            results[name] = train(shards, root / f"run{index}", root / "inductor", compiled="compiled" in name,
                                  args=args)
    eager = {key: statistics.median([results["eager"][key], results["eager again"][key]])
             for key in ("wall", "first", "last")}
    lines = [f"# python bench/bench_compile_start.py --epochs {args.epochs} --steps {args.steps} "
             f"--batch-size {args.batch_size}",
             f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {cpu_name()} ({os.cpu_count()} cores), "
             f"torch {torch.__version__}",
             f"# pipeline/train.py on the demo digits (resnet10t, 32 px, fp32), {args.epochs} epochs x {args.steps} "
             f"steps of batch {args.batch_size}, each epoch then its evaluation; epochs: their training steps",
             f"{'run':<32}{'whole run':>12}{'first epoch':>14}{'last epoch':>13}"]
    for name in RUNS:
        row = results[name]
        lines.append(f"{name:<32}{row['wall']:>10.1f} s{row['first']:>12.1f} s{row['last']:>11.1f} s")
    for name in ("compiled, empty cache", "compiled, warm cache"):
        ratios = [results[name][key] / eager[key] for key in ("wall", "first", "last")]
        lines.append(f"{name + ' / eager':<32}{ratios[0]:>11.2f}x{ratios[1]:>13.2f}x{ratios[2]:>12.2f}x")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
