"""No host sync in the training hot loop: the real run (pipeline.run.run_training, demo at
reduced size) with its epochs and evaluations watched by tests/sync_counter.py. Training steps
read no device value (the loader checks labels on the host, the loss is shown from an
asynchronous copy, the stop flag is agreed on CPU); an evaluation reads its results once,
however many batches it has. On a GPU, 20 steps run under torch.cuda.set_sync_debug_mode("error")."""

from __future__ import annotations

import functools

import pytest
import torch
from sync_counter import SyncCounter
from train_helpers import DEMO_CONFIG

import pipeline.run as run
import pipeline.training as training
from pipeline.config import resolve_config


def test_the_counter_sees_the_syncs_it_is_meant_to_see():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        counter.mark(x)
        y = x * 2
        y[y > 4]  # boolean-mask indexing: its size is data
        float(y.sum())
        bool((y > 1).any())
        y.tolist()
        host = torch.empty(6)
        host.copy_(y, non_blocking=True)  # the asynchronous hand-off: not a sync...
        float(host.sum())  # ...and host memory is not device data
        torch.ones(3).sum().item()  # neither is what was never marked
    assert [name for name, _ in counter.syncs] == ["aten::index", "aten::_local_scalar_dense",
                                                   "aten::_local_scalar_dense", "Tensor.tolist"]


def run_watched(monkeypatch, shards, out, *overrides):
    """run_training with every train epoch and evaluation watched; [(steps, syncs)], [syncs]."""
    epochs, evaluations = [], []
    train_one_epoch, evaluate = run.train_one_epoch, run.evaluate

    def watched_epoch(**kwargs):
        counter = SyncCounter()
        model, batches = kwargs["model"], kwargs["batches"]

        def marked():
            for batch in batches:
                counter.mark(*batch[:2])
                yield batch

        with counter:
            counter.mark(*model.parameters(), *model.buffers())
            result = train_one_epoch(**{**kwargs, "batches": marked()})
        epochs.append((result.steps, counter.syncs))
        return result

    def watched_evaluate(model, loader, **kwargs):
        counter = SyncCounter()

        class Marked:
            def __iter__(self):
                for batch in loader:
                    counter.mark(*batch[:2])
                    yield batch

        with counter:
            counter.mark(*model.parameters(), *model.buffers())
            record = evaluate(model, Marked(), **kwargs)
        evaluations.append(counter.syncs)
        return record

    monkeypatch.setattr(run, "train_one_epoch", watched_epoch)
    monkeypatch.setattr(run, "evaluate", watched_evaluate)
    config = resolve_config(config_file=DEMO_CONFIG, overrides=[
        f"data.shards={shards}", "data.demo=false", f"run.out_dir={out}", "run.progress=false",
        "loader.num_threads=1", "schedule.epochs=2", "run.max_train_steps=3", "loader.batch_size=32",
        "run.log_every=1", *overrides])  # log_every=1: the progress bar's loss is read every step
    run.run_training(config)
    return epochs, evaluations


@pytest.mark.slow
def test_training_steps_and_evaluations_do_not_wait_for_the_device(monkeypatch, demo_shards, tmp_path):
    # With the ImageNet recipe's colour (its maps are made from each batch on the device).
    epochs, evaluations = run_watched(monkeypatch, demo_shards, tmp_path / "a", "loader.val_batch_size=40",
                                      "data.color_jitter=0.4", "data.lighting_std=0.1")
    assert [steps for steps, _ in epochs] == [3, 3]
    assert all(syncs == [] for _, syncs in epochs), epochs
    # 359 val samples in 9 batches: the results are read once (the counts, the loss sum).
    assert [len(syncs) for syncs in evaluations] == [2, 2], evaluations
    assert all(place.startswith("pipeline/evaluate/classify.py") for syncs in evaluations for _, place in syncs)

    # The control: with apply_mix's label check on (labels.min()/max(), two reads a step) the
    # counter finds them; and a 2-batch evaluation reads as often as the 9-batch one.
    monkeypatch.setattr(training, "apply_mix", functools.partial(_apply_mix_checking_labels, training.apply_mix))
    epochs, fewer_batches = run_watched(monkeypatch, demo_shards, tmp_path / "b", "loader.val_batch_size=180")
    assert [len(syncs) for _, syncs in epochs] == [6, 6], epochs
    assert all(place.startswith("pipeline/mix/core.py") for _, syncs in epochs for _, place in syncs)
    assert [len(syncs) for syncs in fewer_batches] == [2, 2]


def _apply_mix_checking_labels(apply_mix, *args, **kwargs):
    return apply_mix(*args, **{**kwargs, "check_labels": True})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU count above stands in)")
@pytest.mark.parametrize("mix", [[], ["mix.mode=feature_cutmix", "mix.feature_layers=[layer1,layer2]"],
                                 ["mix.mode=mixup", "mix.cutout_size=8"],
                                 ["data.color_jitter=0.4", "data.lighting_std=0.1"]],
                         ids=["cutmix", "feature_cutmix", "cutout_mixup", "cutmix_colour"])
def test_twenty_cuda_steps_under_sync_debug_mode_error(monkeypatch, demo_shards, tmp_path, mix):
    train_one_epoch = run.train_one_epoch

    def strict_epoch(**kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_one_epoch(**kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(run, "train_one_epoch", strict_epoch)
    config = resolve_config(config_file=DEMO_CONFIG, overrides=[
        f"data.shards={demo_shards}", "data.demo=false", f"run.out_dir={tmp_path}", "run.progress=true",
        "schedule.epochs=1", "run.max_train_steps=20", "loader.batch_size=32", "run.log_every=1", *mix])
    record = run.run_training(config)
    assert record["global_step"] == 20
