"""Configs fail fast: every field of the config with at least one invalid value gives one
ConfigError naming the key, before anything is built; overrides are read by the field's type
(``no`` is text for a text field, YAML 1.1 would make it a boolean); the command line turns a
violation into one ``error:`` line and exit 2 without creating the run folder."""

from __future__ import annotations

import re

import numpy as np
import pytest
from train_helpers import REPO, run_train

from pipeline.config import TrainConfig, field_names, resolve_config
from pipeline.config_rules import RULES
from pipeline.errors import ConfigError

DEMO = REPO / "configs" / "demo.yaml"

# For every field, values a user could write that must be refused (written by hand, from the
# meaning of each field, not from the rules' code). Booleans: anything that is not a boolean.
INVALID = {
    "data.shards": ["", "  "],
    "data.demo": ["maybe", "2"],
    "data.image_size": ["0", "4", "32.5", "big", "1000000"],
    "data.crop_pct": ["0", "1.2", "-0.5", "1e-9"],
    "data.random_area": ["[0, 1]", "[0.5, 0.2]", "[0.1, 1.5]", "[0.1]"],
    # [500, 1000]: the torch backend's fallback crop of a 32 px image had no rows (walkthrough)
    "data.random_aspect_ratio": ["[0, 1]", "[2, 1]", "[-1, 1]", "[500, 1000]", "[0.001, 0.001]", "[0.05, 1]"],
    "data.flip_probability": ["-0.1", "1.5"],
    "data.augmentation": ["autoaugment", "CIFAR"],
    "data.crop_padding": ["-1", "2.5"],
    "data.eval_split": ["train", "validation"],
    "data.mean": ["[0.5, 0.5]", "[1.5, 0.4, 0.4]", "[-0.1, 0.4, 0.4]"],
    "data.std": ["[0.2, 0, 0.2]", "[0.2, -0.1, 0.2]", "[0.2, 0.2]"],
    "data.color_jitter": ["-0.1", "1.5", "lots"],
    "data.lighting_std": ["-0.1", "2"],
    "model.name": ["resnet5O", "not_a_model", "resnet10t.a1_in1k"],
    "model.pretrained": ["maybe"],
    "model.channels_last": ["1"],
    "model.compile": ["perhaps"],
    "model.drop_path_rate": ["-0.1", "1", "1.5"],
    "model.drop_block_rate": ["-0.1", "1", "2"],
    "model.shakedrop": ["maybe", "0.5"],
    "model.zero_init_last": ["maybe", "0.5"],
    "optim.base_lr": ["0", "-0.1", "nan", "inf", "fast"],
    "optim.reference_batch": ["0", "-256", "256.5"],
    "optim.momentum": ["-0.1", "1", "1.5"],
    "optim.nesterov": ["sometimes"],
    "optim.weight_decay": ["-1e-4"],
    "optim.decay_norm_and_bias": ["2"],
    "optim.fused": ["auto", "1"],
    "schedule.epochs": ["0", "-3", "1.5"],
    "schedule.name": ["linear", "Step"],
    "schedule.milestones": ["[0, 10]", "[20, 10]", "[10, 10]", "[10, 400]", "[a]"],
    "schedule.decay_factor": ["0", "-0.1", "1.5"],
    "schedule.warmup_epochs": ["-1", "300.5", "500"],
    "schedule.warmup_start_factor": ["0", "1.5"],
    "schedule.min_lr": ["-0.1"],
    "mix.mode": ["cut_mix", "CutMix"],
    "mix.cutmix_alpha": ["0", "-1", "1e7"],  # 1e308 drew lam 0 at every step (walkthrough)
    "mix.mixup_alpha": ["0", "-0.5", "2e6"],
    "mix.prob": ["-0.1", "2"],
    "mix.switch_prob": ["1.1", "-1"],
    "mix.per": ["sample", "batches"],
    "mix.partner": ["reverse", "shuffle"],
    "mix.cutout_size": ["0", "-16", "500"],
    "mix.label_smoothing": ["1", "-0.1", "1.5"],
    "mix.feature_layers": ["[]", "[layer1, ]", "[layer1, layer2, layer1]"],
    "loader.backend": ["pillow", "DALI"],
    "loader.batch_size": ["0", "-8", "big"],
    "loader.val_batch_size": ["0", "-1"],
    "loader.num_threads": ["0"],
    "loader.shuffle_buffer": ["0", "-5", "2147483648"],
    "run.out_dir": [""],
    "run.seed": ["-1", "1.5", "4294967296"],
    "run.mixed_precision": ["fp8", "yes", "bf32"],
    "run.deterministic": ["maybe"],
    "run.eval_every": ["0"],
    "run.resume": ["latest", "/nonexistent/checkpoint"],
    "run.keep_checkpoints": ["0"],
    "run.resume_with_changes": ["please"],
    "run.tensorboard": ["2"],
    "run.progress": ["bar"],
    "run.log_every": ["0", "-10"],
    "run.max_train_steps": ["0", "-1"],
    "run.stop_grace_seconds": ["0", "-5"],
}


