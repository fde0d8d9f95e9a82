"""Optimizer, schedules, evaluation counts and checkpoint validity, against independent references."""

import json
import math

import pytest
import torch

from pipeline.checkpoint import (COMPLETE, STATE, TrainState, check_compatible, checkpoint_damage, checkpoint_name,
                                 damaged_checkpoints, find_resume_checkpoint, valid_checkpoints)
from pipeline.errors import TrainError
from pipeline.evaluate import count_correct, loss_sum
from pipeline.optim import (create_optimizer, create_scheduler, follow_config, fused_sgd_available, parameter_groups,
                            scaled_lr, schedule_snapshot)


def test_lr_scales_with_global_batch():
    assert scaled_lr(base_lr=0.1, global_batch=1024, reference_batch=256) == pytest.approx(0.4)


def test_no_weight_decay_on_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    groups = parameter_groups(model, weight_decay=1e-4, decay_norm_and_bias=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4  # conv/linear bias, BN w/b
    optimizer = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                 decay_norm_and_bias=True)
    assert optimizer.defaults["nesterov"] and len(optimizer.param_groups) == 1


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "swin_tiny_patch4_window7_224", "xcit_nano_12_p16_224"])  # xcit: 'pos_embed.*'
def test_no_weight_decay_on_what_the_model_names_as_timms_own_groups_do(name):
    """ViT's cls_token and pos_embed, DeiT's dist_token, Swin's position bias tables (more than 1-d)
    were decayed (walkthrough). Reference: timm's param_groups_weight_decay with the model's list."""
    import timm
    from timm.optim import param_groups_weight_decay

    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    ours = parameter_groups(model, weight_decay=1e-4, decay_norm_and_bias=False)
    theirs = {group["weight_decay"]: {id(p) for p in group["params"]}
              for group in param_groups_weight_decay(model, 1e-4, no_weight_decay_list=model.no_weight_decay())}
    assert [group["weight_decay"] for group in ours] == [1e-4, 0.0]  # our order: a checkpoint's SGD state
    assert {id(p) for p in ours[0]["params"]} == theirs[1e-4] and {id(p) for p in ours[1]["params"]} == theirs[0.0]
    assert any(p.ndim > 1 for p in ours[1]["params"])  # what the 1-d rule alone decayed


def test_a_checkpoint_grouped_by_the_rule_before_no_weight_decay_keeps_its_grouping(tmp_path):
    """A ViT run with decay_norm_and_bias=false from before no_weight_decay() was read: every one of
    its checkpoints failed to load into the new groups (review). Its SGD state, saved as torch saves
    it, is recognized by its group sizes; one of the new rule's is not."""
    import timm

    from pipeline.optim import legacy_groups

    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    for spare_named, expected in ((False, True), (True, False)):
        optimizer = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                     decay_norm_and_bias=False, spare_named=spare_named)
        torch.save(optimizer.state_dict(), tmp_path / "optimizer.bin")
        assert legacy_groups(model, checkpoint=tmp_path, decay_norm_and_bias=False) is expected
    assert not legacy_groups(model, checkpoint=None, decay_norm_and_bias=False)
    assert not legacy_groups(model, checkpoint=tmp_path, decay_norm_and_bias=True)
    # A CNN: the two rules group alike, nothing is read.
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert not legacy_groups(cnn, checkpoint=tmp_path / "none", decay_norm_and_bias=False)


def _lrs(name, *, epochs=6, steps=3, warmup=0.0, min_lr=0.0, **kwargs):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = create_scheduler(optimizer, name=name, epochs=epochs, steps_per_epoch=steps, warmup_epochs=warmup,
                                 warmup_start_factor=0.1, min_lr=min_lr, **kwargs)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_decay_at_epochs():
    lrs = _lrs("step", milestones=(2, 4), decay_factor=0.1)
    expected = [0.1 ** sum(update // 3 >= m for m in (2, 4)) for update in range(18)]  # the paper's rule
    assert lrs == pytest.approx(expected)


def test_cosine_with_warmup():
    lrs = _lrs("cosine", warmup=1.0, milestones=(), decay_factor=0.1)
    assert lrs[:3] == pytest.approx([0.1, 0.4, 0.7])  # linear ramp from 0.1 over the first epoch (3 updates)
    for update in range(3, 18):  # closed-form cosine over the remaining 15 updates
        assert lrs[update] == pytest.approx(0.5 * (1 + math.cos(math.pi * (update - 3) / 15)), abs=1e-6)


def test_step_milestones_count_the_warmup_epochs():
    # Milestones are epochs of the whole run: with 1 epoch (3 updates) of warmup the decays still
    # fall at updates 6 and 12 (epochs 2 and 4), not 3 updates later (SequentialLR restarts the
    # count of the schedule after the warmup).
    lrs = _lrs("step", warmup=1.0, milestones=(2, 4), decay_factor=0.1)
    expected = [0.1, 0.4, 0.7] + [1.0] * 3 + [0.1] * 6 + [0.01] * 6  # written out by hand
    assert lrs == pytest.approx(expected)


def test_cosine_decays_to_min_lr():
    lrs = _lrs("cosine", warmup=1.0, min_lr=0.05, milestones=(), decay_factor=0.1)
    assert lrs[:3] == pytest.approx([0.1, 0.4, 0.7])
    for update in range(3, 18):  # closed form: eta_min + (lr - eta_min) (1 + cos(pi t / T)) / 2, T = 15
        expected = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (update - 3) / 15))
        assert lrs[update] == pytest.approx(expected, abs=1e-6)
    assert lrs[-1] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 14 / 15)), abs=1e-6)


def test_min_lr_scales_with_the_global_batch_as_base_lr_does():
    """min_lr=0.2 under base_lr=0.4 at a global batch of 16 (peak lr 0.025) made cosine climb
    towards 0.2. Both are at optim.reference_batch: the cosine ends at 0.2 * 16 / 256 = 0.0125,
    below its start (closed form, by hand)."""
    from pipeline.config import resolve_config
    from pipeline.run import schedule_options

    config = resolve_config(config_file=None, overrides=[
        "optim.base_lr=0.4", "schedule.name=cosine", "schedule.min_lr=0.2", "schedule.epochs=3"])
    options = schedule_options(config, global_batch=16)
    assert options["min_lr"] == pytest.approx(0.0125, rel=1e-12)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.025)
    scheduler = create_scheduler(optimizer, steps_per_epoch=5, **options)
    lrs = []
    for _ in range(15):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.025) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0125 + 0.0125 * 0.5 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-9)


def test_fused_sgd_is_used_when_asked_for_and_available():
    # What setup passes (optim.fused and fused_sgd_available(device)); CPU has a fused kernel
    # since torch 2.4. Not asked: None, torch's own default (foreach on CUDA), never fused.
    model = torch.nn.Linear(3, 2)
    assert fused_sgd_available("cpu")
    asked = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                             decay_norm_and_bias=True, fused=True and fused_sgd_available("cpu"))
    assert asked.defaults["fused"] is True
    assert all(group["fused"] is True for group in asked.param_groups)
    plain = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                             decay_norm_and_bias=True, fused=False)
    assert plain.defaults["fused"] is not True


def _cosine_lr(update, *, lr, steps, epochs, warmup_epochs=1):
    """Closed form of the demo's schedule: a linear ramp from 0.1 lr over the warmup, then cosine to 0."""
    warmup, total = warmup_epochs * steps, epochs * steps
    if update < warmup:
        return lr * (0.1 + 0.9 * update / warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * (update - warmup) / (total - warmup)))


def _sgd(lr, *, epochs, steps, momentum=0.9, weight_decay=1e-4):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = create_optimizer(model, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay,
                                 decay_norm_and_bias=False)
    scheduler = create_scheduler(optimizer, name="cosine", epochs=epochs, steps_per_epoch=steps, warmup_epochs=1.0,
                                 warmup_start_factor=0.1, min_lr=0.0, milestones=(), decay_factor=0.1)
    return model, optimizer, scheduler


