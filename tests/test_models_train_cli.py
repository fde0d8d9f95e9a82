"""A small PyramidNet with ShakeDrop trained through pipeline/train.py on the demo digits (CPU, a few
steps): it trains, writes its metrics, and its exported weights load in timm with the logits of
the model Accelerate checkpointed; a model without ShakeDrop is refused by the config."""

import pytest
import timm
import torch
from safetensors.torch import load_file
from train_helpers import cli_here, run_train, small_run_args

import pipeline.models  # noqa: F401 - registers the PyramidNets with timm
from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow

NAME = "pyramidnet20_a48"


@pytest.fixture(scope="module")
def pyramidnet_run(demo_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("pyramidnet")
    done = run_train(small_run_args(demo_shards, out, f"model.name={NAME}", "model.shakedrop=true",
                                    "model.drop_block_rate=0.05", "schedule.epochs=2", "run.max_train_steps=4",
                                    "loader.batch_size=32", "schedule.warmup_epochs=0"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_pyramidnet_with_shakedrop_trains_through_the_cli(pyramidnet_run):
    records = read_metrics(pyramidnet_run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["global_step"] == 4 * r["epoch"] and r["val_samples"] == 359 for r in records)
    assert all(r["train_loss"] > 0 and 0 <= r["top1_err"] <= 100 for r in records)
    written = (pyramidnet_run / "config.yaml").read_text()
    assert f"name: {NAME}" in written and "shakedrop: true" in written


def test_its_exported_weights_load_in_timm_with_identical_logits(pyramidnet_run):
    weights = pyramidnet_run / "model.safetensors"
    loaded = timm.create_model(NAME, pretrained=True, num_classes=10, shakedrop=True,
                               pretrained_cfg_overlay=dict(file=str(weights), num_classes=10)).eval()
    # Independent reference: the model Accelerate saved in the last checkpoint, loaded by hand.
    reference = timm.create_model(NAME, num_classes=10, shakedrop=True)
    reference.load_state_dict(load_file(pyramidnet_run / "checkpoints" / "epoch-0002" / "model.safetensors"))
    reference.eval()
    fresh = timm.create_model(NAME, num_classes=10, shakedrop=True).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))
        assert not torch.allclose(fresh(images), reference(images))
    # ShakeDrop's evaluation scaling is in the weights: without shakedrop=True they are refused.
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm.create_model(NAME, pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(weights), num_classes=10))


def test_shakedrop_on_a_model_without_it_is_one_error_line(demo_shards, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli_here(small_run_args(demo_shards, out, "model.shakedrop=true"), capsys)  # the demo's resnet10t
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.shakedrop: resnet10t does not support it"), err
    assert not out.exists()
