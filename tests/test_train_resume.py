"""A run killed mid-training (SIGKILL) or stopped by Slurm's signals (SIGTERM, SIGUSR1) and resumed
with run.resume=auto ends with exactly the metrics and weights of an uninterrupted run."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import run_process, started_process
from safetensors.torch import load_file
from train_helpers import REPO, run_train, small_run_args, child_env, train_command, without_timings

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow

# Drop path: the torch RNG state must be restored too; the colour augmentation: its draws too.
EXTRA = ("schedule.epochs=3", "run.max_train_steps=6", "loader.batch_size=32", "run.deterministic=true",
         "model.drop_path_rate=0.05", "data.color_jitter=0.4", "data.lighting_std=0.1")


@pytest.fixture(scope="module")
def uninterrupted(demo_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    done = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _interrupt(shards: Path, out: Path, *, signum: int, after: str) -> int:
    """Start a run, send ``signum`` once checkpoint ``after`` is complete; returns the exit code."""
    with started_process(train_command(small_run_args(shards, out, *EXTRA)), cwd=REPO, env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        marker = out / "checkpoints" / after / "COMPLETE"
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the run ended or stalled before its first checkpoint"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode in (0, -signal.SIGKILL), stderr[-3000:]
    return process.returncode


def _assert_same_run(out: Path, reference: Path) -> None:
    assert without_timings(read_metrics(out)) == without_timings(read_metrics(reference))
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours), "weights differ from the uninterrupted run"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1])
def test_interrupted_then_resumed_equals_uninterrupted(demo_shards, uninterrupted, tmp_path, signum):
    code = _interrupt(demo_shards, tmp_path, signum=signum, after="epoch-0001")
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # a polite stop: checkpoint, then exit 0 before the end
        assert code == 0 and not (tmp_path / "model.safetensors").exists()
    assert len(read_metrics(tmp_path)) < 3
    done = run_train(small_run_args(demo_shards, tmp_path, *EXTRA))  # run.resume=auto is the default
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    _assert_same_run(tmp_path, uninterrupted)


def test_kill_during_save_leaves_no_valid_checkpoint(demo_shards, uninterrupted, tmp_path):
    """A tmp- folder (a save cut short) and a folder without COMPLETE are never resumed from."""
    import shutil

    from pipeline.checkpoint import find_resume_checkpoint

    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    newest = find_resume_checkpoint("auto", tmp_path)
    assert newest.name == "epoch-0003"
    shutil.copytree(newest, tmp_path / "checkpoints" / "tmp-epoch-0004")
    (newest / "COMPLETE").unlink()  # as if the kill came before the marker
    assert find_resume_checkpoint("auto", tmp_path).name == "epoch-0002"


def _copy_of_finished(run: Path, to: Path) -> Path:
    """A finished run's folder without its exported weights: a run stopped after its last checkpoint."""
    import shutil

    shutil.copytree(run, to)
    (to / "model.safetensors").unlink()
    return to


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _same_size_garbage(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("name, damage, problem", [
    ("model.safetensors", _cut_short, "model.safetensors has 1000 bytes, the save wrote"),
    # Accelerate would skip this file with an info-level log line, and draw other random numbers.
    ("random_states_0.pkl", _same_size_garbage, "random_states_0.pkl does not load"),
])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_ends_the_same(demo_shards, uninterrupted, tmp_path,
                                                                          name, damage, problem):
    """A file of the newest checkpoint damaged after its save (a full disk, a copy cut short):
    run.resume=auto names it, resumes from the one before, and ends as if nothing happened."""
    out = _copy_of_finished(uninterrupted, tmp_path / "run")
    damage(out / "checkpoints" / "epoch-0003" / name)
    checked = run_train(["--check", *small_run_args(demo_shards, out, *EXTRA)])  # says it before the start does
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert f"resumes from {out / 'checkpoints' / 'epoch-0002'} (skipping damaged epoch-0003: {problem}" \
        in checked.stdout
    done = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipped damaged checkpoint {out / 'checkpoints' / 'epoch-0003'}: {problem}" in done.stdout
    assert "resumed from" in done.stdout and "(after epoch 2)" in done.stdout
    _assert_same_run(out, uninterrupted)


def test_a_checkpoint_that_does_not_load_is_one_error(demo_shards, uninterrupted, tmp_path):
    """A file of the recorded size but other bytes (bit rot, a foreign file) cannot be caught by
    its size: the load fails, and says so in one line naming the checkpoint."""
    out = _copy_of_finished(uninterrupted, tmp_path / "run")
    optimizer = out / "checkpoints" / "epoch-0003" / "optimizer.bin"
    optimizer.write_bytes(bytes(optimizer.stat().st_size))
    done = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert done.returncode == 2
    assert f"error: run.resume: {out / 'checkpoints' / 'epoch-0003'} does not load (" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_resume_with_other_training_settings_is_refused_or_kept_on_record(demo_shards, uninterrupted, tmp_path):
    """Another schedule and lr on resume are refused, naming them, and nothing is written; with
    run.resume_with_changes=true the run goes on with the new lr and schedule (not the checkpoint's)
    and its old config is kept beside the new one."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)  # with its exported model
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    longer = small_run_args(demo_shards, out, *EXTRA, "schedule.epochs=5", "optim.base_lr=0.8")
    refused = run_train(longer)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was trained with other settings (optim.base_lr=0.4 (now 0.8), schedule.epochs=3 (now 5)); " \
        in refused.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    old_config = (out / "config.yaml").read_text()
    done = run_train([*longer, "run.resume_with_changes=true"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming with changed settings: optim.base_lr=0.4 (now 0.8), schedule.epochs=3 (now 5)" in done.stdout
    assert (out / "config.before-epoch-0003.yaml").read_text() == old_config
    assert "epochs: 5" in (out / "config.yaml").read_text() and "epochs: 3" in old_config
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    # The new schedule in closed form (the checkpoint's would have gone on past the end of its
    # 3-epoch cosine): lr 0.8 * 32 / 256, 6 updates an epoch, one epoch of warmup, then cosine to 0
    # over the 24 updates left of 5 epochs; an epoch records the lr of its last update (update 23,
    # 17 into the cosine, for epoch 4; 29, 23 in, for epoch 5), not the next epoch's first.
    assert records[3]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 17 / 24)), rel=1e-9)
    assert records[4]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 23 / 24)), rel=1e-9)
    # The 3-epoch export is renamed as the run trains on (nothing evaluates it as the 5-epoch model).
    assert (out / "model.before-epoch-0003.safetensors").read_bytes() == before[Path("model.safetensors")]
    assert (out / "model.safetensors").read_bytes() != before[Path("model.safetensors")]
    # Each load line names its own weights (the set-aside one named model.safetensors: the new ones).
    assert loaded_by_its_line(out / "model.before-epoch-0003.safetensors")
    assert loaded_by_its_line(out / "model.safetensors")


def loaded_by_its_line(weights: Path) -> bool:
    """Whether the load line of ``weights``' .json, run from another folder, names these weights
    (by their absolute path) and builds a model holding exactly them."""
    import json
    import os

    import timm

    line = json.loads(weights.with_suffix(".json").read_text())["load"]
    assert f"file={str(weights.absolute())!r}" in line, line
    here = os.getcwd()
    try:
        os.chdir("/")
        model = eval(line, {"timm": timm})
    finally:
        os.chdir(here)
    expected, state = load_file(weights), model.state_dict()
    return set(expected) <= set(state) and all(torch.equal(state[key], value) for key, value in expected.items())


def test_a_moved_run_folder_run_again_names_its_weights_where_they_are(demo_shards, uninterrupted, tmp_path):
    """A finished run run again keeps its export; its model.json's load line went on naming the
    weights where the folder had been (a review)."""
    import shutil

    out = tmp_path / "moved"
    shutil.copytree(uninterrupted, out)  # a move, for the run folder: the old place is another run's
    assert f"file={str(uninterrupted / 'model.safetensors')!r}" in (out / "model.json").read_text()
    done = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert done.returncode == 0 and "the run has already finished" in done.stdout, done.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()
    assert loaded_by_its_line(out / "model.safetensors")


def test_starting_over_sets_the_earlier_run_aside(demo_shards, uninterrupted, tmp_path):
    """run.resume=none in a run folder: the earlier run's checkpoints (later epochs than the new
    run's first ones) move to RUN/replaced-1 with its metrics and config, so that a later
    run.resume=auto continues the new run, never the earlier one."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)  # with its exported model
    earlier_metrics = (out / "metrics.jsonl").read_text()
    earlier_export = (out / "model.safetensors").read_bytes()
    # What a resume with changes of the earlier run kept: it goes with that run (was left behind).
    kept = ["config.before-epoch-0002.yaml", "model.before-epoch-0002.safetensors"]
    for name in kept:
        (out / name).write_text(name)
    # What was made of the earlier run: curves, TensorBoard events, evaluations (named as users
    # name them with --out); they went on standing beside the new run's files as if they were its.
    made = {"plots/loss.png": "curve", "tensorboard/events.out.tfevents.1.vm": "events",
            "eval/eval.json": "{}", "eval-cub/eval.json": "{}", "eval-cub/cam_grid.png": "grid"}
    for name, text in made.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(text)
    (out / "notes").mkdir()  # a folder of the user's own: stays
    one_epoch = small_run_args(demo_shards, out, *EXTRA, "schedule.epochs=1")
    done = run_train([*one_epoch, "run.resume=none"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run.resume=none: the earlier run's checkpoints, metrics, config and export (with its eval/, " \
        f"eval-cub/, plots/, tensorboard/) are moved to {out / 'replaced-1'}" in done.stdout
    assert {name: (out / "replaced-1" / name).read_text() for name in made} == made
    assert not any((out / name.split("/")[0]).exists() for name in made) and (out / "notes").is_dir()
    assert (out / "replaced-1" / "model.safetensors").read_bytes() == earlier_export
    assert sorted(p.name for p in (out / "replaced-1" / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    assert (out / "replaced-1" / "metrics.jsonl").read_text() == earlier_metrics
    assert all((out / "replaced-1" / name).read_text() == name and not (out / name).exists() for name in kept)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    again = run_train(one_epoch)  # run.resume=auto: the new run's own checkpoint (its last: it said "resumed from")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"the run has already finished ({out / 'checkpoints' / 'epoch-0001'}, epoch 1 of 1): nothing to train " \
        in again.stdout and "resumed from" not in again.stdout


def test_a_run_folder_without_its_checkpoints_is_set_aside_not_taken_over(demo_shards, uninterrupted, tmp_path):
    """Checkpoints deleted to free disk, the results kept: the same command started fresh in that
    folder, cut the earlier run's metrics, replaced its config and left its plots and evaluations
    beside the new run's. Now they move to RUN/replaced-1 as with run.resume=none, and --check says so."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "checkpoints")
    earlier = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "config.yaml", "model.safetensors")}
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_text("curve")
    one_epoch = small_run_args(demo_shards, out, *EXTRA, "schedule.epochs=1")
    checked = run_train(["--check", *one_epoch])
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert f"starts fresh (the earlier run's files move to {out}/replaced-<n>)" in checked.stdout
    done = run_train(one_epoch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"no checkpoint left in {out}, so this run starts fresh: the earlier run's metrics, config and export "
            f"(with its plots/) are moved to {out / 'replaced-1'}") in done.stdout
    assert {name: (out / "replaced-1" / name).read_bytes() for name in earlier} == earlier
    assert (out / "replaced-1" / "plots" / "loss.png").read_text() == "curve"
    assert [r["epoch"] for r in read_metrics(out)] == [1] and not (out / "plots").exists()


def test_a_finished_run_run_again_keeps_its_export(demo_shards, uninterrupted, tmp_path):
    """The same command after the end: a checkpoint damaged in place (bytes flipped, size kept, so
    the size checks pass) was exported over the good weights. The export stays; an unfinished one
    is written again, byte for byte the one the run wrote (reference: the run's own export)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    exported = (out / "model.safetensors").read_bytes()
    weights = out / "checkpoints" / "epoch-0003" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 5000] = bytes(255 - b for b in data[middle:middle + 5000])
    weights.write_bytes(bytes(data))
    # Its loader state of other settings (as after a resume with another process count; the same
    # size): nothing is read, so no warning of a data order that restarts (walkthrough).
    state = out / "checkpoints" / "epoch-0003" / "loader-rank0.json"
    assert '"world_size": 1,' in state.read_text()
    state.write_text(state.read_text().replace('"world_size": 1,', '"world_size": 9,'))
    again = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    assert "warning" not in again.stderr, again.stderr
    assert (out / "model.safetensors").read_bytes() == exported
    # An export cut short without its model.json (a kill mid-export before exports were renamed
    # into place whole): written again from the (repaired) checkpoint.
    shutil.copy2(uninterrupted / "checkpoints" / "epoch-0003" / "model.safetensors", weights)
    (out / "model.safetensors").write_bytes(exported[:1000])
    (out / "model.json").unlink()
    lost = run_train(small_run_args(demo_shards, out, *EXTRA))
    assert lost.returncode == 0, lost.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == exported and (out / "model.json").is_file()
    assert not list(out.glob(".tmp-*"))


def test_resuming_a_named_earlier_checkpoint_sets_the_later_ones_aside(demo_shards, uninterrupted, tmp_path):
    """run.resume=RUN/checkpoints/epoch-0002 of a finished run: a new branch from there. The later
    checkpoint (epoch-0003) and the export it led to move to RUN/replaced-1 with a copy of the
    metrics (before, a crash in the new epoch 3 and run.resume=auto went back to the old epoch-0003,
    and RUN/model.safetensors stood for the run meanwhile); deterministic, the branch ends as the
    uninterrupted run did."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    earlier_metrics, earlier_export = (out / "metrics.jsonl").read_text(), (out / "model.safetensors").read_bytes()
    named = out / "checkpoints" / "epoch-0002"
    # What was made of the epochs it replaces (walkthrough: they stayed beside the branch's files):
    # the curves, evaluations of the export and of epoch-0003 (moved; also one recorded where the run
    # folder stood before a move), and TensorBoard events of all three epochs, written here by
    # TensorBoard's own writer. Evaluations of other weights stay: epoch-0002, which the branch
    # keeps, another run's export, an export set aside earlier.
    (tmp_path / "other").mkdir()

    def evaluation(weights, checkpoint=None):
        return {"settings": {"weights": str(weights), "checkpoint": checkpoint and {"folder": str(checkpoint)}}}

    later = out / "checkpoints" / "epoch-0003"
    made = {"plots/loss.png": "curve", "eval/eval.json": evaluation(out / "model.safetensors"),
            "eval-3/eval.json": evaluation(later / "model.safetensors", later),
            "eval-moved/eval.json": evaluation("/gone/run/checkpoints/epoch-0003/model.safetensors",
                                               "/gone/run/checkpoints/epoch-0003"),
            "eval-2/eval.json": evaluation(named / "model.safetensors", named),
            "eval-other/eval.json": evaluation(tmp_path / "other" / "model.safetensors"),
            "eval-before/eval.json": evaluation(out / "model.before-epoch-0002.safetensors")}
    for name, content in made.items():
        (out / name).parent.mkdir()
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(out / "tensorboard") as writer:
        for epoch in (1, 2, 3):
            writer.add_scalar("train_loss", 100.0 + epoch, global_step=epoch)
    done = run_train([*small_run_args(demo_shards, out, *EXTRA), f"run.resume={named}", "run.tensorboard=true"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run.resume={named}: the run's later checkpoints (epoch-0003) and the export they led to are moved to " \
        f"{out / 'replaced-1'}, with a copy of its metrics and config (with eval/, eval-3/, eval-moved/, plots/, " \
        "tensorboard/)" in done.stdout
    moved = {"plots/loss.png", "eval/eval.json", "eval-3/eval.json", "eval-moved/eval.json"}
    assert {name for name in made if (out / "replaced-1" / name).exists()} == moved
    assert all((out / name).exists() != (name in moved) for name in made)
    # TensorBoard (its own reader): the branch's epoch 3 alone in RUN; the replaced one kept aside.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def losses(folder):
        events = EventAccumulator(str(folder))
        events.Reload()
        return [(event.step, event.value) for event in events.Scalars("train_loss")]

    branch_loss = read_metrics(out)[-1]["train_loss"]
    assert losses(out / "tensorboard") == [(1, 101.0), (2, 102.0), (3, pytest.approx(branch_loss))]
    assert losses(out / "replaced-1" / "tensorboard") == [(1, 101.0), (2, 102.0), (3, 103.0)]
    # Gone from the files, not hidden (TensorBoard's fast loader ignores a writer's purge_step).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = [(event.step, value.simple_value) for path in (out / "tensorboard").rglob("events.out.tfevents.*")
             for event in EventFileLoader(str(path)).Load() if event.HasField("summary")
             for value in event.summary.value if value.tag == "train_loss"]
    assert (3, 103.0) not in steps and sorted(step for step, _ in steps) == [1, 2, 3]
    assert [p.name for p in (out / "replaced-1" / "checkpoints").iterdir()] == ["epoch-0003"]
    assert (out / "replaced-1" / "metrics.jsonl").read_text() == earlier_metrics
    assert (out / "replaced-1" / "model.safetensors").read_bytes() == earlier_export
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    _assert_same_run(out, uninterrupted)
    # The newest checkpoint named: nothing is later, nothing moves.
    again = run_train([*small_run_args(demo_shards, out, *EXTRA), f"run.resume={out / 'checkpoints' / 'epoch-0003'}"])
    assert again.returncode == 0 and "later checkpoints" not in again.stdout, again.stderr[-3000:]
    assert not (out / "replaced-2").exists()
    assert "another run folder's" not in done.stdout + again.stdout
    # Another run's checkpoint into a fresh folder: said, since that folder's history starts at epoch 3.
    branch = tmp_path / "branch"
    elsewhere = run_train([*small_run_args(demo_shards, branch, *EXTRA), f"run.resume={named}"])
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert (f"note: {named} is another run folder's ({out}): its metrics, config and plots up to epoch 2 stay there; "
            f"{branch} records the epochs from here on") in elsewhere.stdout
    assert [record["epoch"] for record in read_metrics(branch)] == [3]


@pytest.fixture(scope="module")
def uninterrupted_torch(demo_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole_torch")
    done = run_train(small_run_args(demo_shards, out, *EXTRA, "loader.backend=torch"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_stop_in_the_middle_of_an_epoch_then_resume_equals_uninterrupted(demo_shards, request, tmp_path, backend):
    """SIGTERM during a slow step of epoch 2 (tests/slow_step_worker.py): the checkpoint is
    mid-epoch by construction, so the resumed run must continue the epoch's loader and mixing
    draws exactly (DALI from its saved state, with another thread count, torch by re-reading the
    epoch's first steps)."""
    reference = request.getfixturevalue("uninterrupted" if backend == "dali" else "uninterrupted_torch")
    extra = (*EXTRA, f"loader.backend={backend}")
    worker = [sys.executable, str(REPO / "tests" / "slow_step_worker.py"), str(tmp_path / "markers"), "8", "2",
              *small_run_args(demo_shards, tmp_path, *extra)[2:]]  # the worker adds the demo config itself
    with started_process(worker, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True) as process:
        markers = tmp_path / "markers"
        deadline = time.monotonic() + 300
        while "start 8" not in (markers.read_text() if markers.exists() else ""):
            assert process.poll() is None and time.monotonic() < deadline, "the run did not reach step 8"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # during update 8 = step 2 of epoch 2 (6 steps an epoch)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    assert (tmp_path / "checkpoints" / "epoch-0001-step-000003" / "COMPLETE").exists()
    # DALI's thread count is free to change on resume (pipeline/resume_config.py): resumed with 2.
    threads = ("loader.num_threads=2",) if backend == "dali" else ()
    done = run_train(small_run_args(demo_shards, tmp_path, *extra, *threads))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "(epoch 2 after its step 3)" in done.stdout
    _assert_same_run(tmp_path, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs above stand in)")
def test_a_deterministic_run_trains_on_cuda(demo_shards, tmp_path):
    # run.deterministic=true on the GPU: every op of a training step must have a deterministic CUDA
    # implementation (torch raises otherwise), and the run sets cuBLAS's fixed workspace, without
    # which older torch refuses the first GPU matmul (torch 2.14 no longer checks: there this run
    # tests the ops).
    env = {key: value for key, value in child_env().items() if key not in ("CUDA_VISIBLE_DEVICES",
                                                                           "CUBLAS_WORKSPACE_CONFIG")}
    args = small_run_args(demo_shards, tmp_path / "run", "schedule.epochs=1", "run.max_train_steps=4",
                          "loader.batch_size=32", "run.deterministic=true")
    done = run_process(train_command(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_metrics(tmp_path / "run")
    assert record["global_step"] == 4 and math.isfinite(record["train_loss"])


def test_a_config_file_kept_in_the_run_folder_is_not_lost(demo_shards, tmp_path):
    """`--config RUN/config.yaml` with the user's own file there: the run rewrote it with its
    resolved config, comments and base: line gone, without a word (walkthrough). It is kept as
    RUN/config.given.yaml; the run's own record given back (the same command again) is not."""
    import yaml

    from train_helpers import DEMO_CONFIG

    out = tmp_path / "run"
    out.mkdir()
    mine = (f"# my notes: try a short run\nbase: {DEMO_CONFIG}\nschedule: {{epochs: 1}}\n"
            f"run: {{max_train_steps: 2, progress: false}}\n")
    (out / "config.yaml").write_text(mine)
    args = ["--config", str(out / "config.yaml"), f"data.shards={demo_shards}", "data.demo=false",
            f"run.out_dir={out}", "loader.num_threads=1"]
    done = run_train(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"note: --config {out / 'config.yaml'} is the run folder's config.yaml, which the run rewrites with its "
            f"resolved config; your file is kept as {out / 'config.given.yaml'}") in done.stdout
    assert (out / "config.given.yaml").read_text() == mine
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["schedule"]["epochs"] == 1 and "base" not in written
    again = run_train(args)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    assert "note: --config" not in again.stdout and not (out / "config.given-2.yaml").exists()
    # The run's record given back with a change (a longer run): the record holds nothing lost.
    longer = run_train([*args, "schedule.epochs=2", "run.resume_with_changes=true"])
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "note: --config" not in longer.stdout and not (out / "config.given-2.yaml").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["schedule"]["epochs"] == 2
