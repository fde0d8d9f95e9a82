"""Two CPU ranks (gloo) through ``accelerate launch``: identical parameters after training,
different data on each rank, every val sample counted once, one loader per split for the whole
run, no blocking collective in the training steps, exit code 0."""

import json

import pytest
import yaml
from processes import run_process
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, small_run_args

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow


def test_two_process_ddp(demo_shards, tmp_path):
    shards = demo_shards
    out = tmp_path / "run"
    # --cpu alone would silently start ONE process: the world size is asserted. The demo config
    # (small_run_args): the worker's default would be the paper's ResNet-50 at 224 px.
    args = small_run_args(shards, out, "schedule.epochs=2", "run.max_train_steps=5", "loader.batch_size=16",
                          "run.tensorboard=true")
    done = run_process([*LAUNCH_TWO_CPU_RANKS, str(REPO / "tests" / "train_ddp_worker.py"), str(tmp_path / "rank"),
                        *args], cwd=REPO, env=dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["model"]["name"], resolved["data"]["image_size"]) == ("resnet10t", 32)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["params"] == ranks[1]["params"]
    # The same initial weights, but each rank its own dropout / drop path draws after them.
    assert ranks[0]["model_seed"] != ranks[1]["model_seed"]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 2 * 5 * 16
    # CutMix boxes come later: these are the loader's own images, so a shared sample would match.
    assert len(set(ranks[0]["seen"][:80]) & set(ranks[1]["seen"][:80])) < 8, "ranks read the same data"
    for rank in ranks:
        assert rank["loaders_built"] == {"train": 1, "val": 1}  # once per run, not per epoch
        # The stop flag: one asynchronous all-reduce per step (a CPU group), nothing blocking.
        assert [epoch["steps"] for epoch in rank["epochs"]] == [5, 5]
        for epoch in rank["epochs"]:
            assert epoch["collectives"] == [["all_reduce", True]] * epoch["steps"], epoch["collectives"]
    records = read_metrics(out)
    assert [(r["world_size"], r["global_batch"], r["val_samples"]) for r in records] == [(2, 32, 359)] * 2
    assert "val top-1 error" in done.stdout
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard events written"
