"""End to end through pipeline/train.py: the demo at reduced size, timm-loadable weights, plots,
and one clear message for each kind of bad input."""

import json
from pathlib import Path
import os
import stat
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, TRAINED_DEMO_SETTINGS, cli_here, run_train, small_run_args

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_run(trained_demo):
    return trained_demo


def test_demo_learns(demo_run, demo_shards):
    out, done = demo_run
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(r["world_size"] == 1 and r["val_samples"] == 359 for r in records)  # every val sample once
    assert records[-1]["top1_err"] < 60 and records[-1]["top5_err"] < 30  # chance: 90% and 50%
    assert records[-1]["best_top1_err"] == min(r["top1_err"] for r in records)
    assert "val top-1 error" in done.stdout
    steps = json.loads((demo_shards / "train.json").read_text())["totals"]["samples"] // 32  # full batches
    assert done.stdout.startswith(f"training resnet10t on 10 classes of {demo_shards}: 1 process on cpu, precision "
                                  f"no, global batch 32 (peak lr 0.1), {steps} steps per epoch, epochs 1-3, mix "
                                  f"cutmix (cutmix_alpha 1, prob 0.5, per batch, partner permutation); run "
                                  f"folder {out}\n")  # lr: optim.base_lr 0.8 * 32 / 256; prob: configs/demo.yaml
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "epoch-0003" / "COMPLETE").is_file()


def test_exported_weights_load_in_timm(demo_run):
    import timm

    out, _ = demo_run
    weights = out / "model.safetensors"
    loaded = timm.create_model("resnet10t", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(weights), num_classes=10)).eval()
    # Independent reference: the model Accelerate saved in the last checkpoint, loaded by hand.
    reference = timm.create_model("resnet10t", num_classes=10)
    reference.load_state_dict(load_file(out / "checkpoints" / "epoch-0003" / "model.safetensors"))
    reference.eval()
    fresh = timm.create_model("resnet10t", num_classes=10).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))
        assert not torch.allclose(fresh(images), reference(images))


def test_timms_own_preprocessing_of_the_export_gives_the_logged_val_error(demo_run, demo_shards):
    """model.json's load line, then timm's standard evaluation recipe (resolve_data_config +
    create_transform) on the val images read with webdataset and PIL: the trainer's logged val
    error. Without the preprocessing in the overlay timm used resnet10t's ImageNet input (176 px,
    bicubic): 89% error for this 1.7% model (walkthrough)."""
    import timm
    import webdataset as wds
    from timm.data import create_transform, resolve_data_config

    out, _ = demo_run
    model = eval(json.loads((out / "model.json").read_text())["load"], {"timm": timm}).eval()
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0
    transform = create_transform(**config)
    tars = sorted(str(path) for path in demo_shards.glob("val-*.tar"))
    wrong = total = 0
    with torch.no_grad():
        for image, label in wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("jpg", "cls"):
            predicted = model(transform(image.convert("RGB")).unsqueeze(0)).argmax(1).item()
            wrong, total = wrong + (predicted != int(label)), total + 1
    logged = read_metrics(out)[-1]
    assert total == logged["val_samples"] == 359
    # PIL's bilinear resize of a 32 px image to 32 px is none; DALI's decoder may differ by a grey
    # level, so one image of 359 may go the other way.
    assert abs(100 * wrong / total - logged["top1_err"]) <= 100 / total + 1e-9


