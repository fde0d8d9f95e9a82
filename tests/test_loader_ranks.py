"""Two ranks simulated in one process (two loaders): coverage, disjointness, val exactly once,
labels, equal steps, per-rank randomness and reproducibility, for the DALI and torch backends.
References: the manifest's class list (wnid folder of each sample's source) and the webdataset
library reading the same shards."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from loader_fixtures import NUM_CLASSES, PER_CLASS, make_labelled_shards, open_loader
from pipeline.data import LoaderError, steps_per_epoch
from shard_readers import manifest, read_with_webdataset

BACKENDS = ["dali", "torch"]
WORLD = 2
BATCH = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("loader"))


def run_epochs(shards, split, backend, *, epochs=1, rank, seed=0, training=None, **options):
    loader, steps = open_loader(shards, split, batch_size=BATCH, rank=rank, world_size=WORLD, seed=seed,
                                backend=backend, training=training, sample_ids=True, **options)
    assert len(loader) == steps
    results = []
    for _ in range(epochs):
        batches = list(loader)
        assert len(batches) == steps
        results.append(batches)
    return steps, results


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epochs_are_disjoint_across_ranks_and_cover_all_but_the_remainder(shards, backend):
    total = len(read_with_webdataset(shards, "train"))
    assert total == NUM_CLASSES * PER_CLASS and total % WORLD == 1  # uneven on purpose
    per_rank = [run_epochs(shards, "train", backend, epochs=2, rank=r) for r in range(WORLD)]
    steps = {s for s, _ in per_rank}
    assert steps == {(total // WORLD) // BATCH}  # equal on every rank, full batches only
    for epoch in range(2):
        seen = [sid for _, epochs in per_rank for images, labels, ids in epochs[epoch] for sid in ids]
        for _, epochs in per_rank:
            for images, labels, ids in epochs[epoch]:
                assert images.shape == (BATCH, 32, 32, 3) and images.dtype == torch.uint8
                assert labels.dtype == torch.int64 and len(ids) == BATCH
        assert len(seen) == len(set(seen)), "a sample was seen twice in one epoch"
        dropped = total - len(seen)
        assert 0 <= dropped < WORLD * (BATCH + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_ranks_swap_parts_between_epochs(shards, backend):
    _, epochs = run_epochs(shards, "train", backend, epochs=2, rank=0)
    first, second = ({sid for _, _, ids in batches for sid in ids} for batches in epochs)
    assert not first & second  # rank 0 reads the other half of the data in epoch 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_left_early_does_not_change_the_next_one(shards, backend):
    # The next epoch is the one a loader started at that epoch reads: for torch that is also the
    # straight read's (every epoch is seeded afresh); DALI builds its pipeline anew for an epoch
    # that follows one cut short (tests/test_loader_epochs.py has the straight-read case).
    def loader():
        return open_loader(shards, "train", batch_size=BATCH, rank=0, world_size=WORLD, seed=4, backend=backend,
                           sample_ids=True)[0]

    reference = list(loader().iter_epoch(1))
    if backend == "torch":
        straight = loader()
        list(straight.iter_epoch(0))
        assert _same(list(straight.iter_epoch(1)), reference)
    left = loader()
    for _ in zip(range(1), left):  # leave the first epoch after one batch
        pass
    assert _same(list(left), reference)


def _same(a, b) -> bool:
    return [ids for _, _, ids in a] == [ids for _, _, ids in b] and all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_counts_every_sample_exactly_once(shards, backend):
    reference = {s["json"]["source"]: s["cls"] for s in read_with_webdataset(shards, "val")}
    counted, steps_seen = Counter(), set()
    for rank in range(WORLD):
        steps, (batches,) = run_epochs(shards, "val", backend, rank=rank)
        steps_seen.add(steps)
        for images, labels, ids in batches:
            for label, sid in zip(labels.tolist(), ids):
                if label >= 0:  # -1 marks padding duplicates
                    counted[sid] += 1
                    assert label == reference[sid]
    assert len(steps_seen) == 1
    assert counted == Counter({sid: 1 for sid in reference})


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_padding_happens_and_is_marked(shards, backend):
    # 117 samples over 2 ranks with batch 8: 58 and 59 samples, 8 batches each: 64 - 58 and 64 - 59 pads.
    for rank, size in enumerate((58, 59)):
        _, (batches,) = run_epochs(shards, "val", backend, rank=rank)
        labels = torch.cat([b[1] for b in batches])
        assert int((labels == -1).sum()) == len(batches) * BATCH - size


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_match_the_manifest_classes_including_multi_digit(shards, backend):
    classes = manifest(shards, "train")["classes"]
    labels_seen = set()
    for rank in range(WORLD):
        _, (batches,) = run_epochs(shards, "train", backend, rank=rank)
        for _, labels, ids in batches:
            for label, sid in zip(labels.tolist(), ids):
                assert label == classes.index(sid.split("/")[0]), sid
                labels_seen.add(label)
    assert max(labels_seen) >= 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_output_is_deterministic_and_the_same_across_seeds(shards, backend):
    _, (a,) = run_epochs(shards, "val", backend, rank=0, seed=1)
    _, (b,) = run_epochs(shards, "val", backend, rank=0, seed=2)
    assert all(torch.equal(x[0], y[0]) and x[2] == y[2] for x, y in zip(a, b))


def test_dali_and_torch_read_the_same_parts(shards):
    for rank in range(WORLD):
        parts = []
        for backend in BACKENDS:
            _, (batches,) = run_epochs(shards, "val", backend, rank=rank)
            parts.append({sid for _, labels, ids in batches for sid, l in zip(ids, labels.tolist()) if l >= 0})
        assert parts[0] == parts[1]


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
@pytest.mark.parametrize("split, world_size, batch", [("train", 2, 8), ("train", 3, 5), ("val", 2, 8), ("val", 3, 7)])
def test_steps_per_epoch_without_a_loader_equals_the_loaders_count(shards, backend, split, world_size, batch):
    _, steps = open_loader(shards, split, batch_size=batch, world_size=world_size, backend=backend)
    assert steps_per_epoch(shards, split, batch_size=batch, world_size=world_size, backend=backend) == steps
    with pytest.raises(LoaderError, match="larger than a rank's share"):
        steps_per_epoch(shards, split, batch_size=100, world_size=world_size, backend=backend)


def test_synthetic_batches_have_the_real_shape_and_epoch_length(shards):
    loader, steps = open_loader(shards, "train", batch_size=BATCH, rank=1, world_size=WORLD, backend="synthetic")
    batches = list(loader)
    assert steps == len(batches) == 58 // BATCH
    images, labels = batches[0]
    assert images.shape == (BATCH, 32, 32, 3) and images.dtype == torch.uint8
    assert 0 <= int(labels.min()) and int(labels.max()) < NUM_CLASSES
    assert len(list(loader.iter_epoch(1, 2))) == steps - 2