def test_every_field_has_a_rule_and_invalid_values_in_this_test():
    assert set(RULES) == set(field_names()), "a config field without a rule (or a rule without a field)"
    assert set(INVALID) == set(field_names()), "a config field this test does not try"


@pytest.mark.parametrize("name, value", [(name, value) for name, values in INVALID.items() for value in values])
def test_invalid_value_names_the_key(name, value):
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=[f"{name}={value}"])
    message = str(raised.value)
    assert message.startswith(f"{name}:") or f" {name}" in message, message
    assert "\n" not in message


def test_a_recorded_config_beyond_the_newer_bounds_stays_readable(tmp_path):
    """The bounds added after runs trained with such values (they trained: 0.2 is no 1e-9) are a
    new command's: a run's recorded config.yaml, read to evaluate it, still resolves (review)."""
    (tmp_path / "config.yaml").write_text(
        "data:\n  crop_pct: 0.2\n  random_aspect_ratio: [20, 50]\nloader:\n  shuffle_buffer: 2097152\n"
        "schedule:\n  name: step\n  epochs: 10\n  warmup_epochs: 5\n  milestones: [3, 8]\n")
    config = resolve_config(config_file=tmp_path / "config.yaml", overrides=[], recorded=True)
    assert (config.data.crop_pct, config.loader.shuffle_buffer, config.schedule.milestones) == (0.2, 2097152, (3, 8))
    assert config.data.random_aspect_ratio == (20, 50)  # DALI trained with it
    for fixed, message in [([], "data.crop_pct: must be in [0.25, 1], got 0.2"),
                           (["data.crop_pct=0.875"], "loader.shuffle_buffer: must be in [1, 1048576], got 2097152"),
                           (["data.crop_pct=0.875", "loader.shuffle_buffer=4096"], "data.random_aspect_ratio: must be "
                            "[a, b] with 0.1 <= a <= b <= 10.0, got [20.0, 50.0]"),
                           (["data.crop_pct=0.875", "loader.shuffle_buffer=4096", "data.random_aspect_ratio=[0.1,10]"],
                            "schedule.milestones: must not lie inside the warm-up (schedule.warmup_epochs=5.0), "
                            "got [3, 8]")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_config(config_file=tmp_path / "config.yaml", overrides=fixed)


def test_a_pretrained_tag_timm_does_not_have_is_named_as_such():
    """timm.is_model ignores the tag: the start then failed in the image-size check, whose error
    blamed the size (walkthrough)."""
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=["model.name=resnet10t.a1_in1k"])
    assert str(raised.value) == ("model.name: timm has no pretrained tag 'a1_in1k' for resnet10t (it has c3_in1k; "
                                 "the name without a tag works too)")
    assert resolve_config(config_file=None, overrides=["model.name=resnet10t.c3_in1k"]).model.name == \
        "resnet10t.c3_in1k"
    from pipeline.models.factory import unknown_model_message

    assert unknown_model_message("botnet50ts_256.untrained") is None  # a tag without weights timm builds