def test_a_run_on_synthetic_batches_says_what_it_measures_and_evaluates_nothing(demo_shards, tmp_path):
    """loader.backend=synthetic trains on one random batch: its 'val top-1 err 80.00%' over 40
    random samples (the val set has 37) and its 'best' read like results (walkthrough). Now no
    epoch is evaluated, and the start and last lines say what the run measured."""
    out = tmp_path / "run"
    done = run_train(small_run_args(demo_shards, out, "loader.backend=synthetic", "schedule.epochs=2",
                                    "run.max_train_steps=2", "loader.batch_size=16", "schedule.warmup_epochs=0"))
    assert done.returncode == 0, done.stderr[-3000:]
    first, *_, last = done.stdout.splitlines()
    assert first.endswith(f"run folder {out}; loader.backend=synthetic: one batch of random images and labels, made "
                          "once on the device, at every step (the model-only throughput ceiling): no image is read, "
                          "none of the data options applies, and no epoch is evaluated"), first
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert not any(key.endswith("_err") or key.startswith(("val_", "best")) for r in records for key in r)
    assert last.startswith("done in ") and last.endswith(
        f" img/s in the last epoch, on random images (loader.backend=synthetic: nothing evaluated); run folder {out}")
    assert f"{records[-1]['img_per_s']:.0f} img/s" in last and "top-1" not in done.stdout
    # A run with evaluations resumed on synthetic batches: its epoch 1 best is no result of these
    # epochs (it was carried into them, then the last line read a top-1 error there was not: KeyError).
    real = tmp_path / "real"
    short = small_run_args(demo_shards, real, "schedule.epochs=1", "run.max_train_steps=2", "loader.batch_size=16",
                           "schedule.warmup_epochs=0")
    assert run_train(short).returncode == 0
    resumed = run_train([*short, "schedule.epochs=2", "loader.backend=synthetic", "run.resume_with_changes=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = read_metrics(real)
    assert "best_top1_err" in first and not any(key.endswith("_err") or key.startswith("best") for key in second)
    assert resumed.stdout.splitlines()[-1].endswith(f"(loader.backend=synthetic: nothing evaluated); run folder {real}")


def test_every_file_of_the_run_is_as_readable_as_the_umask_allows(demo_run):
    """The weights too (exported and in each checkpoint): safetensors writes them 0600, which left
    them unreadable to the rest of a team on a shared cluster."""
    out, _ = demo_run
    mask = os.umask(0o022)  # the umask the training process inherited from this one
    os.umask(mask)
    modes = {path.relative_to(out).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in out.rglob("*") if path.is_file()}
    assert {"model.safetensors", "checkpoints/epoch-0003/model.safetensors", "config.yaml"} <= modes.keys()
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o666 & ~mask} == {}


def test_plot_writes_curves(demo_run):
    from pipeline.plot import main

    out, _ = demo_run
    assert main([str(out)]) == 0
    for name in ("loss.png", "error.png", "lr.png", "throughput.png"):
        assert (out / "plots" / name).read_bytes().startswith(b"\x89PNG")


PANELS = ("loss.png", "error.png", "lr.png", "throughput.png")
# Two epochs as pipeline/train.py writes them (one JSON object per line, each with its epoch).
METRICS = "".join(json.dumps(record) + "\n" for record in [
    {"epoch": 1, "train_loss": 2.3, "lr": 0.1, "img_per_s": 100.0, "top1_err": 80.0, "top5_err": 40.0},
    {"epoch": 2, "train_loss": 2.0, "lr": 0.05, "img_per_s": 110.0, "top1_err": 70.0, "top5_err": 30.0},
])


def plot_here(argv, capsys):
    """pipeline.plot's main(argv) in this process: (exit code, stdout, stderr)."""
    from pipeline.plot import main

    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_pngs(folder):
    for name in PANELS:
        assert (folder / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name


def test_plot_takes_the_metrics_file(tmp_path, capsys):
    # It read RUN/metrics.jsonl/metrics.jsonl and found "no metrics to plot".
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(METRICS)
    code, out, err = plot_here([tmp_path / "run" / "metrics.jsonl"], capsys)
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "run" / "plots" / name) for name in PANELS]
    assert_pngs(tmp_path / "run" / "plots")


def test_plot_out_folder_is_created(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(METRICS)
    out_dir = tmp_path / "curves" / "run1"  # neither folder exists yet
    code, out, err = plot_here([tmp_path / "run", "--out", out_dir], capsys)
    assert code == 0, err
    assert out.splitlines() == [str(out_dir / name) for name in PANELS]
    assert_pngs(out_dir)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]  # no plots/ there