def test_a_resume_with_changes_follows_the_new_lr_schedule_and_group_settings():
    """Loading a checkpoint replaces the lr, the schedule's length and the group settings with the
    checkpoint's; follow_config puts the new config's back, advanced to the resumed position: a
    4-epoch run at lr 0.1 lengthened to 7 epochs at lr 0.3 with momentum 0.8 and weight decay 1e-3
    goes on on the 7-epoch cosine of 0.3 (closed form), not past the end of the old one."""
    steps = 5
    _, old_optimizer, old_scheduler = _sgd(0.1, epochs=4, steps=steps)
    for _ in range(4 * steps):
        old_optimizer.step()
        old_scheduler.step()
    model, optimizer, scheduler = _sgd(0.3, epochs=7, steps=steps, momentum=0.8, weight_decay=1e-3)
    built = schedule_snapshot(optimizer, scheduler)
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old_scheduler.state_dict())
    assert optimizer.param_groups[0]["momentum"] == 0.9  # what loading alone leaves: the old settings
    follow_config(optimizer, scheduler, built, position=4 * steps)
    assert [g["momentum"] for g in optimizer.param_groups] == [0.8, 0.8]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0]  # no decay on norm and bias
    for update in range(4 * steps, 7 * steps):
        expected = _cosine_lr(update, lr=0.3, steps=steps, epochs=7)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2, rel=1e-9, abs=1e-12)
        optimizer.step()
        scheduler.step()
    # Without follow_config the old cosine, past its end, climbs again (what the run did before).
    stale_optimizer, stale_scheduler = _sgd(0.3, epochs=7, steps=steps)[1:]
    stale_optimizer.load_state_dict(old_optimizer.state_dict())
    stale_scheduler.load_state_dict(old_scheduler.state_dict())
    for _ in range(steps):
        stale_optimizer.step()
        stale_scheduler.step()
    assert stale_optimizer.param_groups[0]["lr"] > 0.01


def test_following_the_same_config_changes_nothing():
    """With the settings the checkpoint was trained with, follow_config's state equals the loaded
    one exactly (the same float chain), mid-warmup included."""
    steps = 4
    for position in (2, 4, 11):
        _, trained, trained_scheduler = _sgd(0.2, epochs=5, steps=steps)
        for _ in range(position):
            trained.step()
            trained_scheduler.step()
        _, optimizer, scheduler = _sgd(0.2, epochs=5, steps=steps)
        built = schedule_snapshot(optimizer, scheduler)
        optimizer.load_state_dict(trained.state_dict())
        scheduler.load_state_dict(trained_scheduler.state_dict())
        follow_config(optimizer, scheduler, built, position=position)
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in trained.param_groups]
        assert scheduler.state_dict()["last_epoch"] == trained_scheduler.state_dict()["last_epoch"] == position


def test_count_correct_skips_padding():
    torch.manual_seed(0)
    logits, labels = torch.randn(40, 12), torch.randint(0, 12, (40,))
    labels[::7] = -1
    top1 = top5 = samples = 0
    for row, label in zip(logits.tolist(), labels.tolist()):  # naive reference
        if label < 0:
            continue
        ranked = sorted(range(12), key=lambda k: -row[k])
        top1, top5, samples = top1 + (ranked[0] == label), top5 + (label in ranked[:5]), samples + 1
    assert count_correct(logits, labels).tolist() == [top1, top5, samples]


def test_loss_sum_skips_padding():
    torch.manual_seed(1)
    logits, labels = torch.randn(30, 7) * 3, torch.randint(0, 7, (30,))
    labels[::4] = -1
    expected = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist()):  # naive reference: -log softmax
        if label >= 0:
            expected += math.log(sum(math.exp(v) for v in row)) - row[label]
    assert float(loss_sum(logits, labels)) == pytest.approx(expected, rel=1e-6)


def _fake_checkpoint(root, state, *, complete=True):
    folder = root / "checkpoints" / checkpoint_name(state)
    folder.mkdir(parents=True)
    (folder / STATE).write_text(json.dumps(state.__dict__))
    if complete:
        (folder / COMPLETE).write_text("ok\n")
    return folder


def test_resume_picks_newest_complete(tmp_path):
    _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    newest = _fake_checkpoint(tmp_path, TrainState(epoch=2, step_in_epoch=3, global_step=13))
    _fake_checkpoint(tmp_path, TrainState(epoch=3, global_step=30), complete=False)  # killed mid-save
    (tmp_path / "checkpoints" / "tmp-epoch-0004").mkdir()
    assert [p.name for p in valid_checkpoints(tmp_path)] == ["epoch-0001", "epoch-0002-step-000003"]
    assert find_resume_checkpoint("auto", tmp_path) == newest
    assert find_resume_checkpoint("none", tmp_path) is None
    assert find_resume_checkpoint("auto", tmp_path / "empty") is None
    with pytest.raises(TrainError, match="not a complete checkpoint"):
        find_resume_checkpoint(str(tmp_path / "checkpoints" / "epoch-0003"), tmp_path)


def _fake_files(folder, sizes: dict) -> None:
    """Files of the given sizes in a fake checkpoint, recorded in its state.json as a save does."""
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * size)
    state = json.loads((folder / STATE).read_text())
    (folder / STATE).write_text(json.dumps({**state, "files": sizes}))


def test_a_damaged_checkpoint_is_skipped_and_refused_by_name(tmp_path):
    older = _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    newer = _fake_checkpoint(tmp_path, TrainState(epoch=2, global_step=20))
    for folder in (older, newer):
        _fake_files(folder, {"model.safetensors": 100, "optimizer.bin": 40})
    assert find_resume_checkpoint("auto", tmp_path) == newer and damaged_checkpoints(tmp_path) == []
    (newer / "model.safetensors").write_bytes(b"x" * 64)  # cut short
    assert find_resume_checkpoint("auto", tmp_path) == older
    assert damaged_checkpoints(tmp_path) == [(newer, "model.safetensors has 64 bytes, the save wrote 100")]
    with pytest.raises(TrainError, match="is damaged .model.safetensors has 64 bytes"):
        find_resume_checkpoint(str(newer), tmp_path)
    (older / "optimizer.bin").unlink()
    assert checkpoint_damage(older) == "optimizer.bin is missing"
    # Nothing left to resume from: starting over would silently discard the run.
    with pytest.raises(TrainError, match="every checkpoint of .* is damaged .*run.resume=none"):
        find_resume_checkpoint("auto", tmp_path)
    assert find_resume_checkpoint("none", tmp_path) is None
    (older / STATE).write_text("{not json")
    assert checkpoint_damage(older) == "state.json is unreadable"
    (older / STATE).unlink()  # a finished save (its marker) without its state: damaged, not absent
    assert checkpoint_damage(older) == "state.json is missing"
    assert [p.name for p, _ in damaged_checkpoints(tmp_path)] == ["epoch-0001", "epoch-0002"]
    # A checkpoint of a version that recorded no files is taken as it is.
    assert checkpoint_damage(_fake_checkpoint(tmp_path, TrainState(epoch=3, global_step=30))) is None


