"""The model options of the config (model.shakedrop, model.drop_block_rate, model.drop_path_rate)
reach the models that have them and are errors naming the key for the ones that do not, at
config time (before anything is built) and in create_model; the PyramidNets are known to timm
once pipeline.models is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from timm.layers import DropBlock2d
from train_helpers import REPO

from pipeline.config import resolve_config
from pipeline.errors import ConfigError, TrainError
from pipeline.models import check_model_name, create_model, unknown_model_message
from pipeline.models.dropblock import DropBlock
from pipeline.models.factory import UnsupportedOption, build_timm_model
from pipeline.models.shakedrop import ShakeDrop


def test_importing_pipeline_models_registers_the_pyramidnets_with_timm():
    code = ("import timm, torch; before = timm.is_model('pyramidnet200_a240'); import pipeline.models; "
            "device = torch.device('meta'); device.__enter__(); "
            "model = timm.create_model('pyramidnet200_a240', num_classes=100); "
            "print(before, model.num_classes, type(model).__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "100", "PyramidNet"]


def test_model_names_are_checked_with_the_pyramidnets_among_them():
    check_model_name("pyramidnet200_a240")
    assert "pyramidnet200_a240" in unknown_model_message("pyramidnet200_a24")  # a close match
    with pytest.raises(TrainError, match="timm has no model 'pyramidnet200'"):
        check_model_name("pyramidnet200")


@pytest.mark.parametrize("overrides", [
    ["model.name=pyramidnet200_a240", "model.shakedrop=true", "model.drop_block_rate=0.1"],
    ["model.name=pyramidnet20_a48", "model.drop_path_rate=0.2", "model.drop_block_rate=0.05"],
    ["model.name=resnet10t", "model.drop_block_rate=0.1"],  # timm's ResNets take DropBlock
])
def test_config_takes_the_options_a_model_has(overrides):
    config = resolve_config(config_file=None, overrides=overrides)
    for override in overrides:
        key, text = override.removeprefix("model.").split("=")
        assert str(getattr(config.model, key)).lower() == text, override


@pytest.mark.parametrize("overrides, message", [
    (["model.shakedrop=true"], "model.shakedrop: resnet50 does not support it"),  # the default model
    (["model.name=resnet10t", "model.shakedrop=true"], "model.shakedrop: resnet10t does not support it"),
    (["model.name=vit_tiny_patch16_224", "model.drop_block_rate=0.1"],
     "model.drop_block_rate: vit_tiny_patch16_224 does not support it"),
    (["model.name=pyramidnet20_a48", "model.shakedrop=true", "model.drop_path_rate=0.1"],
     "model.drop_path_rate: ShakeDrop (model.shakedrop=true) already drops residual branches"),
])
def test_config_refuses_options_the_model_lacks(overrides, message):
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=overrides)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_zero_init_last_false_starts_every_batchnorm_at_one():
    """The paper's code starts every BatchNorm's weight at 1; timm's ResNets (the default, null)
    start each block's last one at 0."""
    def weights(**options):
        model = create_model(name="resnet10t", num_classes=10, pretrained=False, channels_last=False,
                             drop_path_rate=0.0, **options)
        return [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert all(bool((w == 1).all()) for w in weights(zero_init_last=False))
    timm_default = weights()
    assert any(bool((w == 0).all()) for w in timm_default) and any(bool((w == 1).all()) for w in timm_default)


def test_zero_init_last_on_a_model_without_it_is_refused_by_the_config():
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=["model.name=pyramidnet20_a48", "model.zero_init_last=false"])
    assert str(raised.value).startswith("model.zero_init_last: pyramidnet20_a48 does not support it; timm's ResNet")
    resolve_config(config_file=None, overrides=["model.name=pyramidnet20_a48", "model.zero_init_last=null"])


def test_create_model_passes_drop_block_to_timm_resnets():
    model = create_model(name="resnet10t", num_classes=10, pretrained=False, channels_last=False,
                         drop_path_rate=0.0, drop_block_rate=0.2)
    blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    assert blocks and {block.drop_prob for block in blocks} == {0.2}


