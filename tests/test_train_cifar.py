"""The CIFAR recipes train through the real command line (pipeline/train.py) on shards of a
generated CIFAR-10 archive, with a small registered PyramidNet in place of PyramidNet-200: CutMix
+ ShakeDrop, and Cutout + Manifold Mixup on PyramidNet's stages; evaluation on the test split."""

from __future__ import annotations

import pytest
from loader_fixtures import make_cifar_shards
from train_helpers import REPO, cli_here, run_train

from pipeline.logs import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar_shards(tmp_path_factory):
    return make_cifar_shards(tmp_path_factory.mktemp("cifar_train"), records=24)[0]  # 120 train, 24 test


@pytest.mark.parametrize("recipe", ["cifar10/pyramidnet200_cutmix_shakedrop.yaml",
                                    "cifar100/pyramidnet200_cutout_manifold_mixup.yaml"])
def test_a_cifar_recipe_trains_a_small_pyramidnet(cifar_shards, tmp_path, recipe):
    done = run_train(["--config", str(REPO / "configs" / recipe), f"data.shards={cifar_shards}",
                      f"run.out_dir={tmp_path}", "model.name=pyramidnet20_a48", "schedule.epochs=2",
                      "schedule.milestones=[1]", "loader.batch_size=16", "loader.num_threads=1",
                      "run.max_train_steps=3", "run.progress=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    # Step schedule, x0.1 at the milestone (epoch 1's end): each epoch records the lr it trained with
    # (it recorded the next epoch's, 0.1x in both, a walkthrough found).
    assert records[1]["lr"] == pytest.approx(0.1 * records[0]["lr"], rel=1e-9)
    assert {r["val_samples"] for r in records} == {24}  # the test split, every image once
    assert "| test top-1 err" in done.stdout and "done in" in done.stdout and ": test top-1 error" in done.stdout
    assert (tmp_path / "model.safetensors").exists()


def test_a_size_the_cifar_transform_cannot_give_and_batches_a_split_cannot_fill_are_refused_first(
        cifar_shards, tmp_path, capsys, monkeypatch):
    """data.image_size=64 with the CIFAR transform trained on each 32 px image in a corner of a
    black canvas (its crop anchored at the padding; evaluation centred it), rc 0; a batch larger
    than the 24-image test split passed --check and failed after the model was built, naming
    neither key (a user walkthrough)."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = ["--config", str(REPO / "configs" / "cifar10" / "pyramidnet110_a48_cutmix.yaml"),
              f"data.shards={cifar_shards}", f"run.out_dir={tmp_path / 'run'}", "model.name=pyramidnet20_a48",
              "schedule.epochs=2", "schedule.milestones=[1]", "loader.batch_size=16", "loader.num_threads=1"]
    share = "is larger than a rank's share of split 'test' (24 samples with world_size 1): use a smaller batch or " \
        "fewer ranks"
    cases = [(["data.image_size=64"], f"error: data.image_size=64: data.augmentation=cifar pads and crops the images "
                                      f"as they are, and {cifar_shards} holds CIFAR's 32 px images: set "
                                      "data.image_size=32"),
             # the training batch the eval split cannot fill: its own batch is named as the fix
             (["loader.batch_size=32"], f"error: loader.batch_size=32: batch_size 32 {share}; or give the evaluation "
                                        "a batch of its own: loader.val_batch_size"),
             (["loader.val_batch_size=25"], f"error: loader.val_batch_size=25: batch_size 25 {share}")]
    for extra, line in cases:
        for check in (["--check"], []):
            code, out, err = cli_here([*check, *recipe, *extra], capsys)
            assert (code, err.splitlines()[:1]) == (2, [line]), (check, extra, out + err)
            assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cifar_transform_on_shards_of_other_sizes_is_refused_first(demo_shards, tmp_path, capsys, monkeypatch):
    """A CIFAR recipe on shards of 40x30 ImageFolder JPEGs: the transform does not resize, and DALI's
    crop of a larger image stays near its top-left corner (80x60 images trained on their top-left
    quarter, rc 0: a user walkthrough). The sizes come from the first samples' .json; shards of
    32x32 images (the demo's digits, train and val; its test canvases are 40x40) pass."""
    from shard_fixtures import make_imagefolder

    from shards.cli import main as shards_main

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    make_imagefolder(tmp_path / "raw", num_classes=2, per_class=8)  # 40x30 JPEGs
    shards = tmp_path / "shards"
    for split in ("train", "test"):
        assert shards_main(["build", str(tmp_path / "raw"), str(shards), "--split", split, "--quiet"]) == 0
    capsys.readouterr()
    recipe = ["--config", str(REPO / "configs" / "cifar10" / "pyramidnet110_a48_cutmix.yaml"),
              f"run.out_dir={tmp_path / 'run'}", "model.name=pyramidnet20_a48", "schedule.epochs=2",
              "schedule.milestones=[1]", "loader.batch_size=4", "loader.num_threads=1"]
    for check in (["--check"], []):
        code, out, err = cli_here([*check, *recipe, f"data.shards={shards}"], capsys)
        assert code == 2 and err.splitlines()[0].startswith(
            f"error: data.augmentation=cifar takes images as they are (pads and crops 32x32, no resize), but "
            f"{shards}'s train images are not 32x32 (n0000000"), (out + err)
        assert ": 40x30): use data.augmentation=imagenet (resize and crop), or build shards of 32x32 images" in err
    code, out, err = cli_here(["--check", *recipe, f"data.shards={demo_shards}", "data.eval_split=val"], capsys)
    assert code == 0, out + err