def test_small_files_that_do_not_load_are_damage(tmp_path):
    """Accelerate skips an RNG file that fails to load with an info-level log line: the run would
    go on with other random draws, so such a checkpoint counts as damaged (as a bad loader file)."""
    import random

    import numpy as np
    import torch

    folder = _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    # What Accelerate's save_state writes for a CPU process (accelerate/checkpointing.py).
    torch.save({"step": 0, "random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    (folder / "loader-rank0.json").write_text('{"epoch": 1}')
    assert checkpoint_damage(folder) is None
    size = (folder / "random_states_0.pkl").stat().st_size
    (folder / "random_states_0.pkl").write_bytes(bytes(size))  # the same size, other bytes
    assert checkpoint_damage(folder) == "random_states_0.pkl does not load"
    torch.save({"step": 0}, folder / "random_states_0.pkl")  # loads, but holds no RNG state
    assert checkpoint_damage(folder) == "random_states_0.pkl does not load"
    (folder / "random_states_0.pkl").unlink()
    (folder / "loader-rank0.json").write_text('{"epoch": 1')
    assert checkpoint_damage(folder) == "loader-rank0.json does not load"


def test_a_resume_may_change_how_a_run_executes_but_not_what_it_trains(tmp_path):
    from pipeline.config import resolve_config, write_config
    from pipeline.resume_config import check_resume_config, training_settings

    def config(*overrides):
        return resolve_config(config_file=None, overrides=list(overrides))

    checkpoint = _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    recorded = training_settings(config("mix.mode=cutmix", "optim.base_lr=0.1"))
    # The run's config.yaml says something else: the checkpoint's own record is what counts.
    write_config(config("mix.mode=mixup"), tmp_path / "config.yaml")
    same_training = ["mix.mode=cutmix", "optim.base_lr=0.1", "data.shards=/elsewhere", "loader.num_threads=9",
                     "model.compile=true", "run.progress=false", "run.out_dir=/moved", "run.eval_every=5",
                     "optim.fused=false", "model.channels_last=false", "run.deterministic=true"]
    assert check_resume_config(config(*same_training), checkpoint, recorded) == []
    other = ["mix.mode=mixup", "optim.base_lr=0.2", "schedule.milestones=1,2"]
    with pytest.raises(TrainError, match=r"optim.base_lr=0.1 \(now 0.2\), schedule.milestones=75,150,225 "
                                         r"\(now 1,2\), mix.mode=cutmix \(now mixup\)\); .*resume_with_changes=true"):
        check_resume_config(config(*other), checkpoint, recorded)
    allowed = config(*other, "run.resume_with_changes=true")
    assert check_resume_config(allowed, checkpoint, recorded) == [("optim.base_lr", 0.1, 0.2),
                                                                  ("schedule.milestones", [75, 150, 225], [1, 2]),
                                                                  ("mix.mode", "cutmix", "mixup")]
    assert check_resume_config(allowed, None, {}) == []  # a fresh start compares with nothing
    # The torch loader splits an epoch between its workers: their count is a training setting there.
    torch_recorded = training_settings(config("loader.backend=torch", "loader.num_threads=2"))
    with pytest.raises(TrainError, match=r"\(loader.num_threads=2 \(now 3\)\)"):
        check_resume_config(config("loader.backend=torch", "loader.num_threads=3"), checkpoint, torch_recorded)
    # A checkpoint of a version that recorded no settings: compared with its run's config.yaml.
    with pytest.raises(TrainError, match=r"\(mix.mode=mixup \(now cutmix\)\)"):
        check_resume_config(config("mix.mode=cutmix"), checkpoint, {})
    (tmp_path / "config.yaml").write_text("run: [unreadable\n")
    with pytest.raises(TrainError, match="cannot read .*config.yaml.*run.resume_with_changes=true"):
        check_resume_config(config(), checkpoint, {})
    assert check_resume_config(config("run.resume_with_changes=true"), checkpoint, {}) == []


@pytest.mark.parametrize("override", ["run.keep_checkpoints=7", "loader.val_batch_size=13"])
def test_checkpoint_keeping_and_the_eval_batch_may_change_on_resume(tmp_path, override):
    """How many checkpoints are kept and the eval batch change nothing trained: a resume with
    another value is accepted without resume_with_changes and reports no change, whether compared
    with the checkpoint's record or (an older checkpoint) its run's config.yaml."""
    from pipeline.config import resolve_config, write_config
    from pipeline.resume_config import check_resume_config, training_settings

    checkpoint = _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    before = resolve_config(config_file=None, overrides=["run.keep_checkpoints=2", "loader.val_batch_size=50"])
    write_config(before, tmp_path / "config.yaml")
    now = resolve_config(config_file=None, overrides=[override])
    assert override.split("=")[0] not in training_settings(now)  # not a training setting
    assert check_resume_config(now, checkpoint, training_settings(before)) == []
    assert check_resume_config(now, checkpoint, {}) == []


def test_the_parameter_groups_cannot_change_even_on_purpose(tmp_path):
    """optim.decay_norm_and_bias makes one SGD parameter group or two: the checkpoint's optimizer
    state would not load into the other (it failed as 'does not load'); refused, naming the key."""
    from pipeline.config import resolve_config
    from pipeline.resume_config import check_resume_config, training_settings

    checkpoint = _fake_checkpoint(tmp_path, TrainState(epoch=1, global_step=10))
    recorded = training_settings(resolve_config(config_file=None, overrides=[]))
    changed = resolve_config(config_file=None, overrides=["optim.decay_norm_and_bias=false",
                                                          "run.resume_with_changes=true"])
    with pytest.raises(TrainError, match=r"was trained with optim.decay_norm_and_bias=true \(now false\), which a "
                                         r"resume cannot change \(.*\); resume with optim.decay_norm_and_bias=true"):
        check_resume_config(changed, checkpoint, recorded)


def test_a_resume_on_another_class_list_is_refused(tmp_path):
    state = TrainState(model_name="resnet10t", num_classes=3, classes=["cat", "dog", "eel"])
    check_compatible(state, checkpoint=tmp_path, model_name="resnet10t", num_classes=3, classes=["cat", "dog", "eel"])
    with pytest.raises(TrainError, match="class 1 is 'dog' there, 'eel' here"):
        check_compatible(state, checkpoint=tmp_path, model_name="resnet10t", num_classes=3,
                         classes=["cat", "eel", "dog"], shards=tmp_path)
    # A checkpoint of a version that did not record its classes: only the count is compared.
    check_compatible(TrainState(model_name="resnet10t", num_classes=3), checkpoint=tmp_path, model_name="resnet10t",
                     num_classes=3, classes=["x", "y", "z"])


def test_a_kept_config_is_never_written_over(tmp_path):
    from pipeline.resume_config import keep_previous_config

    checkpoint = _fake_checkpoint(tmp_path, TrainState(epoch=3, global_step=30))
    kept = []
    for text in ("first: 1\n", "second: 2\n", "third: 3\n"):  # three changes resumed from one checkpoint
        (tmp_path / "config.yaml").write_text(text)
        kept.append(keep_previous_config(checkpoint, tmp_path).name)
    assert kept == ["config.before-epoch-0003.yaml", "config.before-epoch-0003-2.yaml",
                    "config.before-epoch-0003-3.yaml"]
    assert [(tmp_path / name).read_text() for name in kept] == ["first: 1\n", "second: 2\n", "third: 3\n"]


def test_a_resume_with_another_model_structure_is_refused(tmp_path):
    state = TrainState(model_name="pyramidnet20_a48", num_classes=10, shakedrop=True)
    check_compatible(state, checkpoint=tmp_path, model_name="pyramidnet20_a48", num_classes=10, shakedrop=True)
    for other in (dict(model_name="resnet10t", num_classes=10, shakedrop=True),
                  dict(model_name="pyramidnet20_a48", num_classes=100, shakedrop=True),
                  dict(model_name="pyramidnet20_a48", num_classes=10, shakedrop=False)):
        with pytest.raises(TrainError, match="run.resume"):
            check_compatible(state, checkpoint=tmp_path, **other)
    # A checkpoint of a version before the field: no ShakeDrop.
    assert TrainState(**{"model_name": "resnet10t", "num_classes": 10}).shakedrop is False


def test_an_older_demo_folder_gets_the_test_split(tmp_path):
    """A demo shards folder made before the localization split existed (no test.json) is completed."""
    from types import SimpleNamespace

    from shards.demo import build_demo_shards

    from pipeline.config import resolve_config
    from pipeline.run import prepare_shards

    shards = build_demo_shards(tmp_path / "data", quiet=True)
    for path in shards.glob("test*"):
        path.unlink()
    config = resolve_config(config_file=None, overrides=["data.demo=true", f"data.shards={shards}"])
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    assert prepare_shards(config, accelerator=accelerator) == shards
    assert (shards / "test.json").is_file() and (shards / "val.json").is_file()


@pytest.mark.parametrize("gpu_visible, use_cpu, expected", [
    (True, None, "bf16"),
    (True, "true", "no"),  # accelerate launch --cpu, or the Slurm script without GPUs, on a GPU node
    (True, "0", "bf16"),
    (False, None, "no"),
])
def test_auto_precision_follows_the_device_accelerate_will_use(monkeypatch, gpu_visible, use_cpu, expected):
    from accelerate.utils import parse_flag_from_env

    from pipeline.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_visible)
    if use_cpu is None:
        monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_USE_CPU", use_cpu)
    # The same reading of the variable as Accelerate's own (accelerate.state.PartialState).
    assert parse_flag_from_env("ACCELERATE_USE_CPU") is (use_cpu == "true")
    assert resolve_precision("auto") == expected
    assert (resolve_precision("bf16"), resolve_precision("no")) == ("bf16", "no")  # explicit settings stand


@pytest.mark.parametrize("environ, joined, expected", [
    ({}, 1, ""),  # plain python
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 2, ""),  # joined: DDP on GPUs, or on CPUs with ACCELERATE_USE_CPU
    ({"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, 1, ""),  # accelerate launch of one process
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, 1, "the launcher started 2 processes but each runs alone"),
    ({"WORLD_SIZE": "4"}, 1, "WORLD_SIZE=4 is set but no launcher started this process"),
])
def test_processes_a_launcher_started_that_would_each_run_alone(environ, joined, expected):
    from pipeline.launcher import lone_process_problem

    problem = lone_process_problem(joined, environ)
    assert problem.startswith(expected) if expected else problem == ""
    if environ.get("LOCAL_RANK") == "0" and expected:
        assert "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...`" in problem


def test_a_world_size_left_in_the_shell_is_refused_before_the_run_folder(demo_shards, trained_demo, tmp_path, capsys,
                                                                          monkeypatch):
    """WORLD_SIZE=2 with no launcher: Accelerate runs one process (it joins processes only when a
    launcher set LOCAL_RANK), while the checks read 2; the start says so before writing anything.
    The evaluator the same, before --out is made."""
    from train_helpers import cli_here, small_run_args

    from pipeline.evaluate.cli import main as evaluate_main

    for name in ("LOCAL_RANK", "RANK", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    code, _, err = cli_here(small_run_args(demo_shards, out), capsys)
    assert code == 2 and err == ("error: WORLD_SIZE=2 is set but no launcher started this process (no LOCAL_RANK): "
                                 "unset WORLD_SIZE, or start the processes with `accelerate launch`\n")
    assert not out.exists()
    evaluated = trained_demo[0] / "eval-alone"
    assert evaluate_main([str(trained_demo[0]), "--tasks", "classify", "--quiet", "--out", str(evaluated)]) == 2
    assert capsys.readouterr().err.startswith("error: WORLD_SIZE=2 is set but no launcher started this process")
    assert not evaluated.exists()


@pytest.mark.parametrize("rank, during_training, line", [
    ("0", False, "error: no shards\n"),  # a check before training: the same on every rank, rank 0 says it
    ("1", False, ""),
    ("0", True, "error: a damaged shard\n"),  # while training: may be one rank's alone, that rank says it
    ("1", True, "error: (rank 1) a damaged shard\n"),
])
def test_a_loader_error_while_training_is_said_by_the_rank_that_met_it(rank, during_training, line, capsys,
                                                                        monkeypatch):
    import pipeline.run
    from pipeline.cli import run_cli
    from pipeline.data import LoaderError

    def failing(config, **kwargs):
        error = LoaderError("a damaged shard" if during_training else "no shards")
        if during_training:
            error.during_pass = True  # as run_training marks the errors of its epochs
        raise error

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(pipeline.run, "run_training", failing)
    assert run_cli([], default_config=None) == 2
    assert capsys.readouterr().err == line


def test_check_only_checks_and_writes_nothing(demo_shards, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from pipeline.cli import run_cli

    monkeypatch.delenv("RANK", raising=False)
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    out = tmp_path / "run"
    args = ["--check", "data.demo=false", f"run.out_dir={out}"]
    assert run_cli([*args, f"data.shards={demo_shards}"], default_config=demo) == 0
    # The demo: 64 per process, base lr 0.4 per 256 (by hand: 0.4 * 64 / 256 = 0.1 per process).
    assert capsys.readouterr().out == (f"config checked: resnet10t on 10 classes in {demo_shards}; starts fresh; "
                                       "global batch 64 x the processes launched, peak lr 0.1 x the processes "
                                       f"launched; run folder {out}\n")
    # Under a launcher (WORLD_SIZE): the global batch and the lr it scales to (a recipe for 8 GPUs run
    # by one process trains at an eighth of its lr, which --check did not show; walkthrough).
    # Left in a shell, no launcher (no LOCAL_RANK): refused as the start refuses it (--check had
    # passed, counting 2 processes; review).
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli([*args, f"data.shards={demo_shards}", "optim.reference_batch=64"], default_config=demo) == 2
    assert capsys.readouterr().err == ("error: WORLD_SIZE=2 is set but no launcher started this process (no "
                                       "LOCAL_RANK): unset WORLD_SIZE, or start the processes with `accelerate "
                                       "launch`\n")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run_cli([*args, f"data.shards={demo_shards}", "optim.reference_batch=64"], default_config=demo) == 0
    assert "; starts fresh; global batch 128 on 2 processes, peak lr 0.8; run folder" in capsys.readouterr().out
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    assert run_cli([*args, "data.shards=/nonexistent/shards"], default_config=demo) == 2
    assert capsys.readouterr().err.startswith("error: no shards at /nonexistent/shards")
    assert run_cli([*args, f"data.shards={demo_shards}", "model.name=resnet5O"], default_config=demo) == 2
    assert "timm has no model 'resnet5O'" in capsys.readouterr().err
    assert not out.exists()


def test_the_config_of_a_moved_run_folder_names_both_folders(trained_demo, tmp_path, capsys, monkeypatch):
    """`--config MOVED/config.yaml` after `mv RUN MOVED`: the record names run.out_dir=RUN, so the
    command meant to resume MOVED started a fresh run in RUN (a copy resumed the original instead;
    walkthrough). Refused, naming both; with run.out_dir given, either goes ahead."""
    import shutil

    from pipeline.cli import run_cli

    monkeypatch.delenv("RANK", raising=False)
    run = trained_demo[0]
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    record = moved / "config.yaml"
    assert run_cli(["--check", "--config", str(record)], default_config=None) == 2
    assert capsys.readouterr().err == (
        f"error: --config {record} is the record of the run folder {moved}, but it names run.out_dir={run} (the "
        f"folder was moved or copied since?): give run.out_dir={moved} to go on with this folder, or "
        f"run.out_dir={run} to train in that one\n")
    assert run_cli(["--check", "--config", str(record), f"run.out_dir={moved}"], default_config=None) == 0
    assert f"run folder {moved}" in capsys.readouterr().out
    # The run's own record where it was written, also through a link to its folder: no question.
    (tmp_path / "link").symlink_to(run)
    for record in (run / "config.yaml", tmp_path / "link" / "config.yaml"):
        assert run_cli(["--check", "--config", str(record)], default_config=None) == 0
        assert f"run folder {run}" in capsys.readouterr().out
    # A record naming its folder relative to another working folder (reviewer): said so, with the
    # folder it names from here.
    text = record.read_text()
    assert f"out_dir: {run}\n" in text
    (moved / "config.yaml").write_text(text.replace(f"out_dir: {run}\n", "out_dir: runs/x\n"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(["--check", "--config", "moved/config.yaml"], default_config=None) == 2
    assert capsys.readouterr().err == (
        f"error: --config moved/config.yaml is the record of the run folder {moved}, but it names run.out_dir=runs/x "
        f"(relative: from this working folder {tmp_path / 'runs' / 'x'}): give run.out_dir={moved} to go on with "
        f"this folder, or run.out_dir={tmp_path / 'runs' / 'x'} to train in that one\n")


def test_a_warmup_shorter_than_one_update_is_refused_before_any_work(demo_shards, tmp_path, capsys, monkeypatch):
    """schedule.warmup_epochs=0.1 of 2 updates per epoch: the scheduler rounds it to 0 updates, and
    the run trained without a warm-up (its start factor unused) without a word (walkthrough)."""
    from pathlib import Path

    from pipeline.cli import run_cli

    monkeypatch.delenv("RANK", raising=False)
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    out = tmp_path / "run"
    args = ["--check", "data.demo=false", f"run.out_dir={out}", f"data.shards={demo_shards}", "run.max_train_steps=2"]
    assert run_cli([*args, "schedule.warmup_epochs=0.1"], default_config=demo) == 2
    assert capsys.readouterr().err == ("error: schedule.warmup_epochs=0.1 is 0.2 of the 2 updates per epoch: no "
                                       "warm-up update would run; give 0, or at least 0.5 (one update)\n")
    assert run_cli([*args, "schedule.warmup_epochs=0.5"], default_config=demo) == 0  # round(1.0): one update
    assert not out.exists()


def _shards_copy(demo_shards, folder, change):
    """The demo shards' manifests copied into ``folder`` (the tars and indexes linked), with
    ``change(split, manifest)`` applied to each."""
    import shutil

    folder.mkdir()
    for path in demo_shards.iterdir():
        if path.suffix == ".json":
            manifest = json.loads(path.read_text())
            change(path.stem, manifest)
            (folder / path.name).write_text(json.dumps(manifest))
        else:
            (folder / path.name).symlink_to(path)
    shutil.copystat(demo_shards, folder)
    return folder


def _check_line(capsys, args) -> tuple[int, str]:
    from pathlib import Path

    from pipeline.cli import run_cli

    code = run_cli(args, default_config=Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    captured = capsys.readouterr()
    return code, (captured.err or captured.out).strip()


def test_a_val_split_of_another_class_list_is_refused_before_any_work(demo_shards, tmp_path, capsys, monkeypatch):
    """The same number of classes in another order: every val label would mean another class
    and the run would report meaningless errors (it did, rc 0). --check and the start refuse it."""
    def swap(split, manifest):
        if split == "val":
            manifest["classes"][0], manifest["classes"][1] = manifest["classes"][1], manifest["classes"][0]
            manifest["build"]["source"] = "/gone/raw/val"  # a source that is no longer there: SRC

    monkeypatch.delenv("RANK", raising=False)
    shards = _shards_copy(demo_shards, tmp_path / "shards", swap)
    out = tmp_path / "run"
    args = ["data.demo=false", f"data.shards={shards}", f"run.out_dir={out}", "schedule.epochs=1"]
    expected = (f"error: data.shards={shards}: the val split has another class list than train (class 0 is "
                f"'digit_0' in train, 'digit_1' there): its labels would mean other classes; build it again with "
                f"the train split's list: python -m shards build SRC {shards} --split val --classes "
                f"{shards / 'train.json'} --overwrite")
    assert _check_line(capsys, ["--check", *args]) == (2, expected)
    assert _check_line(capsys, args) == (2, expected)
    assert not (out / "checkpoints").exists()
    # ImageNet's flat val needs its labels again: the command names the source and the files its build
    # record names (SRC and no --labels made a command that failed again; walkthrough).
    (tmp_path / "val.tar").write_bytes(b"")

    def recorded(split, manifest):
        swap(split, manifest)
        if split == "val":
            manifest["build"].update(source=str(tmp_path / "val.tar"), labels="/data/LOC_val_solution.csv")

    labelled = _shards_copy(demo_shards, tmp_path / "labelled", recorded)
    code, line = _check_line(capsys, ["--check", *args[:1], f"data.shards={labelled}", *args[2:]])
    assert code == 2 and line.endswith(f"python -m shards build {tmp_path / 'val.tar'} {labelled} --split val --labels "
                                       f"/data/LOC_val_solution.csv --classes {labelled / 'train.json'} --overwrite")


def test_check_reports_what_the_start_would_refuse(trained_demo, demo_shards, tmp_path, capsys, monkeypatch):
    """--check said "config checked" (rc 0) for each of these, where the start then refused."""
    from train_helpers import TRAINED_DEMO_SETTINGS, small_run_args

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = trained_demo[0]
    renamed = _shards_copy(demo_shards, tmp_path / "renamed",
                           lambda split, m: m.update(classes=[f"class_{i}" for i in range(10)]))
    no_test = _shards_copy(demo_shards, tmp_path / "no_test", lambda split, m: None)
    (no_test / "test.json").unlink()
    only_train = _shards_copy(demo_shards, tmp_path / "only_train", lambda split, m: None)
    for path in [*only_train.glob("val*"), *only_train.glob("test*")]:
        path.unlink()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my data")
    trained = small_run_args(demo_shards, run, *TRAINED_DEMO_SETTINGS)
    cases = [
        ([*trained, f"data.shards={renamed}"], f"run.resume: {run / 'checkpoints' / 'epoch-0003'} was trained on "
                                               "another class list than"),
        ([*trained, "schedule.epochs=4", "run.resume_with_changes=true", "model.name=resnet14t"],
         "model.name=resnet10t (now resnet14t), which a resume cannot change"),
        (["data.demo=false", f"data.shards={no_test}", "data.eval_split=test", f"run.out_dir={tmp_path / 'r'}"],
         f"data.eval_split=test: {no_test / 'test.json'}: no manifest for split 'test'"),
        # ImageNet-21k has no val split (walkthrough): what to build.
        (["data.demo=false", f"data.shards={only_train}", f"run.out_dir={tmp_path / 'r'}"],
         f"data.eval_split=val: {only_train / 'val.json'}: no manifest for split 'val'; {only_train} has train; a "
         "data set without one (ImageNet-21k): hold images out of SRC and build them with `python -m shards build "
         f"HELD_OUT {only_train} --split val --classes {only_train / 'train.json'}`"),
        (["data.demo=true", f"data.shards={tmp_path / 'mine'}", f"run.out_dir={tmp_path / 'r'}"],
         f"data.shards={tmp_path / 'mine'}: it holds notes.txt, which a demo build does not write"),
        # 1,438 train digits: one process cannot make a batch of 2,000 of them.
        (["data.demo=false", f"data.shards={demo_shards}", "loader.batch_size=2000", f"run.out_dir={tmp_path / 'r'}"],
         "batch_size 2000 is larger than a rank's share of split 'train' (1438 samples with world_size 1)"),
    ]
    for args, message in cases:
        code, line = _check_line(capsys, ["--check", *args])
        assert code == 2 and line.startswith("error: ") and message in line, (args, line)


def test_check_says_when_the_run_has_finished(trained_demo, demo_shards, capsys, monkeypatch):
    """The Slurm script does not requeue a run whose --check says it has finished (a USR1 that
    came during the last evaluation)."""
    from train_helpers import TRAINED_DEMO_SETTINGS, small_run_args

    from pipeline.cli import run_cli

    monkeypatch.delenv("RANK", raising=False)
    run = trained_demo[0]
    assert run_cli(["--check", *small_run_args(demo_shards, run, *TRAINED_DEMO_SETTINGS)], default_config=None) == 0
    assert f"already finished ({run / 'checkpoints' / 'epoch-0003'})" in capsys.readouterr().out


def test_check_says_what_a_named_resume_or_a_start_over_would_move(trained_demo, demo_shards, capsys, monkeypatch):
    """The start moves the later checkpoints of a named resume (and a whole earlier run with
    run.resume=none) to RUN/replaced-<n>; --check, run first, said nothing of it. It moves nothing."""
    from train_helpers import TRAINED_DEMO_SETTINGS, small_run_args

    from pipeline.cli import run_cli

    monkeypatch.delenv("RANK", raising=False)
    run = trained_demo[0]
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    args = ["--check", *small_run_args(demo_shards, run, *TRAINED_DEMO_SETTINGS)]
    assert run_cli([*args, f"run.resume={run / 'checkpoints' / 'epoch-0002'}"], default_config=None) == 0
    assert (f"resumes from {run / 'checkpoints' / 'epoch-0002'} (the later epoch-0003 move to {run}/replaced-<n>)"
            in capsys.readouterr().out)
    assert run_cli([*args, "run.resume=none"], default_config=None) == 0
    assert f"starts fresh (the earlier run's files move to {run}/replaced-<n>)" in capsys.readouterr().out
    assert run_cli([*args, f"run.resume={run / 'checkpoints' / 'epoch-0003'}"], default_config=None) == 0
    assert "replaced" not in capsys.readouterr().out  # the newest named: nothing is later
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_what_a_fresh_start_sets_aside(tmp_path, capsys):
    """Written by hand: which folders hold an earlier run. A damaged metrics file is not parsed (it
    stopped run.resume=none, whose point is to start over); epoch records beside an unfinished first
    save are a restart's own (auto), not an earlier run's."""
    from pipeline.run import earlier_run_left, set_aside_earlier_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("schedule: {epochs: 3}\n")
    assert not earlier_run_left(run, resume="auto") and not earlier_run_left(run, resume="none")
    (run / "metrics.jsonl").write_text('garbage\n{"epoch": 1}\n')
    assert earlier_run_left(run, resume="none") and earlier_run_left(run, resume="auto")
    (run / "checkpoints" / "tmp-epoch-0001").mkdir(parents=True)
    assert earlier_run_left(run, resume="none") and not earlier_run_left(run, resume="auto")
    aside = set_aside_earlier_run(run, resume="none", why="run.resume=none")
    assert aside == run / "replaced-1" and (aside / "metrics.jsonl").read_text().startswith("garbage")
    assert capsys.readouterr().out == (f"run.resume=none: the earlier run's checkpoints, metrics and config are "
                                       f"moved to {aside}\n")


def test_a_resume_folder_that_is_no_checkpoint_is_told_what_to_give(trained_demo, tmp_path):
    """A run folder, a pruned checkpoint (the 3-epoch demo keeps epoch-0002 and -0003) and a save
    that did not finish each say what run.resume takes there, listing the complete checkpoints."""
    from pipeline.config import resolve_config
    from pipeline.errors import ConfigError

    run = trained_demo[0]
    kept = "epoch-0002, epoch-0003"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept.split(", ")  # the reference
    unfinished = tmp_path / "checkpoints" / "epoch-0001"
    unfinished.mkdir(parents=True)
    cases = [
        (run, f"; {run} is a run folder: run.resume=auto with run.out_dir={run} resumes its newest checkpoint, or "
              f"name one of its checkpoints ({kept})"),
        (run / "checkpoints" / "epoch-0001", "; epoch-0001 is not there (pruned: a run keeps its newest "
                                             "run.keep_checkpoints and its best; moved to RUN/replaced-<n> by a "
                                             f"branch or a start over; or misspelt); complete ones there: {kept}"),
        (unfinished, "; epoch-0001 did not finish saving; no complete checkpoint is there"),
        (run / "checkpoints", f"; {run / 'checkpoints'} holds a run's checkpoints: name one of them ({kept}), or "
                              f"run.resume=auto with run.out_dir={run} for its newest"),
        (tmp_path / "elsewhere", "got '" + str(tmp_path / "elsewhere") + "' (no such folder)"),
    ]
    for given, hint in cases:
        with pytest.raises(ConfigError) as raised:
            resolve_config(config_file=None, overrides=[f"run.resume={given}"])
        assert str(raised.value).startswith("run.resume: must be auto, none or a complete checkpoint folder")
        assert str(raised.value).endswith(hint), str(raised.value)


def test_pruning_removes_damaged_checkpoints_older_than_the_newest_good_one(tmp_path):
    from pipeline.checkpoint import prune_checkpoints

    folders = [_fake_checkpoint(tmp_path, TrainState(epoch=e, global_step=10 * e)) for e in (1, 2, 3, 4)]
    for folder in folders:
        _fake_files(folder, {"model.safetensors": 100})
    for damaged in (folders[0], folders[3]):  # one older than the newest good one, one newer
        (damaged / "model.safetensors").write_bytes(b"x" * 10)
    prune_checkpoints(tmp_path / "checkpoints", keep=2)
    # epoch-0004 stays (never resumed from, it is overwritten when training gets there again)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003", "epoch-0004"]


def _fake_run(root, saves) -> list:
    """Fake complete checkpoints, one per (epoch, step_in_epoch, best epoch) in ``saves``, in order
    of their global step (ten updates per epoch)."""
    folders = []
    for epoch, step, best in saves:
        state = TrainState(epoch=epoch, step_in_epoch=step, global_step=10 * epoch + step,
                           best={} if best is None else {"top1_err": 1.0, "top5_err": 0.0, "epoch": best})
        folders.append(_fake_checkpoint(root, state))
        _fake_files(folders[-1], {"model.safetensors": 100})
    return folders


def test_pruning_keeps_the_best_epochs_checkpoint_too(tmp_path):
    from pipeline.checkpoint import prune_checkpoints

    cases = [  # (keep, saves as (epoch, step_in_epoch, best epoch), the folders left)
        # The best epoch (2) is older than the newest two: kept beside them.
        (2, [(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 0, 2), (5, 0, 2)], ["epoch-0002", "epoch-0004", "epoch-0005"]),
        (1, [(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 0, 2)], ["epoch-0002", "epoch-0004"]),
        # The best is among the newest: nothing more is kept.
        (2, [(1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 0, 3)], ["epoch-0003", "epoch-0004"]),
        # No evaluation yet (run.eval_every): no best, the newest only.
        (2, [(1, 0, None), (2, 0, None), (3, 0, None)], ["epoch-0002", "epoch-0003"]),
        # A mid-epoch save after the best epoch is not the best (no evaluation ran there): epoch 1's end is.
        (2, [(1, 0, 1), (1, 4, 1), (2, 0, 1), (3, 0, 1)], ["epoch-0001", "epoch-0002", "epoch-0003"]),
        # The best as the newest checkpoint records it: an earlier best (epoch 1) goes.
        (1, [(1, 0, 1), (2, 0, 2), (3, 0, 2)], ["epoch-0002", "epoch-0003"]),
    ]
    for index, (keep, saves, kept) in enumerate(cases):
        run = tmp_path / str(index)
        folders = _fake_run(run, saves)
        prune_checkpoints(run / "checkpoints", keep=keep)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept, (keep, saves)
        # A resume continues from the newest, never from an older kept best.
        assert find_resume_checkpoint("auto", run) == folders[-1], (keep, saves)


def test_the_final_line_names_the_best_epochs_checkpoint(trained_demo):
    run, done = trained_demo
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["top1_err"])  # the first of equals: a later equal is no new best
    folder = run / "checkpoints" / f"epoch-{best['epoch']:04d}"
    assert (folder / COMPLETE).is_file()
    line = done.stdout.strip().splitlines()[-1]
    assert f"(best top-1 {best['top1_err']:.2f}% at epoch {best['epoch']}: {folder}); run folder {run}" in line


def test_a_mid_epoch_position_moves_to_the_new_global_batch_by_hand():
    """A mid-epoch checkpoint resumed with changed settings: the epoch goes on from the samples
    done so far at the new global batch, at most the new epoch's length, and each rank carries its
    share of the loss so far (the per-step mean times its steps)."""
    from pipeline.run import remap_epoch_position

    def state(**kwargs):
        return TrainState(**{"epoch": 1, "step_in_epoch": 3, "world_size": 1, "partial_loss": [6.0],
                             "settings": {"loader.batch_size": 32}, **kwargs})

    same = state()
    remap_epoch_position(same, steps_per_epoch=6, world_size=1, batch_size=32)
    assert (same.step_in_epoch, same.partial_loss) == (3, [6.0])  # nothing changes
    two = state()
    remap_epoch_position(two, steps_per_epoch=6, world_size=2, batch_size=32)  # 96 samples done, 64 a step
    assert (two.step_in_epoch, two.partial_loss) == (2, [4.0, 4.0])  # round(1.5) = 2; 2 per step x 2 steps each
    shorter = state()
    remap_epoch_position(shorter, steps_per_epoch=2, world_size=1, batch_size=32)  # run.max_train_steps=2
    assert (shorter.step_in_epoch, shorter.partial_loss) == (2, [4.0])
    smaller = state(step_in_epoch=31, partial_loss=[62.0])
    remap_epoch_position(smaller, steps_per_epoch=22, world_size=1, batch_size=64)  # 992 samples: 15.5 steps
    assert (smaller.step_in_epoch, smaller.partial_loss) == (16, [32.0])
    whole = state(step_in_epoch=0, partial_loss=[])
    remap_epoch_position(whole, steps_per_epoch=2, world_size=4, batch_size=8)
    assert (whole.step_in_epoch, whole.partial_loss) == (0, [])


def test_a_mid_epoch_resume_with_changes_goes_on_at_the_saved_step(tmp_path):
    """resume() with changed settings rebuilds the schedule and steps it to where the checkpoint
    stands: epoch 1 and 2 steps in (update 7, at 5 updates an epoch), not the epoch's start (update 5).
    The lr there is the new config's closed-form cosine (lr 0.3, 6 epochs, 1 of warmup)."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from pipeline.config import resolve_config
    from pipeline.run import resume

    steps = 5

    def prepared(lr, epochs):
        accelerator = Accelerator(cpu=True)
        model, optimizer, scheduler = _sgd(lr, epochs=epochs, steps=steps)
        return accelerator, *accelerator.prepare(model, optimizer, scheduler)

    accelerator, _, optimizer, scheduler = prepared(0.1, 4)
    for _ in range(steps + 2):
        optimizer.step()
        scheduler.step()
    state = TrainState(epoch=1, step_in_epoch=2, global_step=steps + 2, world_size=1, partial_loss=[2.0],
                       settings={"loader.batch_size": 32})
    checkpoint = tmp_path / "checkpoints" / checkpoint_name(state)
    accelerator.save_state(str(checkpoint), safe_serialization=True)
    (checkpoint / STATE).write_text(json.dumps(state.__dict__))
    (checkpoint / COMPLETE).write_text("ok\n")

    config = resolve_config(config_file=None, overrides=[
        "schedule.epochs=6", "schedule.name=cosine", "schedule.warmup_epochs=1",
        "loader.batch_size=32", "run.resume_with_changes=true"])
    accelerator, _, optimizer, scheduler = prepared(0.3, 6)
    session = SimpleNamespace(accelerator=accelerator, optimizer=optimizer, scheduler=scheduler,
                              steps_per_epoch=steps, classes=["a", "b"], num_classes=2)
    resumed, _, _ = resume(config, checkpoint, changes=[("optim.base_lr", 0.1, 0.3)], session=session,
                           run_dir=tmp_path)
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 2)  # the same batch: the same step
    expected = _cosine_lr(steps + 2, lr=0.3, steps=steps, epochs=6)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2, rel=1e-9)


def test_a_resume_whose_schedule_ends_before_the_checkpoint_is_refused(tmp_path):
    from pipeline.config import resolve_config
    from pipeline.run import check_not_past_the_end

    def config(epochs):
        return resolve_config(config_file=None, overrides=[f"schedule.epochs={epochs}", "schedule.milestones=[]"])

    check_not_past_the_end(config(3), TrainState(epoch=3), checkpoint=tmp_path)  # a finished run: nothing to do
    check_not_past_the_end(config(2), TrainState(epoch=1, step_in_epoch=3), checkpoint=tmp_path)
    with pytest.raises(TrainError, match=r"has trained 3 epochs, past schedule.epochs=2: resume with at least 3 "):
        check_not_past_the_end(config(2), TrainState(epoch=3), checkpoint=tmp_path)
    with pytest.raises(TrainError, match=r"has trained 1 epoch and 3 steps, past schedule.epochs=1: resume with at "
                                         r"least 2 epochs"):
        check_not_past_the_end(config(1), TrainState(epoch=1, step_in_epoch=3), checkpoint=tmp_path)


def test_a_schedule_of_another_shape_is_not_loaded_when_the_settings_changed(tmp_path):
    """Warmup turned on: the checkpoint's scheduler state (no SequentialLR) does not load into the
    new one (KeyError '_schedulers'); with changed settings it is not loaded at all (follow_config
    builds the schedule anew), and loading works again after."""
    from accelerate import Accelerator

    from pipeline.run import schedule_not_loaded

    def prepared(warmup):
        accelerator = Accelerator(cpu=True)
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        scheduler = create_scheduler(optimizer, name="cosine", epochs=4, steps_per_epoch=3, milestones=(),
                                     decay_factor=0.1, warmup_epochs=warmup, warmup_start_factor=0.1, min_lr=0.0)
        return accelerator, *accelerator.prepare(optimizer, scheduler)

    accelerator, _, _ = prepared(0.0)
    accelerator.save_state(str(tmp_path / "ckpt"), safe_serialization=True)
    accelerator, _, scheduler = prepared(1.0)
    with pytest.raises(KeyError, match="_schedulers"):
        accelerator.load_state(str(tmp_path / "ckpt"))
    accelerator, _, scheduler = prepared(1.0)
    with schedule_not_loaded(scheduler, skip=True):
        accelerator.load_state(str(tmp_path / "ckpt"))
    assert "load_state_dict" not in vars(scheduler)  # the method is back
    with pytest.raises(KeyError):
        scheduler.load_state_dict({"last_epoch": 1})


def test_a_metrics_line_cut_short_at_the_end_is_left_out_and_damage_elsewhere_is_one_error(tmp_path):
    """What a kill or a full disk leaves while an epoch's record is written: its last line without
    a newline. Resume (truncate_metrics) and plot read past it; the epoch is trained again."""
    from pipeline.logs import METRICS_FILE, read_metrics, truncate_metrics

    metrics = tmp_path / METRICS_FILE
    metrics.write_text('{"epoch": 1, "train_loss": 2.5}\n{"epoch": 2, "train_loss": 2.0}\n{"epoch": 3, "trai')
    assert read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2, "train_loss": 2.0}]
    truncate_metrics(tmp_path, last_epoch=2)  # a resume from epoch-0002
    assert metrics.read_text() == '{"epoch": 1, "train_loss": 2.5}\n{"epoch": 2, "train_loss": 2.0}\n'
    for text, line in (('{"epoch": 1}\n{"epo\n{"epoch": 3}\n', 2),  # not the last line: damage
                       ('{"epoch": 1}\n{"epoch": 2, "x\n', 2),  # the last one, but whole (its newline is there)
                       ('{"epoch": 1}\n[1, 2]\n', 2)):  # JSON, but no record
        metrics.write_text(text)
        with pytest.raises(TrainError, match=f"^{metrics}: line {line} is not a metrics record"):
            read_metrics(tmp_path)
        truncate_metrics(tmp_path, last_epoch=0)  # run.resume=none: starts over whatever the file holds
        assert metrics.read_text() == ""


def test_tensorboard_events_after_the_resumed_epoch_leave_the_files(tmp_path, capsys):
    """truncate_events: what truncate_metrics does to metrics.jsonl, for RUN/tensorboard. Written
    and read back with TensorBoard's own writer and readers: tags a and b at epochs 1-5, plus the
    hparams of Accelerate's tracker in a subfolder (step 0, kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    from pipeline.logs import truncate_events

    folder = tmp_path / "tensorboard"
    with SummaryWriter(folder) as writer:
        for epoch in range(1, 6):
            writer.add_scalar("a", float(epoch), epoch)
            writer.add_scalar("b", 10.0 * epoch, epoch)
        writer.add_hparams({"lr": 0.1}, {}, run_name="hparams")
    names = sorted(path.relative_to(folder) for path in folder.rglob("events.out.tfevents.*"))
    truncate_events(folder, last_epoch=2)
    assert sorted(path.relative_to(folder) for path in folder.rglob("events.out.tfevents.*")) == names
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".tmp-")) == []
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("a")] == [(1, 1.0), (2, 2.0)]
    assert [(e.step, e.value) for e in events.Scalars("b")] == [(1, 10.0), (2, 20.0)]
    raw = [event.step for path in folder.rglob("events.out.tfevents.*") for event in EventFileLoader(str(path)).Load()
           if event.HasField("summary")]
    assert max(raw) == 2 and 0 in raw  # the hparams stay
    truncate_events(folder, last_epoch=0)  # a fresh start where a first epoch was logged, then killed
    assert all(event.step == 0 for path in folder.rglob("events.out.tfevents.*")
               for event in EventFileLoader(str(path)).Load() if event.HasField("summary"))
    truncate_events(tmp_path / "none", last_epoch=3)  # no folder: nothing to do
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("overrides, words", [
    ({}, "no mixing"),
    ({"label_smoothing": 0.1}, "no mixing, label smoothing 0.1"),
    ({"mode": "cutmix", "prob": 0.5}, "mix cutmix (cutmix_alpha 1, prob 0.5, per batch, partner permutation)"),
    ({"mode": "cutout", "cutout_size": 16, "per": "elem"}, "mix cutout (cutout_size 16, prob 1, per elem)"),
    ({"mode": "mixup", "cutout_size": 8, "mixup_alpha": 0.2, "label_smoothing": 0.1},
     "mix mixup (cutout_size 8, mixup_alpha 0.2, prob 1, per batch, partner permutation), label smoothing 0.1"),
    ({"mode": "cutmix_or_mixup", "mixup_alpha": 0.8, "switch_prob": 0.3, "partner": "flip"},
     "mix cutmix_or_mixup (cutmix_alpha 1, mixup_alpha 0.8, switch_prob 0.3, prob 1, per batch, partner flip)"),
    ({"mode": "manifold_mixup", "feature_layers": ("input", "layer2")},
     "mix manifold_mixup (mixup_alpha 1, prob 1, per batch, partner permutation, feature_layers input,layer2)"),
])
def test_the_start_line_names_the_mixing_and_only_what_its_mode_reads(overrides, words):
    # The demo's prob 0.5 (configs/demo.yaml) was in config.yaml only: mix.mode=mixup over it mixed
    # half the batches without a word (walkthrough).
    from pipeline.config import MixConfig
    from pipeline.run import _mix_words

    assert _mix_words(MixConfig(**overrides)) == words


@pytest.mark.parametrize("environ, setting, precision, device, note", [
    ({}, "auto", "no", "cpu", ""),
    ({"ACCELERATE_MIXED_PRECISION": "no"}, "auto", "bf16", "cuda", ""),  # the launcher's default: no request
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16", "bf16", "cpu", ""),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "no", "no", "cuda", "note: accelerate's mixed precision bf16 "
     "(--mixed_precision or accelerate config) is not used: run.mixed_precision=no decides, no here; give "
     "run.mixed_precision=bf16"),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "auto", "no", "cpu", "note: accelerate's mixed precision bf16 "
     "(--mixed_precision or accelerate config) is not used: run.mixed_precision=auto decides, no here; a CPU "
     "without native bf16 takes minutes per ResNet-50 step in it; run.mixed_precision=bf16 forces it"),
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "auto", "bf16", "cuda", "note: accelerate's mixed precision fp16 "
     "(--mixed_precision or accelerate config) is not used: run.mixed_precision=auto decides, bf16 here; "
     "run.mixed_precision offers auto, bf16 or no"),
])
def test_a_launchers_precision_that_is_not_used_is_said(environ, setting, precision, device, note):
    from pipeline.launcher import ignored_precision

    assert ignored_precision(option="run.mixed_precision", setting=setting, precision=precision, device=device,
                             environ=environ) == note


