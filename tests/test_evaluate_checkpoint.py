"""``python -m pipeline.evaluate RUN/checkpoints/epoch-NNNN``: a checkpoint's own weights with its
run's preprocessing, checked against an independent pass (timm with the checkpoint's weights loaded
by hand, the split read by webdataset, decoded by PIL and cropped by torchvision); its default
output folder beside the run's own evaluation; ``eval.json`` naming the checkpoint; and one
``error:`` line for a checkpoint that is incomplete, damaged or outside its run folder."""

import io
import json
import shutil

import pytest
import torch
import yaml

from pipeline.errors import EvalError
from pipeline.evaluate.cli import build_request, main, make_parser

pytestmark = pytest.mark.slow
CHECKPOINT = "epoch-0002"  # kept in the 3-epoch demo run (run.keep_checkpoints=2), not the final model


@pytest.fixture(scope="module")
def unfinished_run(trained_demo, tmp_path_factory):
    """A copy of the demo run without its exported weights (as a run still training has none):
    only the checkpoint can be what is evaluated."""
    run = tmp_path_factory.mktemp("copy") / "run"
    shutil.copytree(trained_demo[0], run, ignore=shutil.ignore_patterns("eval*", ".lock"))
    (run / "model.safetensors").unlink()
    (run / "model.json").unlink()
    return run


def one_error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def independent_predictions(weights, *, shards, split, config) -> list[tuple[int, int]]:
    """(label, predicted class) of every sample of ``split``: resnet10t built by timm with the
    checkpoint's weights loaded by hand, the validation transform written out with torchvision."""
    import timm
    import webdataset as wds
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision.transforms import v2

    model = timm.create_model("resnet10t", num_classes=10)
    model.load_state_dict(load_file(weights))
    model.eval()
    data = config["data"]
    size = data["image_size"]
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(round(size / data["crop_pct"]), antialias=True),
                            v2.CenterCrop(size)])
    mean, std = torch.tensor(data["mean"]).view(3, 1, 1), torch.tensor(data["std"]).view(3, 1, 1)
    pairs = []
    for shard in json.loads((shards / f"{split}.json").read_text())["shards"]:
        for sample in wds.WebDataset(str(shards / shard["name"]), shardshuffle=False, empty_check=False):
            x = (transform(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).float() / 255 - mean) / std
            with torch.no_grad():
                pairs.append((int(sample["cls"]), int(model(x[None]).argmax())))
    return pairs


def test_a_checkpoint_is_evaluated_with_its_own_weights(unfinished_run, demo_shards, capsys):
    checkpoint = unfinished_run / "checkpoints" / CHECKPOINT
    assert main([str(checkpoint), "--tasks", "classify", "--quiet", "--num-threads", "1"]) == 0
    # Beside the run's own evaluation (RUN/eval), never over it.
    out = unfinished_run / f"eval-{CHECKPOINT}"
    assert not (unfinished_run / "eval").exists()
    results = json.loads((out / "eval.json").read_text())
    state = json.loads((checkpoint / "state.json").read_text())
    assert results["settings"]["checkpoint"] == {"folder": str(checkpoint), "epoch": 2, "step_in_epoch": 0,
                                                 "global_step": state["global_step"]}
    assert results["settings"]["weights"] == str(checkpoint / "model.safetensors")
    assert "(the checkpoint after epoch 2)" in (out / "eval.md").read_text()
    config = yaml.safe_load((unfinished_run / "config.yaml").read_text())
    split = config["data"]["eval_split"]
    assert results["settings"]["split"] == split
    pairs = independent_predictions(checkpoint / "model.safetensors", shards=demo_shards, split=split, config=config)
    classify = results["classify"]
    assert classify["samples"] == len(pairs)
    # The loaders' resize may move a pixel value by one grey level: one sample may flip.
    wrong = sum(label != predicted for label, predicted in pairs)
    assert abs(100 * wrong / len(pairs) - classify["top1_err"]) <= 100 / len(pairs) + 1e-9
    for label in range(10):
        mine = [predicted for truth, predicted in pairs if truth == label]
        error = 100 * sum(p != label for p in mine) / len(mine)
        assert abs(error - classify["per_class_top1_err"][label]) <= 100 / len(mine) + 1e-9, label