def test_create_model_builds_a_pyramidnet_with_every_option():
    model = create_model(name="pyramidnet20_a48", num_classes=10, pretrained=False, channels_last=True,
                         drop_path_rate=0.0, drop_block_rate=0.1, shakedrop=True)
    assert sum(isinstance(m, ShakeDrop) for m in model.modules()) == 9  # every unit
    assert sum(isinstance(m, DropBlock) for m in model.modules()) == 6  # stages 2 and 3
    assert model.get_classifier().out_features == 10
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name, options, key", [
    ("resnet10t", {"shakedrop": True}, "model.shakedrop"),
    ("vit_tiny_patch16_224", {"drop_block_rate": 0.1}, "model.drop_block_rate"),
    ("inception_v3", {"drop_path_rate": 0.1}, "model.drop_path_rate"),  # no stochastic depth there
])
def test_create_model_names_the_option_a_model_refuses(name, options, key):
    with pytest.raises(TrainError) as raised:
        create_model(name=name, num_classes=10, pretrained=False, channels_last=False,
                     **{"drop_path_rate": 0.0, **options})
    assert str(raised.value).startswith(f"{key}: {name} does not support it")


def test_a_model_that_takes_an_option_and_ignores_it_is_refused(monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: torch.nn.Conv2d(3, 4, 3))  # swallows all
    with pytest.raises(UnsupportedOption) as raised:
        build_timm_model("swallower", options={"shakedrop": True})
    assert raised.value.key == "model.shakedrop"
    with pytest.raises(UnsupportedOption, match="model.drop_block_rate: swallower"):
        build_timm_model("swallower", options={"drop_block_rate": 0.1})


def test_pretrained_on_a_model_timm_has_no_weights_for_is_a_config_error():
    """PyramidNet has no pretrained weights: the start failed after the set-up in timm's
    RuntimeError; now the config says it, as --check does."""
    with pytest.raises(ConfigError, match="model.pretrained: timm has no pretrained weights for pyramidnet110_a48; "
                                          "set model.pretrained=false"):
        resolve_config(config_file=None, overrides=["model.name=pyramidnet110_a48", "model.pretrained=true",
                                                    "data.augmentation=cifar", "data.image_size=32"])
    resolve_config(config_file=None, overrides=["model.name=resnet10t", "model.pretrained=true"])  # timm has them
    # A run's own record read again (evaluate): what it trained with stays readable.
    resolve_config(config_file=None, overrides=["model.name=pyramidnet110_a48", "model.pretrained=true",
                                                "data.augmentation=cifar", "data.image_size=32"], recorded=True)


def test_pretrained_weights_out_of_reach_are_one_error_line(demo_shards, tmp_path):
    """A compute node without internet: huggingface_hub retried for a minute, then the run ended in
    its traceback (walkthrough). HF_HUB_OFFLINE=1 with an empty cache: the same refusal at once."""
    from processes import run_process
    from train_helpers import child_env, small_run_args, train_command

    env = dict(child_env(), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    done = run_process(train_command(small_run_args(demo_shards, tmp_path / "run", "model.pretrained=true")),
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("error: model.pretrained=true: timm could not load the pretrained weights of "
                                "resnet10t (LocalEntryNotFoundError: "), lines
    assert lines[-1].endswith("into a Hugging Face cache the nodes share (HF_HOME) and run with HF_HUB_OFFLINE=1; "
                              "or set model.pretrained=false"), lines
    # One node's alone (no internet there, its own HF_HOME): that rank says it, where only rank 0's
    # errors were printed and the others waited silently for it.
    done = run_process(train_command(small_run_args(demo_shards, tmp_path / "run1", "model.pretrained=true")),
                       cwd=REPO, env=dict(env, RANK="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: (rank 1) model.pretrained=true: timm could not "
                                                           "load"), done.stderr[-3000:]