def test_a_launchers_gradient_accumulation_is_not_taken_and_is_said(monkeypatch, tmp_path):
    # Accelerate reads ACCELERATE_GRADIENT_ACCUMULATION_STEPS (DeepSpeed launches set it) and then
    # divides each loss by it in backward(), while this loop steps at every batch: a smaller lr.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from pipeline.config import resolve_config
    from pipeline.launcher import ignored_accumulation
    from pipeline.run import create_accelerator

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    reset()
    try:
        assert Accelerator(cpu=True).gradient_accumulation_steps == 4  # the hazard, in Accelerate itself
        reset()
        accelerator = create_accelerator(resolve_config(config_file=None, overrides=[]), run_dir=tmp_path)
        assert accelerator.gradient_accumulation_steps == 1
    finally:
        reset()
    assert ignored_accumulation({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}) == (
        "note: accelerate's gradient accumulation (4 steps) is not used: every batch is an update (the global batch "
        "is loader.batch_size x the processes)")
    assert ignored_accumulation({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}) == ignored_accumulation({}) == ""


@pytest.mark.parametrize("overrides, crop_pct", [(["data.crop_pct=0.9"], 0.9),
                                                 (["data.augmentation=cifar", "data.image_size=32"], 1.0)])
def test_the_exported_preprocessing_records_the_crop_evaluation_does(overrides, crop_pct):
    # A CIFAR run's model.json said crop_pct 0.875 (its unread default) while its validation takes
    # the 32 px image whole: a transform built from the record resized 32 -> 37 and cropped.
    from pipeline.config import resolve_config
    from pipeline.run import preprocessing

    assert preprocessing(resolve_config(config_file=None, overrides=overrides))["crop_pct"] == crop_pct


