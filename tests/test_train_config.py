"""pipeline.config: YAML over defaults over overrides, errors that name the key, resolved file."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import TrainConfig, resolve_config, write_config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_recipe():
    config = TrainConfig()
    assert (config.optim.base_lr, config.optim.momentum, config.optim.nesterov) == (0.1, 0.9, True)
    assert (config.schedule.epochs, config.schedule.milestones) == (300, (75, 150, 225))


def test_yaml_base_chain_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {base_lr: 0.5, momentum: 0.8}\nmix: {mode: mixup}\n")
    (tmp_path / "delta.yaml").write_text("base: base.yaml\nmix: {mode: cutmix}\n")
    config = resolve_config(config_file=tmp_path / "delta.yaml",
                            overrides=["optim.base_lr=2", "schedule.milestones=[1,2]", "mix.cutout_size=null"])
    assert config.optim.base_lr == 2.0 and isinstance(config.optim.base_lr, float)
    assert config.optim.momentum == 0.8  # from the base
    assert config.mix.mode == "cutmix"  # the delta wins over the base
    assert config.schedule.milestones == (1, 2)


@pytest.mark.parametrize("override, key", [
    ("optim.base_lrr=0.1", "optim.base_lrr"),          # unknown key
    ("optimizer.base_lr=0.1", "optimizer"),             # unknown section
    ("loader.batch_size=abc", "loader.batch_size"),     # wrong type
    ("loader.batch_size=2.5", "loader.batch_size"),     # float for an int
    ("model.compile=1", "model.compile"),               # int for a bool
    ("data.random_area=[0.1]", "data.random_area"),     # wrong length
    ("mix.mode=cutmixx", "mix.mode"),                   # not a choice
    ("schedule.epochs=0", "schedule.epochs"),           # out of range
    ("optim.base_lr", "optim.base_lr"),                 # no '='
])
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config(config_file=None, overrides=[override])


def test_unknown_key_in_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("run:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"run\.epochs"):
        resolve_config(config_file=tmp_path / "bad.yaml", overrides=[])


def test_resolved_config_reads_back(tmp_path):
    config = resolve_config(config_file=REPO / "configs" / "demo.yaml", overrides=["optim.base_lr=0.3"])
    write_config(config, tmp_path / "config.yaml")
    assert resolve_config(config_file=tmp_path / "config.yaml", overrides=[]) == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["base_lr"] == 0.3
    # How one command resumed is not the recipe: a run started from the file takes no changes unasked.
    write_config(resolve_config(config_file=None, overrides=["run.resume=none", "run.resume_with_changes=true"]),
                 tmp_path / "resumed.yaml")
    written = yaml.safe_load((tmp_path / "resumed.yaml").read_text())["run"]
    assert (written["resume"], written["resume_with_changes"]) == ("auto", False)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    resolve_config(config_file=path, overrides=[])


def test_paper_cutmix_recipe():
    config = resolve_config(config_file=REPO / "configs/imagenet1k/resnet50_cutmix.yaml", overrides=[])
    assert config.model.name == "resnet50" and config.schedule.epochs == 300
    assert config.schedule.name == "step" and config.schedule.milestones == (75, 150, 225)
    assert (config.mix.mode, config.mix.cutmix_alpha, config.mix.prob) == ("cutmix", 1.0, 1.0)
    assert config.optim.weight_decay == 1e-4 and config.optim.nesterov
    # The official code's ImageNet training (clovaai/CutMix-PyTorch train.py): ColorJitter(0.4, 0.4, 0.4),
    # Lighting(alphastd=0.1), every BatchNorm starting at 1, weight decay on every parameter.
    assert (config.data.color_jitter, config.data.lighting_std, config.model.zero_init_last) == (0.4, 0.1, False)
    assert config.optim.decay_norm_and_bias and config.optim.momentum == 0.9
    assert config.optim.base_lr * config.loader.batch_size * 8 / config.optim.reference_batch == pytest.approx(0.1)



@pytest.mark.parametrize("name, mix", [("pyramidnet200_baseline", ("none", 1.0)),
                                       ("pyramidnet200_cutmix", ("cutmix", 0.5))])
def test_paper_cifar100_recipe(name, mix):
    # DESIGN.md section 4 (the talk's table): PyramidNet-200 (alpha 240, bottleneck), 300 epochs,
    # batch 64, lr 0.25 x0.1 at 150 and 225, CutMix alpha 1.0 prob 0.5. No test pinned it (walkthrough).
    config = resolve_config(config_file=REPO / f"configs/cifar100/{name}.yaml", overrides=[])
    assert config.model.name == "pyramidnet200_a240" and config.schedule.epochs == 300
    assert config.schedule.name == "step" and config.schedule.milestones == (150, 225)
    assert config.schedule.decay_factor == 0.1 and config.schedule.warmup_epochs == 0
    assert (config.loader.batch_size, config.optim.base_lr, config.optim.reference_batch) == (64, 0.25, 64)
    assert (config.mix.mode, config.mix.prob) == mix and config.mix.cutmix_alpha == 1.0 and config.mix.per == "batch"
    assert (config.data.augmentation, config.data.image_size, config.data.eval_split) == ("cifar", 32, "test")

# An unknown key, a bad type, a bad value checked after the model name's rule, a cross-field rule.
@pytest.mark.parametrize("override", ["optim.lr=0.1", "loader.batch_size=x", "mix.mode=cutmx",
                                      "schedule.warmup_epochs=31"])
def test_a_config_mistake_is_reported_before_torch_is_loaded(override):
    """pipeline/train.py resolves the config before importing the training code: the mistake is
    one line, and torch (seconds to import) was never loaded, nor DALI."""
    import sys

    from processes import run_process

    script = ("import sys; from pipeline.cli import run_cli; "
              f"code = run_cli(['--config', 'configs/demo.yaml', {override!r}], default_config=None); "
              "print(code, 'torch' in sys.modules, 'nvidia.dali' in sys.modules)")
    done = run_process([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("extra", [[], ["mix.mode=feature_cutmix", "mix.feature_layers=[input]"]])
def test_a_model_built_for_another_image_size_is_a_config_error(extra):
    """A ViT at the demo's 32 px: was a traceback at the first step (after config.yaml was
    written), and with a feature-level mode a traceback from the layer check."""
    with pytest.raises(ConfigError) as error:
        resolve_config(config_file=REPO / "configs" / "demo.yaml",
                       overrides=["model.name=vit_tiny_patch16_224", *extra])
    assert str(error.value) == ("data.image_size: vit_tiny_patch16_224 does not take 32 px images (Input height (32) "
                                "doesn't match model (224).); train it at the size it is built for, or choose another "
                                "model")
    config = resolve_config(config_file=REPO / "configs" / "demo.yaml",
                            overrides=["model.name=vit_tiny_patch16_224", "data.image_size=224"])
    assert config.data.image_size == 224


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  image_size: 32\n  crop_pct: 0.875\n  image_size: 64\n")
    with pytest.raises(ConfigError, match=r"found the key 'image_size' twice \(first on line 2\)"):
        resolve_config(config_file=path, overrides=[])
    path.write_text("data:\n  image_size: 32\nmix:\n  prob: 0.5\ndata:\n  crop_pct: 0.9\n")  # a section twice
    with pytest.raises(ConfigError, match=r"found the key 'data' twice \(first on line 1\)"):
        resolve_config(config_file=path, overrides=[])


def test_the_duplicate_key_check_takes_flow_mappings_and_leaves_merge_keys_alone():
    from pipeline.config_values import load_yaml

    with pytest.raises(yaml.YAMLError, match=r"found the key 'image_size' twice \(first on line 1\)"):
        load_yaml("data: {image_size: 32, image_size: 64}\n")  # two keys on one line
    # A merged mapping overridden by its own key, merged in turn: valid YAML, read as PyYAML reads it.
    text = "defs:\n  a: &a {q: 0, p: 1}\n  inner: &b\n    <<: *a\n    q: 2\nuse:\n  <<: *b\n  r: 3\n"
    assert load_yaml(text) == yaml.safe_load(text)


def test_yaml_mistakes_and_a_missing_base_name_the_file_and_line(tmp_path):
    """PyYAML's own text said 'in "<unicode string>"' twice with source excerpts; a missing base
    file did not say which recipe named it."""
    cases = {
        "twice.yaml": ("run:\n  seed: 1\n  seed: 2\n", "not valid YAML: line 3, column 3: found the key 'seed' twice "
                       "(first on line 2) (while constructing a mapping at line 2)"),
        "open.yaml": ("run:\n  seed: [1\n", "not valid YAML: line 3, column 1: expected ',' or ']', but got "
                      "'<stream end>' (while parsing a flow sequence at line 2)"),
        "based.yaml": ("base: nope.yaml\nrun:\n  seed: 1\n", f"its base file {tmp_path / 'nope.yaml'} is not found"),
        # Not one file's name: a TypeError traceback (a list, number, mapping), or ignored unsaid (empty).
        "list.yaml": ("base: [a.yaml]\n", "base: must name one YAML file (a path, relative to this file's folder), "
                      "got ['a.yaml']"),
        "number.yaml": ("base: 5\n", "base: must name one YAML file (a path, relative to this file's folder), got 5"),
        "mapping.yaml": ("base: {x: 1}\n", "base: must name one YAML file (a path, relative to this file's folder), "
                         "got {'x': 1}"),
        "empty.yaml": ("base: ''\n", "base: must name one YAML file (a path, relative to this file's folder), got ''"),
        "blank.yaml": ("base:\n", "base: must name one YAML file (a path, relative to this file's folder), got None"),
        "folder.yaml": ("base: sub\n", f"its base file {tmp_path / 'sub'} is a folder, not a YAML file"),
    }
    (tmp_path / "sub").mkdir()
    for name, (text, problem) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as error:
            resolve_config(config_file=tmp_path / name, overrides=[])
        assert str(error.value) == f"{tmp_path / name}: {problem}"


def test_a_huge_yaml_number_is_refused_by_its_key(tmp_path):
    """YAML's ints have no size limit: float() of a 400-digit one overflowed (an OverflowError
    traceback), where the same number as an override was refused."""
    (tmp_path / "huge.yaml").write_text("optim:\n  base_lr: 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError) as error:
        resolve_config(config_file=tmp_path / "huge.yaml", overrides=[])
    assert str(error.value) == "optim.base_lr: expected a finite number, got a 401-digit one"
    (tmp_path / "batch.yaml").write_text("loader:\n  batch_size: 1" + "0" * 400 + "\n")
    assert resolve_config(config_file=tmp_path / "batch.yaml", overrides=[]).loader.batch_size == 10 ** 400


def test_a_tilde_in_a_path_key_is_the_home_folder(tmp_path, monkeypatch):
    """``run.out_dir=~/x`` (the shell does not expand it after a dotted key) and ``out_dir: ~/x``
    in YAML made a folder named "~" in the working folder (walkthrough)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "c.yaml").write_text("data:\n  shards: ~/data/inet\n")
    checkpoint = tmp_path / "home" / "runs" / "b" / "checkpoints" / "epoch-0003"
    checkpoint.mkdir(parents=True)  # a complete checkpoint's marker and state: run.resume is checked
    (checkpoint / "COMPLETE").write_text("ok\n")
    (checkpoint / "state.json").write_text("{}")
    config = resolve_config(config_file=tmp_path / "c.yaml",
                            overrides=["run.out_dir=~/runs/a", "run.resume=~/runs/b/checkpoints/epoch-0003"])
    home = tmp_path / "home"
    assert (config.data.shards, config.run.out_dir, config.run.resume) == (
        f"{home}/data/inet", f"{home}/runs/a", f"{home}/runs/b/checkpoints/epoch-0003")
    # Elsewhere in a path, and in keys that are no paths, a "~" is only a character.
    config = resolve_config(config_file=None, overrides=["run.out_dir=runs/~a", "run.resume=auto"])
    assert (config.run.out_dir, config.run.resume) == ("runs/~a", "auto")


def test_a_tilde_of_no_user_is_refused():
    # It stayed as it was: a folder named "~nosuchuser" would have appeared in the working folder (review).
    with pytest.raises(ConfigError, match="run.out_dir: ~nosuchuser_x/r: this machine has no user 'nosuchuser_x'"):
        resolve_config(config_file=None, overrides=["run.out_dir=~nosuchuser_x/r"])