def test_cross_field_rules_name_the_key_that_must_change():
    cases = [
        (["mix.mode=cutout"], "mix.cutout_size: mix.mode=cutout needs"),
        (["mix.mode=cutmix", "loader.batch_size=1"], "loader.batch_size: mix.mode=cutmix"),
        # Found only at the first step, as a traceback after the run folder was written (walkthrough).
        (["mix.mode=feature_cutmix", "loader.batch_size=1"], "loader.batch_size: mix.mode=feature_cutmix mixes each "
         "sample with a partner: needs >= 2, got 1"),
        (["mix.mode=manifold_mixup", "loader.batch_size=1"], "loader.batch_size: mix.mode=manifold_mixup"),
        # A decay inside the warm-up came at its end, or never (warm-up to the last epoch), unsaid.
        (["schedule.epochs=3", "schedule.warmup_epochs=3", "schedule.milestones=[1,2]"], "schedule.milestones: must "
         "not lie inside the warm-up (schedule.warmup_epochs=3.0), got [1, 2]: a decay there would come at its end, "
         "or never; move them after it or shorten the warm-up"),
        (["schedule.epochs=3", "schedule.warmup_epochs=2.5", "schedule.milestones=[1,2]"], "schedule.milestones: "
         "must not lie inside the warm-up"),
        # Padding as wide as the image: crops of padding alone (10^6 px trained on black, loss ln 10).
        (["data.augmentation=cifar", "data.image_size=32", "data.random_area=[0.08,1]", "data.crop_pct=0.875",
          "data.crop_padding=32"], "data.crop_padding: must be less than data.image_size=32 (a crop could hold no "
         "pixel of the image), got 32; CIFAR's is 4 at 32 px"),
        (["mix.mode=cutmix", "mix.partner=flip", "loader.batch_size=7"], "loader.batch_size: mix.partner=flip"),
        (["optim.momentum=0"], "optim.nesterov: true needs optim.momentum > 0"),
        (["schedule.name=cosine", "schedule.min_lr=0.5"], "schedule.min_lr: must be below optim.base_lr"),
        (["data.image_size=32", "mix.cutout_size=40"], "mix.cutout_size: must be at most data.image_size=32"),
        # The sampler's rule: passed --check, then a traceback once the model and loaders were built.
        (["mix.mode=mixup", "mix.cutout_size=8", "mix.per=elem"], "mix.per: Cutout + mixup mixes whole batches: "
         "needs batch, got 'elem'"),
        # a short try of a recipe: the milestones to give with it (those within it, else [1]), or none
        (["schedule.epochs=2"], "schedule.milestones: must lie before schedule.epochs=2 (a decay at or after its "
         "end changes nothing), got [75, 150, 225]; give them with schedule.epochs, e.g. schedule.milestones=[1], or "
         "schedule.milestones=[] for no decay"),
        (["schedule.epochs=160"], "e.g. schedule.milestones=[75,150], or"),
        (["schedule.epochs=150"], "e.g. schedule.milestones=[75], or"),  # a decay at the end: none
        (["schedule.epochs=1"], "got [75, 150, 225]; give them with schedule.epochs, schedule.milestones=[] for no"),
        (["schedule.epochs=30", "schedule.milestones=[30]"], "schedule.milestones: must lie before "
         "schedule.epochs=30"),
        # Options of the other augmentation, or of a warmup that is not there.
        (["data.crop_padding=8"], "data.crop_padding: data.augmentation=imagenet does not pad (only cifar does), so "
         "8 would change nothing; give its default 4"),
        (["data.augmentation=cifar", "data.image_size=32", "data.random_area=[0.1,1]"], "data.random_area: "
         "data.augmentation=cifar does not use it (a random crop of the padded image, the test images as they are), "
         "so [0.1, 1.0] would change nothing"),
        (["data.augmentation=cifar", "data.image_size=32", "data.crop_pct=0.9"], "data.crop_pct: data.augmentation="
         "cifar does not use it"),
        (["data.augmentation=cifar", "data.image_size=32", "data.random_aspect_ratio=[1,1]"],
         "data.random_aspect_ratio: data.augmentation=cifar does not use it"),
        (["schedule.warmup_start_factor=0.5"], "schedule.warmup_start_factor: without a warmup "
         "(schedule.warmup_epochs=0) it changes nothing, got 0.5"),
        # mode none mixes nothing; cutout has no partner.
        (["mix.mode=none", "mix.prob=0.3"], "mix.prob: mix.mode=none does not use it"),
        (["mix.mode=none", "mix.per=elem"], "mix.per: mix.mode=none does not use it (only cutmix, mixup, "
         "cutmix_or_mixup, feature_cutmix, manifold_mixup, cutout do), so elem would change nothing"),
        (["mix.mode=none", "mix.partner=roll"], "mix.partner: mix.mode=none does not use it"),
        (["mix.mode=cutout", "mix.cutout_size=8", "mix.partner=flip"], "mix.partner: mix.mode=cutout does not use"),
        # An option of another mode or schedule, set away from its default, would change nothing.
        (["mix.mode=cutmix", "mix.mixup_alpha=0.2"], "mix.mixup_alpha: mix.mode=cutmix does not use it (only mixup, "
         "cutmix_or_mixup, manifold_mixup do), so 0.2 would change nothing; give its default 1.0"),
        (["mix.mode=mixup", "mix.cutmix_alpha=0.5"], "mix.cutmix_alpha: mix.mode=mixup does not use it (only cutmix, "
         "cutmix_or_mixup, feature_cutmix do)"),
        (["mix.mode=feature_cutmix", "mix.mixup_alpha=2"], "mix.mixup_alpha: mix.mode=feature_cutmix does not use"),
        (["mix.mode=manifold_mixup", "mix.cutmix_alpha=2"], "mix.cutmix_alpha: mix.mode=manifold_mixup does not"),
        (["mix.mode=none", "mix.cutmix_alpha=2"], "mix.cutmix_alpha: mix.mode=none does not use it"),
        (["mix.mode=cutmix", "mix.switch_prob=0.3"], "mix.switch_prob: mix.mode=cutmix does not use it (only "
         "cutmix_or_mixup do)"),
        # A recipe switched to another mode: every value it leaves unread at once (one at a time, before).
        (["mix.mode=none", "mix.prob=0.5", "mix.per=elem", "mix.mixup_alpha=0.2"], "mix.mixup_alpha, mix.prob, "
         "mix.per: mix.mode=none uses none of them, so 0.2 and 0.5 and elem would change nothing; give their "
         "defaults (mix.mixup_alpha=1.0 mix.prob=1.0 mix.per=batch) or a mode that uses them"),
        (["schedule.name=cosine", "schedule.milestones=[10]"], "schedule.milestones: schedule.name=cosine decays "
         "smoothly and does not use milestones, got [10]; give schedule.milestones=[] with it"),
        (["schedule.name=cosine", "schedule.decay_factor=0.2"], "schedule.decay_factor: schedule.name=cosine does "
         "not use it"),
        (["schedule.min_lr=0.001"], "schedule.min_lr: schedule.name=step does not use it (where cosine ends), got "
         "0.001"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_config(config_file=None, overrides=overrides)
    # The same values are fine together with what they need.
    resolve_config(config_file=None, overrides=["mix.mode=cutout", "mix.cutout_size=112"])
    resolve_config(config_file=None, overrides=["optim.momentum=0", "optim.nesterov=false"])
    resolve_config(config_file=None, overrides=["schedule.epochs=10", "schedule.warmup_epochs=2",
                                                "schedule.milestones=[2,5]"])  # a decay as the warm-up ends
    resolve_config(config_file=None, overrides=["data.augmentation=cifar", "data.image_size=32",
                                                "data.random_area=[0.08,1]", "data.crop_pct=0.875",
                                                "data.crop_padding=31"])
    for milestones in ("[1]", "[]"):  # what the milestones message offers is taken
        resolve_config(config_file=None, overrides=["schedule.epochs=2", f"schedule.milestones={milestones}"])
    # Each option with a mode (schedule) that reads it, and the defaults with any.
    resolve_config(config_file=None, overrides=["mix.mode=cutmix_or_mixup", "mix.cutmix_alpha=0.5",
                                                "mix.mixup_alpha=0.2", "mix.switch_prob=0.3"])
    resolve_config(config_file=None, overrides=["mix.mode=feature_cutmix", "mix.cutmix_alpha=0.5"])
    resolve_config(config_file=None, overrides=["mix.mode=manifold_mixup", "mix.mixup_alpha=2"])
    resolve_config(config_file=None, overrides=["mix.mode=mixup", "mix.mixup_alpha=0.5"])
    for mode in ("none", "cutmix", "mixup", "cutout"):
        resolve_config(config_file=None, overrides=[f"mix.mode={mode}", "mix.cutout_size=8"] if mode == "cutout"
                       else [f"mix.mode={mode}"])
    resolve_config(config_file=None, overrides=["schedule.name=cosine", "schedule.milestones=[]",
                                                "schedule.min_lr=0.001"])
    resolve_config(config_file=None, overrides=["schedule.name=cosine"])  # the default milestones are not a choice
    resolve_config(config_file=None, overrides=["schedule.decay_factor=0.2"])
    resolve_config(config_file=None, overrides=["schedule.epochs=30", "schedule.milestones=[29]"])
    resolve_config(config_file=None, overrides=["schedule.epochs=1", "schedule.milestones=[]"])
    resolve_config(config_file=None, overrides=["data.augmentation=cifar", "data.image_size=32",
                                                "data.crop_padding=2"])
    resolve_config(config_file=None, overrides=["data.random_area=[0.2,1]", "data.crop_pct=0.9"])
    resolve_config(config_file=None, overrides=["schedule.warmup_epochs=1", "schedule.warmup_start_factor=0.5"])
    resolve_config(config_file=None, overrides=["mix.mode=cutout", "mix.cutout_size=8", "mix.prob=0.5",
                                                "mix.per=elem"])
    resolve_config(config_file=None, overrides=["mix.mode=cutmix", "mix.prob=0.5", "mix.per=elem",
                                                "mix.partner=roll"])


@pytest.mark.parametrize("text", ["no", "yes", "on", "off", "No"])
def test_a_text_field_takes_yaml_11_booleans_as_text(text, tmp_path):
    # run.out_dir is text: "no" must stay "no", on the command line and in a YAML file.
    assert resolve_config(config_file=None, overrides=[f"run.out_dir={text}"]).run.out_dir == text
    (tmp_path / "c.yaml").write_text(f"run:\n  out_dir: {text}\n")
    assert resolve_config(config_file=tmp_path / "c.yaml", overrides=[]).run.out_dir == text


def test_documented_precision_values_parse_as_text(tmp_path):
    for value in ("no", "bf16", "auto"):
        assert resolve_config(config_file=None, overrides=[f"run.mixed_precision={value}"]).run.mixed_precision == value
    (tmp_path / "c.yaml").write_text("run:\n  mixed_precision: no\n")
    assert resolve_config(config_file=tmp_path / "c.yaml", overrides=[]).run.mixed_precision == "no"
    assert TrainConfig().run.mixed_precision == "auto"  # bf16 on CUDA only: CPUs without bf16 crawl


def test_values_are_read_by_the_declared_type(tmp_path):
    config = resolve_config(config_file=None, overrides=[
        "model.compile=yes", "run.progress=off", "optim.weight_decay=5e-5", "loader.val_batch_size=none",
        "run.max_train_steps=null", "data.random_area=0.2,0.9", "data.mean=[0.5, 0.5, 0.5]", "run.seed=7"])
    assert config.model.compile is True and config.run.progress is False
    assert config.optim.weight_decay == 5e-5 and config.loader.val_batch_size is None
    assert config.run.max_train_steps is None and config.data.random_area == (0.2, 0.9)
    assert config.data.mean == (0.5, 0.5, 0.5) and config.run.seed == 7
    # YAML 1.1 reads 1e-4 (no dot) as text; a number field takes it as the number it means.
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 1e-4\nmodel:\n  compile: on\n")
    config = resolve_config(config_file=tmp_path / "c.yaml", overrides=[])
    assert config.optim.weight_decay == 1e-4 and config.model.compile is True


@pytest.mark.parametrize("override, key", [
    ("mix.prob=2", "mix.prob"), ("run.mixed_precision=fp8", "run.mixed_precision"),
    ("schedule.milestones=[10,5]", "schedule.milestones"), ("data.crop_pct=0", "data.crop_pct"),
])
def test_the_command_line_prints_one_error_line_and_builds_nothing(tmp_path, override, key):
    out = tmp_path / "run"
    done = run_train(["--config", str(DEMO), f"run.out_dir={out}", f"data.shards={tmp_path / 'shards'}", override],
                     timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), done.stderr
    assert not out.exists() and not (tmp_path / "shards").exists(), "work started before the config was checked"


def test_a_run_folder_given_as_config_names_its_config_yaml(tmp_path):
    """--config RUN (a folder) said "config file not found" of a folder that is there."""
    (tmp_path / "config.yaml").write_text("schedule:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=tmp_path, overrides=[])
    assert str(raised.value) == f"--config {tmp_path}: a folder, not a YAML file: its {tmp_path / 'config.yaml'}?"


def test_a_recipe_folder_given_as_config_lists_its_recipes():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "imagenet1k"
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=folder, overrides=[])
    listed = sorted(path.name for path in folder.iterdir() if path.suffix == ".yaml")  # the reference
    assert len(listed) == 6
    assert str(raised.value) == f"--config {folder}: a folder, not a YAML file; it holds {', '.join(listed)}"
    cifar = folder.parent / "cifar100"
    with pytest.raises(ConfigError, match=r"; it holds pyramidnet110_a48_baseline.yaml, .* and \d+ more$"):
        resolve_config(config_file=cifar, overrides=[])


@pytest.mark.parametrize("rank, waits", [("0", False), ("1", True)])
def test_a_start_up_error_lets_rank_zero_say_it(rank, waits, capsys, monkeypatch):
    """Every rank meets a start-up error; rank 0 prints it and the others stay a moment before
    exiting: under torchrun a faster rank 1 took rank 0 down before it printed (2 of 6 two-rank
    starts into a folder in use showed no error: line, a walkthrough). Evaluation does the same."""
    import pipeline.cli
    import pipeline.evaluate.cli

    slept = []
    monkeypatch.setattr(pipeline.cli.time, "sleep", slept.append)
    monkeypatch.setenv("RANK", rank)
    assert pipeline.cli.run_cli(["optim.lr=0.1"], default_config=None) == 2
    assert pipeline.evaluate.cli.main(["/nonexistent/run"]) == 2
    err = capsys.readouterr().err
    assert slept == ([pipeline.cli.REPORT_GRACE_SECONDS] * 2 if waits else [])
    assert (err == "") == waits and (waits or err.count("error: ") == 2), err


def test_feature_layers_with_an_input_level_mode_are_refused():
    """feature_layers added to the cutmix recipe with mix.mode forgotten trained image CutMix, a
    layer that does not exist included, without a word (a walkthrough); with a feature mode they
    are checked against the model's layers."""
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=REPO / "configs" / "imagenet1k" / "resnet50_cutmix.yaml",
                       overrides=["mix.feature_layers=[input,layer9]"])
    assert str(raised.value) == ("mix.feature_layers: only feature_cutmix and manifold_mixup mix at layers; "
                                 "mix.mode=cutmix mixes the images: set mix.mode=feature_cutmix (or manifold_mixup), "
                                 "or leave mix.feature_layers out")
    resolve_config(config_file=REPO / "configs" / "imagenet1k" / "resnet50_cutmix.yaml", overrides=[])


def test_feature_cutmix_at_a_layer_too_small_for_a_box_is_refused():
    """resnet10t at 32 px: layer3 is 2x2 and layer4 1x1 (stride 16 and 32). The official box puts
    cut // 2 on either side of its centre, so on a side of 2 or less it is empty (cut is at most 1
    but for lam = 0): such a layer never mixed, the run's loss bit-identical to no mixing
    (walkthrough). Refused, naming the layers' sizes; manifold mixup (no box) takes them."""
    from pipeline.mix import MixSampler

    params = [MixSampler(seed=seed, mode="feature_cutmix", layers=("layer3",), layer_shapes={"layer3": (2, 2)})
              .sample(batch_size=4, height=32, width=32) for seed in range(64)]
    assert all(float(np.min(np.asarray(p.lam))) == 1.0 for p in params)  # the premise: never mixed
    base = ["model.name=resnet10t", "data.image_size=32", "data.augmentation=cifar", "data.random_area=[0.08,1]",
            "data.crop_pct=0.875", "mix.mode=feature_cutmix"]
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=[*base, "mix.feature_layers=[layer2,layer3,layer4]"])
    assert str(raised.value) == (
        "mix.feature_layers: layer3, layer4 of resnet10t at data.image_size=32 are too small for a CutMix box (it is "
        "empty on a side of 2 or less, so the layer would never mix); the layers: input 32x32, act1 16x16, layer1 "
        "8x8, layer2 4x4, layer3 2x2, layer4 1x1")
    resolve_config(config_file=None, overrides=[*base, "mix.feature_layers=[input,layer2]"])
    resolve_config(config_file=None, overrides=[*base, "mix.mode=manifold_mixup", "mix.feature_layers=[layer4]"])
    # A run that trained so (this rule is newer) stays evaluable: its recorded config keeps it (reviewer).
    recorded = resolve_config(config_file=None, overrides=[*base, "mix.feature_layers=[layer2,layer3]"], recorded=True)
    assert recorded.mix.feature_layers == ("layer2", "layer3")