def test_check_under_accelerates_one_process_launcher_counts_one_process(demo_shards, tmp_path):
    # That launcher sets no WORLD_SIZE: --check said "x the processes launched" under it (walkthrough).
    import sys

    from processes import run_process
    from train_helpers import REPO, child_env

    from pipeline.launcher import launcher_process_count

    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
               str(REPO / "pipeline" / "train.py"), "--check", "--config", str(REPO / "configs" / "demo.yaml"),
               "data.demo=false", f"data.shards={demo_shards}", f"run.out_dir={tmp_path / 'run'}"]
    done = run_process(command, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "; starts fresh; global batch 64 on 1 process, peak lr 0.1; run folder" in done.stdout
    assert launcher_process_count({}) is None  # pytest itself: no launcher
    assert launcher_process_count({"WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == 4


def test_a_cifar_checkpoint_is_evaluated_and_recorded_with_the_crop_its_export_records(tmp_path):
    # A checkpoint's preprocessing comes from its config (crop_pct 0.875, unread by cifar): eval.json
    # said 0.875 for the checkpoint and 1.0 for the export of the same model (review).
    from pipeline.evaluate.source import _source

    metadata = {"model_name": "resnet10t", "num_classes": "10"}
    normalization = {"mean": [0.5] * 3, "std": [0.25] * 3}
    for recorded, crop_pct in (({"augmentation": "cifar", "crop_pct": 0.875, "image_size": 32}, 1.0),
                               ({"augmentation": "imagenet", "crop_pct": 0.9, "image_size": 64}, 0.9)):
        source = _source(tmp_path / "model.safetensors", metadata, {**recorded, **normalization}, run_dir=None,
                         shards=None)
        assert source.crop_pct == crop_pct