def test_a_checkpoints_weights_file_and_a_relative_path_name_the_checkpoint(unfinished_run, tmp_path,
                                                                            monkeypatch):
    checkpoint = unfinished_run / "checkpoints" / CHECKPOINT
    state = json.loads((checkpoint / "state.json").read_text())
    monkeypatch.chdir(unfinished_run / "checkpoints")
    for given in (checkpoint / "model.safetensors", CHECKPOINT):
        request = build_request(make_parser().parse_args([str(given), "--tasks", "classify"]))
        source = request.source
        assert (source.model_name, source.num_classes, source.classes) == ("resnet10t", 10, state["classes"])
        assert source.weights.resolve() == checkpoint / "model.safetensors"
        assert source.checkpoint["epoch"] == 2 and request.out.resolve() == unfinished_run / f"eval-{CHECKPOINT}"
        assert (source.image_size, source.shards) == (32, request.shards)
    # From inside the checkpoint: its folder by its name (it was "RUN/eval-" and "." in eval.json).
    monkeypatch.chdir(checkpoint)
    for given in (".", "model.safetensors"):
        request = build_request(make_parser().parse_args([given, "--tasks", "classify"]))
        assert request.source.checkpoint["folder"] == str(checkpoint), given
        assert request.out == unfinished_run / f"eval-{CHECKPOINT}", given
    # A run folder kept in a folder called "checkpoints" is still a run folder.
    run = tmp_path / "checkpoints" / "run"
    run.mkdir(parents=True)
    shutil.copy(unfinished_run / "config.yaml", run)
    shutil.copy(checkpoint / "model.safetensors", run)
    with pytest.raises(EvalError, match="not weights exported by pipeline/train.py"):  # a run's check, as before
        build_request(make_parser().parse_args([str(run), "--tasks", "classify"]))
    # A checkpoint's weights copied out of it: where the model's description is.
    alone = tmp_path / "copied.safetensors"
    shutil.copy(checkpoint / "model.safetensors", alone)
    with pytest.raises(EvalError, match=r"not weights exported by pipeline/train.py \(a checkpoint's own "
                                        r"model.safetensors has none: evaluate its folder, RUN/checkpoints/epoch-NNNN"):
        build_request(make_parser().parse_args([str(alone), "--tasks", "classify", "--shards", str(tmp_path)]))


