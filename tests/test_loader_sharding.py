"""Pure sharding arithmetic and label parsing, against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.labels import parse_ascii_labels
from pipeline.data.sharding import (derive_seed, epoch_part, part_sizes, rank_range, reader_batches, train_steps,
                                    val_steps, valid_in_batch)
from pipeline.data.torch_backend import worker_plan


@pytest.mark.parametrize("num_samples,world_size", [
    (n, w) for n in (1, 7, 100, 117, 1281167) for w in (1, 2, 3, 8) if n >= w  # a rank needs a sample
])
def test_parts_tile_the_dataset_in_order(num_samples, world_size):
    ranges = [rank_range(num_samples=num_samples, part=p, num_parts=world_size) for p in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_samples
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = part_sizes(num_samples=num_samples, world_size=world_size)
    assert max(sizes) - min(sizes) <= 1


def test_steps_are_equal_and_full_batches_for_every_part_and_epoch():
    num_samples, world_size, batch = 117, 2, 8
    steps = train_steps(num_samples=num_samples, world_size=world_size, batch_size=batch)
    for epoch in range(3):
        for rank in range(world_size):
            part = epoch_part(rank=rank, world_size=world_size, epoch=epoch, stick_to_shard=False)
            size = part_sizes(num_samples=num_samples, world_size=world_size)[part]
            assert steps * batch <= size < (steps + 1) * batch + 1
    assert steps == 58 // 8


def test_val_padding_marks_exactly_the_extra_positions():
    num_samples, world_size, batch = 117, 2, 8
    steps = val_steps(num_samples=num_samples, world_size=world_size, batch_size=batch)
    total_valid = 0
    for rank in range(world_size):
        size = part_sizes(num_samples=num_samples, world_size=world_size)[rank]
        assert reader_batches(part_samples=size, batch_size=batch) <= steps
        total_valid += sum(sum(valid_in_batch(step=s, batch_size=batch, part_samples=size)) for s in range(steps))
    assert total_valid == num_samples


def test_epoch_part_rotates_through_all_parts():
    seen = {epoch_part(rank=1, world_size=4, epoch=e, stick_to_shard=False) for e in range(4)}
    assert seen == {0, 1, 2, 3}
    assert {epoch_part(rank=1, world_size=4, epoch=e, stick_to_shard=True) for e in range(4)} == {1}


def test_seeds_differ_per_rank_and_repeat():
    seeds = [derive_seed(seed=0, rank=r) for r in range(8)]
    assert len(set(seeds)) == 8 and seeds == [derive_seed(seed=0, rank=r) for r in range(8)]
    assert derive_seed(seed=1, rank=0) != seeds[0]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_worker_plan_covers_the_part_with_the_right_batches(training, workers):
    begin, end, batch = 58, 117, 8
    steps = (end - begin) // batch if training else -(-(end - begin) // batch)
    plan = worker_plan(begin=begin, end=end, steps=steps, batch_size=batch, num_workers=workers, training=training)
    assert plan[0][0] == begin and plan[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    assert sum(p[2] for p in plan) == steps
    for first, stop, batches in plan:
        assert stop - first >= batches * batch or not training


def test_labels_parse_like_python_int_for_every_width():
    rng = np.random.default_rng(0)
    values = list(rng.integers(0, 22000, size=200)) + [0, 9, 10, 99, 100, 999, 21840]
    texts = [str(v).encode() for v in values]
    width = max(map(len, texts))
    padded = np.zeros((len(texts), width + 2), dtype=np.uint8)
    for row, text in enumerate(texts):
        padded[row, :len(text)] = np.frombuffer(text, dtype=np.uint8)
    assert parse_ascii_labels(padded).tolist() == [int(t.decode()) for t in texts]


@pytest.mark.parametrize("text", [b"4a", b"-3", b" 7", b""])
def test_labels_that_are_not_decimal_text_are_rejected(text):
    padded = np.zeros((2, 4), dtype=np.uint8)
    padded[0, :1] = ord("5")
    padded[1, :len(text)] = np.frombuffer(text, dtype=np.uint8) if text else []
    with pytest.raises(ValueError):
        parse_ascii_labels(padded)