def test_the_error_panel_names_the_split_the_run_evaluated(tmp_path, capsys, monkeypatch):
    """A CIFAR recipe evaluates the test split: its panel said "Validation error"; epochs are whole
    numbers on the axis (it showed 1.25, 1.5, ...)."""
    import matplotlib.axes
    import matplotlib.figure

    titles, ticks = [], []
    real_set = matplotlib.axes.Axes.set

    def recording_set(axes, **kwargs):
        titles.append(kwargs.get("title"))
        return real_set(axes, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set", recording_set)
    real_savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(figure, *args, **kwargs):
        ticks.append(list(figure.axes[0].get_xticks()))
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(METRICS)
    assert plot_here([tmp_path / "run"], capsys)[0] == 0
    assert titles[1] == "Validation error"  # no config.yaml: the default split
    assert all(float(t).is_integer() for t in ticks[1]), ticks[1]
    (tmp_path / "run" / "config.yaml").write_text("data:\n  eval_split: test\n")
    titles.clear()
    assert plot_here([tmp_path / "run"], capsys)[0] == 0
    assert titles[1] == "Test error"


def test_a_panel_with_nothing_to_draw_is_left_out_with_a_note(tmp_path, capsys):
    """A run that evaluated no epoch (run.eval_every past its end): its error panel was an empty
    frame with matplotlib's legend warning; now it is not drawn, and a note says why."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(
        json.dumps({key: value for key, value in json.loads(line).items() if not key.endswith("_err")}) + "\n"
        for line in METRICS.splitlines()))
    code, out, err = plot_here([tmp_path / "run"], capsys)
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "run" / "plots" / name) for name in PANELS if name != "error.png"]
    assert err == (f"note: error.png not drawn: no record of {tmp_path / 'run' / 'metrics.jsonl'} has top1_err or "
                   "top5_err (no epoch was evaluated: run.eval_every, or loader.backend=synthetic)\n")
    assert sorted(path.name for path in (tmp_path / "run" / "plots").iterdir()) == sorted(set(PANELS) - {"error.png"})
    # An earlier drawing of the panel in --out would pass for this run's (review): removed, and said.
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "error.png").write_bytes(b"\x89PNG earlier")
    code, _, err = plot_here([tmp_path / "run", "--out", tmp_path / "curves"], capsys)
    assert code == 0 and err.endswith(f"; the earlier {tmp_path / 'curves' / 'error.png'} is removed\n"), err
    assert not (tmp_path / "curves" / "error.png").exists() and (tmp_path / "curves" / "loss.png").is_file()


def test_plot_mistakes_are_one_error_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(METRICS)
    (tmp_path / "taken").write_text("a file, not a folder")
    (tmp_path / "config.yaml").write_text("mix: {mode: cutmix}\n")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-000000.tar").write_bytes(b"")
    other = tmp_path / "other"  # another run: its folder and its plots are its own
    (other / "checkpoints").mkdir(parents=True)
    (other / "metrics.jsonl").write_text(METRICS)
    cases = [
        ([metrics, "--out", other / "plots"], f"error: --out {other / 'plots'}: inside another run's folder, {other} "
                                              "(its plots would then show this run's curves); the plots need a folder "
                                              f"of their own (default {tmp_path / 'run' / 'plots'})"),
        ([metrics, "--out", other], f"error: --out {other}: another run's folder, {other} (its plots"),
        # PNGs among shard tars (the evaluation refuses its --out there too).
        ([metrics, "--out", tmp_path / "shards"], f"error: --out {tmp_path / 'shards'}: a shards folder; the plots "
                                                  f"need a folder of their own (default {tmp_path / 'run' / 'plots'})"),
        # A missing path said "PATH/metrics.jsonl: no metrics to plot", as if the folder were there.
        ([tmp_path / "nope"], f"error: {tmp_path / 'nope'}: no such file or folder"),
        ([tmp_path / "config.yaml"], f"error: {tmp_path / 'config.yaml'}: not a run folder or its metrics.jsonl"),
        ([tmp_path], f"error: {tmp_path}: no metrics.jsonl (not a run folder, or no epoch has finished yet)"),
        ([metrics, "--out", tmp_path / "taken"], f"error: --out: cannot write into {tmp_path / 'taken'} ("),
    ]
    for argv, line in cases:
        code, out, err = plot_here(argv, capsys)
        assert code == 2 and out == "", (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith(line), (argv, err)
    assert sorted(path.name for path in other.iterdir()) == ["checkpoints", "metrics.jsonl"]
    (tmp_path / "run" / "checkpoints").mkdir()  # a run folder of its own: its plots/ is its own
    assert plot_here([metrics, "--out", tmp_path / "run" / "plots"], capsys)[0] == 0
    # A run set aside without checkpoints (RUN/replaced-1: metrics and config only) owns its plots/.
    aside = tmp_path / "run" / "replaced-1"
    aside.mkdir()
    (aside / "metrics.jsonl").write_text(METRICS)
    assert plot_here([aside], capsys)[0] == 0 and (aside / "plots" / "loss.png").is_file()
    code, _, err = plot_here([metrics, "--out", aside / "plots"], capsys)
    assert code == 2 and err.startswith(f"error: --out {aside / 'plots'}: inside another run's folder, {aside} "), err
    # Lines that are not records (read_metrics names the line; it was a traceback here) and a binary file.
    # The remedy is a plot's, not the training's "run.resume=none starts over" (walkthrough).
    for content, line in [("not json\n", f"error: {metrics}: line 1 "),
                          ('{"epoch": 1}\n[2]\n', f"error: {metrics}: line 2 is not a metrics record (no epoch): "
                                                   "'[2]'; mend or remove that line, and the others are plotted"),
                          (b"\x89PNG\r\n\x1a\n\xff\xfe", f"error: {metrics}: not a text file"),
                          # Records with nothing to draw: four empty panels, exit 0 (walkthrough).
                          ('{"epoch": 1}\n', f"error: {metrics}: no metrics to plot (no record has any of "
                                             "train_loss, top1_err, top5_err, lr, img_per_s)"),
                          # A string was drawn as a category axis; null as nothing.
                          ('{"epoch": 1, "train_loss": "abc"}\n', f"error: {metrics}: epoch 1's train_loss is "
                                                                  "'abc', not a number; mend or remove that line"),
                          ('{"epoch": 1, "train_loss": 2.0, "lr": null}\n', f"error: {metrics}: epoch 1's lr is "
                                                                            "None, not a number")]:
        metrics.write_bytes(content.encode() if isinstance(content, str) else content)
        code, out, err = plot_here([metrics], capsys)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(line), err
        assert "run.resume" not in err, err


@pytest.mark.parametrize("extra, message", [
    (["data.shards=/nonexistent/shards"], "no shards at /nonexistent/shards"),
    (["data.shards=nonexistent/shards"], f"no shards at nonexistent/shards (relative to {REPO}): "),
    (["model.name=resnet5O"], "timm has no model 'resnet5O'"),
    (["optim.lr=0.1"], "unknown config key optim.lr"),
    (["loader.batch_size=big"], "loader.batch_size: expected a whole number"),
    (["--config", "configs/nothing.yaml"], "config file not found"),
    (["--config", "configs"], f"--config {REPO / 'configs'}: a folder, not a YAML file"),  # was "not found"
    # resume a run with other training settings; with them allowed, still never another model
    (["model.name=resnet14t"], "was trained with model.name=resnet10t (now resnet14t), which a resume cannot "
                               "change (the checkpoint holds that model's weights)"),
    (["model.name=resnet14t", "run.resume_with_changes=true"], "model.name=resnet10t (now resnet14t), which a resume "
                                                               "cannot change"),
    (["--config", sys.executable], "not a UTF-8 text file (a YAML config is expected)"),  # a binary
    (["run.out_dir=README.md"], "run.out_dir=README.md: a file, not a folder"),
])
def test_bad_input_gives_one_message(demo_run, demo_shards, extra, message, capsys, monkeypatch):
    """In this process (each case costs milliseconds, not a 4 s interpreter start); the script
    itself, as a user runs it, in the test below."""
    out, _ = demo_run
    monkeypatch.chdir(REPO)  # relative paths in the cases and messages are the repository's
    args = [a for a in small_run_args(demo_shards, out, *TRAINED_DEMO_SETTINGS)
            if not a.startswith(extra[0].split("=")[0] + "=")]
    code, _, err = cli_here([*args, *extra], capsys)
    assert code == 2, err[-3000:]
    errors = err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], err[-3000:]


def test_a_run_folder_that_is_the_shards_folder_or_inside_it_is_refused(demo_shards, capsys, monkeypatch):
    """Checkpoints and config.yaml landed among the shard tars, without a word (walkthrough review)."""
    monkeypatch.delenv("RANK", raising=False)
    for out in (demo_shards, demo_shards / "run"):
        code, _, err = cli_here(small_run_args(demo_shards, out), capsys)
        assert (code, err.splitlines()) == (2, [
            f"error: run.out_dir={out} is data.shards={demo_shards} or inside it: the run's checkpoints would land "
            "among the shards; give the run a folder of its own"])
    assert not (demo_shards / "run").exists() and not (demo_shards / "checkpoints").exists()


def test_a_run_folder_in_a_runs_checkpoints_is_refused_and_the_checkpoint_left_alone(demo_run, demo_shards, capsys,
                                                                                         monkeypatch):
    """A checkpoint pasted into run.out_dir instead of run.resume (walkthrough): the run started
    there, took the checkpoint's model.safetensors for an earlier export, moved it away and wrote its
    own, and the original run then skipped that checkpoint as damaged."""
    monkeypatch.delenv("RANK", raising=False)
    run, _ = demo_run
    checkpoints = run / "checkpoints"
    newest = checkpoints / "epoch-0003"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    go_on = f"continue that run with run.out_dir={run}"
    cases = [
        (newest, f"is a checkpoint: this run's files would land in it (its model.safetensors taken for an old export "
                 f"and replaced); {go_on}, or start from it with run.resume={newest} and a run folder of its own"),
        (newest / "sub", f"is inside the checkpoint {newest}: this run's files would land in it (its "
                         f"model.safetensors taken for an old export and replaced); {go_on}, or start from it with "
                         f"run.resume={newest} and a run folder of its own"),
        (checkpoints, f"holds the checkpoints of the run in {run}: {go_on}, or give this one a folder of its own"),
        (checkpoints / "new", f"is inside {checkpoints}, which holds the checkpoints of the run in {run}: {go_on}, or "
                              "give this one a folder of its own"),
    ]
    for out, message in cases:
        for check in ([], ["--check"]):
            code, _, err = cli_here([*check, *small_run_args(demo_shards, out, *TRAINED_DEMO_SETTINGS)], capsys)
            assert (code, err.splitlines()) == (2, [f"error: run.out_dir={out} {message}"]), err[-3000:]
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_a_folder_under_a_file_is_one_line_before_any_work(demo_shards, tmp_path, capsys, monkeypatch):
    """``--check`` passed both, then the run ended in mkdir's traceback (walkthrough)."""
    monkeypatch.delenv("RANK", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("")
    for check in ([], ["--check"]):
        code, _, err = cli_here([*check, *small_run_args(demo_shards, afile / "run")], capsys)
        assert (code, err.splitlines()) == (2, [f"error: run.out_dir={afile / 'run'}: {afile} is a file, not a "
                                                "folder"]), err[-3000:]
        # The default demo config builds its shards where data.shards says.
        code, _, err = cli_here([*check, "--config", str(REPO / "configs" / "demo.yaml"),
                                 f"run.out_dir={tmp_path / 'run'}", f"data.shards={afile / 'x' / 'shards'}"], capsys)
        assert (code, err.splitlines()) == (2, [f"error: data.shards={afile / 'x' / 'shards'}: {afile} is a file, not "
                                                "a folder: data.demo=true builds the demo digits into a folder "
                                                "there"]), err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no run folder made for a refused run


def test_a_users_own_checkpoints_folder_is_a_place_for_a_run_like_any_other(demo_run, demo_shards, tmp_path,
                                                                           capsys, monkeypatch):
    """A folder named checkpoints holding run folders and a checkpoint kept by hand, no run's own:
    a fine-tune there was refused as "inside the checkpoints of the run in STORE" (review)."""
    import shutil

    monkeypatch.delenv("RANK", raising=False)
    run, _ = demo_run
    store = tmp_path / "store" / "checkpoints"
    kept = Path(shutil.copytree(run / "checkpoints" / "epoch-0003", store / "r10-final"))
    code, out, err = cli_here(["--check", *small_run_args(demo_shards, store / "finetune", *TRAINED_DEMO_SETTINGS),
                               f"run.resume={kept}"], capsys)
    assert code == 0 and f"finished ({kept})" in out, err[-3000:]  # its 3 epochs are all the settings ask
    # The checkpoint kept there is still refused as a run folder, without naming STORE as a run.
    code, _, err = cli_here(["--check", *small_run_args(demo_shards, kept, *TRAINED_DEMO_SETTINGS)], capsys)
    assert (code, err.splitlines()) == (2, [
        f"error: run.out_dir={kept} is a checkpoint: this run's files would land in it (its model.safetensors taken "
        f"for an old export and replaced); start from it with run.resume={kept} and a run folder of its own"])


def test_a_broken_link_in_the_way_is_named_as_one(demo_shards, tmp_path, capsys, monkeypatch):
    """It was called "a file"; as data.shards itself it passed --check, and the demo build then
    ended in a traceback (review)."""
    monkeypatch.delenv("RANK", raising=False)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    gone = tmp_path / "gone"
    code, _, err = cli_here(["--check", *small_run_args(demo_shards, gone / "run")], capsys)
    assert (code, err.splitlines()) == (2, [f"error: run.out_dir={gone / 'run'}: {gone} is a broken link, not a "
                                            "folder"])
    code, _, err = cli_here(["--check", "--config", str(REPO / "configs" / "demo.yaml"),
                             f"run.out_dir={tmp_path / 'run'}", f"data.shards={gone}"], capsys)
    assert (code, err.splitlines()) == (2, [f"error: data.shards={gone}: a broken link, not a folder: data.demo=true "
                                            "builds the demo digits into a folder there"])


def test_the_script_says_bad_input_in_one_line_and_exits_2(demo_run, demo_shards):
    out, _ = demo_run
    done = run_train([*small_run_args(demo_shards, out, *TRAINED_DEMO_SETTINGS), "optim.lr=0.1"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "error: unknown config key optim.lr; optim has ['base_lr', 'decay_norm_and_bias', 'fused', 'momentum', "
        "'nesterov', 'reference_batch', 'weight_decay']"]
    assert "Traceback" not in done.stdout


def _digit_folders(root, per_class: int):
    """digit_0..digit_9 class folders of ``per_class`` small JPEGs each: a user's own digits (MNIST
    laid out so), named as the demo's classes."""
    from PIL import Image

    for digit in range(10):
        (root / f"digit_{digit}").mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (16, 16), (20 * digit, 7 * index, 90)).save(root / f"digit_{digit}" / f"{index}.jpg")
    return root


def test_a_users_build_of_digit_classes_is_not_taken_for_the_demo(demo_shards, tmp_path, capsys):
    """The classes digit_0..digit_9 were all that marked an earlier demo build: a user's own build of
    such folders, without a test split, was deleted by a start with data.demo=true (the demo config,
    the default without --config) and the digits trained in its place (walkthrough)."""
    import shutil

    from shards.cli import main as shards_main
    from shards.demo import not_a_demo_folder

    assert not_a_demo_folder(demo_shards) is None  # the demo's own build
    digits = _digit_folders(tmp_path / "digits", per_class=2)
    for name, extra in (("mine", []), ("same_settings", ["--shard-size", "256kB"])):
        for split in ("train", "val"):
            assert shards_main(["build", str(digits), str(tmp_path / name), "--split", split, "--quiet",
                                *extra]) == 0
    (tmp_path / "mine" / "NOTES.txt").write_text("my notes\n")
    before = sorted(path.name for path in (tmp_path / "mine").iterdir())
    capsys.readouterr()  # the builds' summaries
    run = ["--config", str(REPO / "configs" / "demo.yaml"), "run.progress=false", "schedule.epochs=1",
           "run.max_train_steps=1", "loader.num_threads=1"]
    code, out, err = cli_here([*run, f"data.shards={tmp_path / 'mine'}", f"run.out_dir={tmp_path / 'run'}"], capsys)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        f"error: data.shards={tmp_path / 'mine'}: it holds NOTES.txt, which a demo build does not write; "
        "data.demo=true builds the demo digits only into a missing or empty folder or an earlier demo build: "
        "set data.demo=false to train on it"]
    assert sorted(path.name for path in (tmp_path / "mine").iterdir()) == before
    assert (tmp_path / "mine" / "NOTES.txt").read_text() == "my notes\n" and not (tmp_path / "run").exists()
    (tmp_path / "mine" / "NOTES.txt").unlink()
    assert not_a_demo_folder(tmp_path / "mine") == (
        "it holds another build of classes named as the demo's (shard_size 512000000, seed 0, num_parts 1; the "
        "demo's: shard_size 256000, seed 0, num_parts 1)")
    # Built as the demo builds, but 2 images per class: the demo's split has 1,438 train digits.
    assert not_a_demo_folder(tmp_path / "same_settings") == (
        "it holds another build of classes named as the demo's (20 train images, 2, 2, 2, ... per class; the "
        "demo's 1438: 150, 144, 144, ...)")
    copy = shutil.copytree(demo_shards, tmp_path / "demo_copy")
    (copy / "val.json.orig").write_bytes((copy / "val.json").read_bytes())  # a user's backup: not the demo's
    assert not_a_demo_folder(copy) == "it holds val.json.orig, which a demo build does not write"


def test_a_diverged_training_stops_with_one_error_and_keeps_no_nan_epoch(demo_shards, tmp_path, capsys):
    """optim.base_lr=1e10: the weights went NaN in the first steps and the run went on to its end,
    exit 0, with "loss nan" and the error of a constant prediction as its result (walkthrough)."""
    out = tmp_path / "run"
    code, _, err = cli_here(small_run_args(demo_shards, out, "schedule.epochs=2", "run.max_train_steps=4",
                                           "schedule.warmup_epochs=0", "optim.base_lr=1e10"), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: the training diverged in epoch 1: its mean train loss is nan (lr "), err
    assert lines[0].endswith("nothing of this epoch is kept (the checkpoints are of the epochs before it): a smaller "
                             "optim.base_lr, or data.mean/std of the images' scale, usually fixes it"), err
    assert not (out / "metrics.jsonl").exists() and not list((out / "checkpoints").glob("epoch-*"))


def test_no_arguments_means_demo():
    from pipeline.cli import parse_args
    from pipeline.config import resolve_config

    args = parse_args([])
    assert args.config is None and args.overrides == []
    config = resolve_config(config_file=REPO / "configs" / "demo.yaml", overrides=[])
    assert config.data.demo and config.mix.mode == "cutmix" and config.data.image_size == 32


def test_the_demo_is_never_built_over_other_shards(tmp_path, capsys):
    """data.demo=true (the demo config's default) builds the digits into data.shards when its val or
    test split is missing: never over another build, and never beside it."""
    from shard_fixtures import make_imagefolder, wnid

    from shards.cli import main as shards_main

    make_imagefolder(tmp_path / "images", num_classes=2, per_class=3)
    for name in ("mine", "shards"):  # train splits only: the demo would want val and test
        assert shards_main(["build", str(tmp_path / "images"), str(tmp_path / name), "--split", "train",
                            "--quiet"]) == 0
    before = {name: (tmp_path / name / "train.json").read_bytes() for name in ("mine", "shards")}
    run = ["--config", str(REPO / "configs" / "demo.yaml"), "run.progress=false", "schedule.epochs=1",
           "run.max_train_steps=1", "loader.num_threads=1"]
    code, _, err = cli_here([*run, f"data.shards={tmp_path / 'mine'}", f"run.out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2, err[-3000:]
    assert err.strip().splitlines() == [
        f"error: data.shards={tmp_path / 'mine'}: it holds another build (2 classes: {wnid(0)}, {wnid(1)}, ...); "
        "data.demo=true builds the demo digits only into a missing or empty folder or an earlier demo build: "
        "set data.demo=false to train on it"]
    # A new folder beside a build named shards: the digits go into the new folder only (they used to be
    # built into PARENT/shards, over that build, and then moved).
    done = run_train([*run, f"data.shards={tmp_path / 'digits'}", f"run.out_dir={tmp_path / 'run2'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    # The build's summaries name each manifest where it ends up, not the scratch folder it was built in.
    assert [line.strip() for line in done.stdout.splitlines() if "manifest:" in line] == [
        f"manifest: {tmp_path / 'digits' / split}.json" for split in ("train", "val", "test")], done.stdout
    assert {name: (tmp_path / name / "train.json").read_bytes() for name in ("mine", "shards")} == before
    assert json.loads((tmp_path / "digits" / "train.json").read_text())["classes"][:2] == ["digit_0", "digit_1"]
    # Nothing else beside them (the refused run wrote no run folder; no raw digits, no scratch folder).
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits", "images", "mine", "run2", "shards"]