def test_a_checkpoint_saved_under_ddp_loads_without_the_wrapper_prefix(unfinished_run, tmp_path):
    """Accelerate's save_state saves the prepared model: under DDP its keys start with `module.`."""
    import timm
    from safetensors.torch import load_file, save_file

    from pipeline.evaluate.source import load_model, resolve_source

    run = _hand_built_run(unfinished_run, tmp_path)
    checkpoint = run / "checkpoints" / CHECKPOINT
    weights = load_file(checkpoint / "model.safetensors")
    save_file({f"module.{key}": value for key, value in weights.items()}, checkpoint / "model.safetensors")
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"]["model.safetensors"] = (checkpoint / "model.safetensors").stat().st_size
    (checkpoint / "state.json").write_text(json.dumps(state))
    reference = timm.create_model("resnet10t", num_classes=10)
    reference.load_state_dict(weights)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the evaluation's model is channels_last (the demo's): other rounding
        ours, theirs = load_model(resolve_source(checkpoint))(images), reference.eval()(images)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def _hand_built_run(unfinished_run, tmp_path):
    """RUN/config.yaml and RUN/checkpoints/ with copies of the demo's epoch-0002 and epoch-0003."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(unfinished_run / "config.yaml", run)
    for name in (CHECKPOINT, "epoch-0003"):
        shutil.copytree(unfinished_run / "checkpoints" / name, run / "checkpoints" / name)
    return run


def _incomplete(checkpoint):
    (checkpoint / "COMPLETE").unlink()
    return checkpoint, "an incomplete checkpoint (no COMPLETE: its save did not finish); the run's complete ones: " \
        "epoch-0003"


def _damaged(checkpoint):
    saved = json.loads((checkpoint / "state.json").read_text())["files"]["model.safetensors"]
    with open(checkpoint / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    return checkpoint, f"a damaged checkpoint (model.safetensors has 1000 bytes, the save wrote {saved}); the run's " \
        "complete ones: epoch-0003"


def _outside_its_run(checkpoint):
    lone = checkpoint.parent.parent.parent / "lone"
    shutil.move(checkpoint, lone)
    return lone, f"a checkpoint outside its run folder (no {lone.parent.parent / 'config.yaml'})"


def _the_checkpoints_folder(checkpoint):
    return checkpoint.parent, "name one checkpoint in it (epoch-0002, epoch-0003), or the run folder"


@pytest.mark.parametrize("spoil", [_incomplete, _damaged, _outside_its_run, _the_checkpoints_folder])
def test_a_checkpoint_that_cannot_be_evaluated_is_one_error_line(unfinished_run, tmp_path, capsys, spoil):
    given, message = spoil(_hand_built_run(unfinished_run, tmp_path) / "checkpoints" / CHECKPOINT)
    assert one_error_line(capsys, [str(given), "--tasks", "classify"]).startswith(f"error: {given}: {message}")


def test_a_checkpoint_keeps_the_preprocessing_it_trained_with(unfinished_run, tmp_path):
    """The run's config.yaml is its newest start's: after a resume that changed the image size
    and the mean (run.resume_with_changes=true), an older checkpoint (the best epoch's, kept for
    this) is still evaluated as it was trained, by its state.json's settings (review of this change)."""
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run, ignore=shutil.ignore_patterns("eval*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    trained = (config["data"]["image_size"], config["data"]["mean"])
    config["data"].update(image_size=48, mean=[0.5, 0.5, 0.5])
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    source = build_request(make_parser().parse_args([str(run / "checkpoints" / CHECKPOINT), "--tasks",
                                                     "classify"])).source
    assert (source.image_size, list(source.mean)) == trained == (32, [0.485, 0.456, 0.406])


def test_compare_takes_an_evaluated_checkpoint(tmp_path):
    """compare RUN RUN/checkpoints/epoch-NNNN said the checkpoint had no eval.json, just after
    `evaluate` had written it where it writes by default, RUN/eval-epoch-NNNN (a walkthrough)."""
    from pipeline.evaluate.runner import read_results

    (tmp_path / "run" / "checkpoints" / CHECKPOINT).mkdir(parents=True)
    (tmp_path / "run" / f"eval-{CHECKPOINT}").mkdir()
    results = {"settings": {"model": "resnet10t", "finished": True}, "classify": {"top1_err": 12.5}}
    (tmp_path / "run" / f"eval-{CHECKPOINT}" / "eval.json").write_text(json.dumps(results))
    assert read_results(tmp_path / "run" / "checkpoints" / CHECKPOINT) == results
    (tmp_path / "run" / "checkpoints" / "epoch-0001").mkdir()  # a checkpoint not evaluated
    with pytest.raises(EvalError, match="epoch-0001: no eval.json"):
        read_results(tmp_path / "run" / "checkpoints" / "epoch-0001")
    with pytest.raises(EvalError, match="epoch-0009: no such file or folder"):
        read_results(tmp_path / "run" / "checkpoints" / "epoch-0009")


def test_a_checkpoint_that_is_not_there_names_those_that_are(unfinished_run, capsys):
    """A pruned or misspelt checkpoint name: the run's complete checkpoints are listed (by hand: the
    demo run keeps the last two of its three epochs)."""
    missing = unfinished_run / "checkpoints" / "epoch-0001"
    assert one_error_line(capsys, [str(missing), "--tasks", "classify"]) == (
        f"error: {missing}: no such run folder or weights file; the run's complete checkpoints: epoch-0002, epoch-0003")


def test_compare_labels_a_checkpoints_evaluation_with_its_run(tmp_path, capsys):
    """Two runs' best epochs compared: labelled run/epoch-NNNN (by their folder or by the evaluation's
    folder), not epoch-NNNN twice (refused as a clash before); a run's own evaluation by the run's name."""
    results = {"settings": {"model": "resnet10t", "finished": True, "split": "val"},
               "classify": {"top1_err": 12.5, "top5_err": 1.0, "samples": 8}}
    for run in ("base", "cutmix"):
        (tmp_path / run / "checkpoints" / CHECKPOINT).mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("{}\n")
        for folder in (f"eval-{CHECKPOINT}", "eval"):
            (tmp_path / run / folder).mkdir()
            (tmp_path / run / folder / "eval.json").write_text(json.dumps(results))
    given = [tmp_path / "base" / "checkpoints" / CHECKPOINT, tmp_path / "cutmix" / f"eval-{CHECKPOINT}",
             tmp_path / "base", tmp_path / "cutmix" / "eval" / "eval.json"]
    assert main(["compare", *map(str, given), "--out", str(tmp_path / "cmp")]) == 0, capsys.readouterr().err
    table = (tmp_path / "cmp" / "compare.md").read_text()
    for label in (f"base/{CHECKPOINT}", f"cutmix/{CHECKPOINT}", "base", "cutmix"):
        assert f"| {label} |" in table, table
