"""Pure sharding arithmetic and label parsing, against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.labels import parse_ascii_labels
from pipeline.data.labels import check_label_range
from pipeline.data.checks import LoaderError
from pipeline.data.sharding import epoch_part, part_sizes, rank_range, reader_batches, train_steps, val_steps
from pipeline.seeds import epoch_seed, generator_seed, stream_seed, torch_worker_seed
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


def test_train_steps_are_the_full_batches_of_the_smallest_part():
    """Every rank runs the same number of full batches, which only the smallest part always holds:
    against DALI's split of N samples into W contiguous parts ([i*N//W, (i+1)*N//W)), counted by hand."""
    for num_samples in range(1, 120):
        for world_size in range(1, 9):
            sizes = [(i + 1) * num_samples // world_size - i * num_samples // world_size for i in range(world_size)]
            for batch in range(1, max(sizes) + 2):
                steps = train_steps(num_samples=num_samples, world_size=world_size, batch_size=batch)
                assert steps == min(sizes) // batch, (num_samples, world_size, batch)
                assert all(steps * batch <= size for size in sizes)


def test_val_steps_cover_the_largest_part_and_the_reader_never_runs_past_them():
    for num_samples, world_size, batch in ((117, 2, 8), (117, 3, 7), (1281167, 8, 250), (9, 3, 4)):
        steps = val_steps(num_samples=num_samples, world_size=world_size, batch_size=batch)
        sizes = part_sizes(num_samples=num_samples, world_size=world_size)
        assert (steps - 1) * batch < max(sizes) <= steps * batch  # the fewest batches that hold every part
        assert all(reader_batches(part_samples=size, batch_size=batch) <= steps for size in sizes)


def test_a_whole_train_epoch_leaves_at_most_one_reader_batch_of_any_part():
    from pipeline.data.dali import DRAIN_LIMIT

    most = 0
    for num_samples in range(1, 300):
        for world_size in range(1, 9):
            sizes = part_sizes(num_samples=num_samples, world_size=world_size)
            for batch in range(1, min(sizes) + 1):
                steps = train_steps(num_samples=num_samples, world_size=world_size, batch_size=batch)
                most = max(most, *(-(-size // batch) - steps for size in sizes))  # ceil: DALI pads the part
    assert most == DRAIN_LIMIT == 1


def test_epoch_part_rotates_through_all_parts():
    seen = {epoch_part(rank=1, world_size=4, epoch=e, stick_to_shard=False) for e in range(4)}
    assert seen == {0, 1, 2, 3}
    assert {epoch_part(rank=1, world_size=4, epoch=e, stick_to_shard=True) for e in range(4)} == {1}


def test_seeds_differ_per_rank_stream_epoch_and_worker_and_repeat():
    for derive in (lambda s, r: stream_seed(seed=s, rank=r), lambda s, r: stream_seed(seed=s, rank=0, stream=r),
                   lambda s, r: generator_seed(seed=s, rank=r), epoch_seed,
                   lambda s, r: torch_worker_seed(run_seed=s, rank=0, epoch=r, worker=0),
                   lambda s, r: torch_worker_seed(run_seed=s, rank=0, epoch=0, worker=r)):
        seeds = [derive(0, r) for r in range(8)]
        assert len(set(seeds)) == 8 and seeds == [derive(0, r) for r in range(8)]
        assert derive(1, 0) != seeds[0]
    # DALI and torch.manual_seed take 31-bit seeds; the generator's is 64-bit.
    assert all(0 <= stream_seed(seed=s, rank=r) < 2**31 for s in range(20) for r in range(4))
    assert all(0 <= torch_worker_seed(run_seed=s, rank=1, epoch=2, worker=63) < 2**31 for s in range(20))


def test_seed_formulas_are_unchanged():
    # Runs repeat across versions only if these stay put: the values were computed by hand with
    # numpy's SeedSequence (mask 0x7FFFFFFF for the 31-bit ones).
    import numpy as np

    assert epoch_seed(0, 3) == int(np.random.SeedSequence([0, 3]).generate_state(1)[0] & 0x7FFFFFFF)
    assert stream_seed(seed=5, rank=2, stream=1) == int(
        np.random.SeedSequence([5, 2, 1]).generate_state(1)[0] & 0x7FFFFFFF)
    assert generator_seed(seed=5, rank=2) == int(
        np.random.SeedSequence(entropy=5, spawn_key=(2,)).generate_state(1, dtype=np.uint64)[0])


def test_label_range_is_checked_on_the_host():
    check_label_range(np.array([0, 9, 3]), num_classes=10, allow_padding=False)
    check_label_range(np.array([0, -1, -1]), num_classes=10, allow_padding=True)
    for labels, padding in (([0, 10], False), ([-1, 2], False), ([-2, 1], True), ([12, -1], True)):
        with pytest.raises(LoaderError, match=r"outside \[0, 10\)"):
            check_label_range(np.array(labels), num_classes=10, allow_padding=padding)


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
