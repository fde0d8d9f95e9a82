"""Two CPU ranks (gloo) through ``accelerate launch``: identical parameters after training,
different data on each rank, every val sample counted once, one loader per split for the whole
run, no blocking collective in the training steps, exit code 0."""

import json
from pathlib import Path

import pytest
import yaml
from processes import run_process
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, run_train, small_run_args

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow

# run.tensorboard last: test_resuming_with_another_process_count leaves it out.
TWO_RANK_SETTINGS = ("schedule.epochs=2", "run.max_train_steps=5", "loader.batch_size=16", "data.color_jitter=0.4",
                     "data.lighting_std=0.1", "run.tensorboard=true")


def run_two_ranks(demo_shards, tmp_path, *extra):
    """A 2-epoch run of two CPU ranks: (its folder, the folder of the ranks' probe files, the process)."""
    out = tmp_path / "run"
    # --cpu alone would silently start ONE process: the world size is asserted. The demo config
    # (small_run_args): the worker's default would be the paper's ResNet-50 at 224 px.
    args = small_run_args(demo_shards, out, *TWO_RANK_SETTINGS, *extra)
    done = run_process([*LAUNCH_TWO_CPU_RANKS, str(REPO / "tests" / "train_ddp_worker.py"), str(tmp_path / "rank"),
                        *args], cwd=REPO, env=dict(child_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, tmp_path, done


@pytest.fixture(scope="module")
def two_rank_run(demo_shards, tmp_path_factory):
    return run_two_ranks(demo_shards, tmp_path_factory.mktemp("ddp"))


def ranks_of(tmp_path) -> list[dict]:
    """Each rank's probe record (tests/train_ddp_worker.py), ranks 0 and 1."""
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def assert_ranks_train_one_model_on_their_own_data(ranks: list[dict]) -> None:
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["params"] == ranks[1]["params"]
    # Each epoch every rank reads 5 batches of 16 of its own part: no sample on both ranks.
    for epoch in ("0", "1"):
        mine, theirs = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert len(mine) == len(theirs) == 5 * 16 and len(set(mine)) == len(set(theirs)) == 5 * 16
        assert not set(mine) & set(theirs), f"epoch {epoch}: both ranks read {sorted(set(mine) & set(theirs))[:3]}"
    # Each rank its own CutMix boxes, lambdas and partners, and its own colour draws, at every step
    # (the same would mix every rank's batch alike: a smaller effective variety of the global batch).
    for kind in ("mix", "color"):
        mine, theirs = ranks[0]["draws"][kind], ranks[1]["draws"][kind]
        assert len(mine) == len(theirs) == 2 * 5, (kind, len(mine), len(theirs))
        assert all(a != b for a, b in zip(mine, theirs)), f"the ranks drew the same {kind} randomness"
        assert len(set(mine)) == len(mine), f"a rank repeated a {kind} draw"


def test_two_process_ddp(two_rank_run):
    out, tmp_path, done = two_rank_run
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["model"]["name"], resolved["data"]["image_size"]) == ("resnet10t", 32)
    ranks = ranks_of(tmp_path)
    assert_ranks_train_one_model_on_their_own_data(ranks)
    # The same initial weights, but each rank its own dropout / drop path draws after them.
    assert ranks[0]["model_seed"] != ranks[1]["model_seed"]
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


def test_two_process_ddp_with_the_torch_loader(demo_shards, tmp_path):
    """The torch backend under DDP: each rank reads its own part (a DataLoader handed to
    Accelerate's prepare() would read everything on rank 0 and scatter it), every val sample once."""
    out, probes, _ = run_two_ranks(demo_shards, tmp_path, "loader.backend=torch")
    assert_ranks_train_one_model_on_their_own_data(ranks_of(probes))
    assert [(r["world_size"], r["val_samples"]) for r in read_metrics(out)] == [(2, 359)] * 2


def files_but_the_lock(run: Path) -> dict:
    """Each file of a run folder and its bytes, but for the lock file (which names the training
    that took it last: a start refused after taking it rewrites that)."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def test_resuming_with_another_process_count(demo_shards, two_rank_run, tmp_path):
    """A checkpoint of two processes resumed by one: the global batch, the scaled lr and the updates
    per epoch would change mid-run, so it is refused, naming both counts, and nothing is written;
    with run.resume_with_changes=true the run goes on at the new global batch's lr and schedule."""
    import math
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_rank_run[0], out)
    before = files_but_the_lock(out)
    same = small_run_args(demo_shards, out, *TWO_RANK_SETTINGS)
    first = out / "checkpoints" / "epoch-0001"
    refused = run_train([*same, f"run.resume={first}"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert (f"error: run.resume: {first} was trained by 2 processes (a global batch of 32), this run has 1 (16): "
            "the lr and the updates per epoch would change mid-run; launch 2 processes") in refused.stderr
    assert files_but_the_lock(out) == before
    one_process = small_run_args(demo_shards, out, *TWO_RANK_SETTINGS[:-1], "schedule.epochs=4")
    # Refused for another setting too: every difference at once, the process count among them (it
    # was left out, to be refused on its own after the user fixed the others).
    refused = run_train(one_process)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert ("was trained with other settings (schedule.epochs=2 (now 4), processes=2 (now 1)); resume with the "
            "same ones") in refused.stderr
    assert files_but_the_lock(out) == before
    done = run_train([*one_process, "run.resume_with_changes=true"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming with changed settings: schedule.epochs=2 (now 4), processes=2 (now 1)" in done.stdout
    records = read_metrics(out)
    assert [(r["epoch"], r["world_size"], r["global_batch"]) for r in records] == [
        (1, 2, 32), (2, 2, 32), (3, 1, 16), (4, 1, 16)]
    # The demo's schedule in closed form at the new global batch: lr 0.4 * 16 / 256, 5 updates per
    # epoch, one epoch of warmup, then cosine to 0 over the 15 updates left of 4 epochs; each epoch
    # records the lr of its last update (updates 14 and 19: 9 and 14 into the cosine).
    lr = 0.4 * 16 / 256
    assert records[2]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 9 / 15)), rel=1e-9)
    assert records[3]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-9)


def test_two_cpu_ranks_launched_without_accelerate_use_cpu_are_one_error(demo_shards, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU and without
    ACCELERATE_USE_CPU: Accelerate joins no process group and each rank ran as a training of its
    own into the same run folder (one refused by the lock as "another training", the other killed
    by the launcher). One error line says why and how to launch, nothing is written."""
    out = tmp_path / "run"
    env = child_env()  # no GPU visible
    env.pop("ACCELERATE_USE_CPU", None)
    done = run_process([*LAUNCH_TWO_CPU_RANKS, str(REPO / "pipeline" / "train.py"), *small_run_args(demo_shards, out)],
                       cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: the launcher started 2 processes but each runs alone, as a training of its own: "
                      "Accelerate joins processes on GPUs (torch sees none here) or on CPUs when "
                      "ACCELERATE_USE_CPU=true says so; on CPUs: `ACCELERATE_USE_CPU=true accelerate launch "
                      "--multi_gpu --num_processes 2 ...`, on GPU nodes check that `python -c 'import torch; "
                      "print(torch.cuda.device_count())'` sees the GPUs"], done.stderr[-3000:]
    assert "training resnet10t" not in done.stdout and not out.exists()
