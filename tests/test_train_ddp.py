"""Two CPU ranks (gloo) through ``accelerate launch``: identical parameters after training,
different data on each rank, every val sample counted once, exit code 0."""

import json
import subprocess

import pytest
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, small_run_args

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow


def test_two_process_ddp(demo_shards, tmp_path):
    shards = demo_shards
    out = tmp_path / "run"
    # --cpu alone would silently start ONE process: the world size is asserted.
    args = small_run_args(shards, out, "schedule.epochs=2", "run.max_train_steps=5", "loader.batch_size=16",
                          "run.tensorboard=true")
    done = subprocess.run([*LAUNCH_TWO_CPU_RANKS, str(REPO / "tests" / "train_ddp_worker.py"), str(tmp_path / "rank"), *args],
                          cwd=REPO, env=dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 2 * 5 * 16
    # CutMix boxes come later: these are the loader's own images, so a shared sample would match.
    assert len(set(ranks[0]["seen"][:80]) & set(ranks[1]["seen"][:80])) < 8, "ranks read the same data"
    records = read_metrics(out)
    assert [(r["world_size"], r["global_batch"], r["val_samples"]) for r in records] == [(2, 32, 359)] * 2
    assert "val top-1 error" in done.stdout
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard events written"