def test_a_recorded_config_skips_the_rules_against_unused_options(tmp_path):
    """A run made before those rules (its config.yaml: cosine with milestones, mixup_alpha under
    cutmix, a decay at the last epoch's end) stays evaluable: read as recorded, it resolves; as a
    new command, each is refused."""
    for text, key in [("schedule: {name: cosine, milestones: [10]}\n", "schedule.milestones"),
                      ("mix: {mode: cutmix, mixup_alpha: 0.2}\n", "mix.mixup_alpha"),
                      ("schedule: {epochs: 150, milestones: [75, 150]}\n", "schedule.milestones")]:
        (tmp_path / "config.yaml").write_text(text)
        resolve_config(config_file=tmp_path / "config.yaml", overrides=[], recorded=True)
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
            resolve_config(config_file=tmp_path / "config.yaml", overrides=[])


def test_a_resume_does_not_compare_what_the_config_never_reads():
    """Reference: the settings written by hand. A run recorded with mixup_alpha=0.2 under cutmix and
    a decay at its last epoch resumes with the command that drops them, without resume_with_changes;
    what is read still counts."""
    from pipeline.resume_config import config_changes, training_settings

    config = resolve_config(config_file=None, overrides=["mix.mode=cutmix", "schedule.epochs=150",
                                                         "schedule.milestones=[75]"])
    saved = {**training_settings(config), "mix.mixup_alpha": 0.2, "schedule.milestones": [75, 150]}
    assert config_changes(saved, config) == []
    saved["schedule.milestones"] = [80, 150]
    assert config_changes(saved, config) == [("schedule.milestones", [80, 150], [75])]
    saved = {**training_settings(config), "mix.cutmix_alpha": 0.5}
    assert config_changes(saved, config) == [("mix.cutmix_alpha", 0.5, 1.0)]


@pytest.mark.parametrize("overrides, message", [
    (["mix.mode=cutmix", "mix.cutmix_alpha=1e7"], "mix.cutmix_alpha: must be in (0, 1000000.0], got 10000000.0"),
    (["mix.mode=mixup", "mix.mixup_alpha=1e308"], "mix.mixup_alpha: must be in (0, 1000000.0], got 1e+308"),
])
def test_an_alpha_past_a_million_is_refused_with_a_mode_that_reads_it(overrides, message):
    """(INVALID's alphas fail with the default mode none for not being read.) Beta(a, a) is 0.5 to
    three decimals there; 1e308 drew lambda 0 at every step: the partner's label, no mixing."""
    with pytest.raises(ConfigError) as raised:
        resolve_config(config_file=None, overrides=overrides)
    assert str(raised.value) == message
    key = overrides[1].split("=")[0]
    resolve_config(config_file=None, overrides=[overrides[0], f"{key}=1e6"])  # the bound itself is taken
