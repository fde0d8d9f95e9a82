"""Which samples each rank reads and how many steps an epoch has: pure functions, the same
arithmetic DALI's ``fn.readers.webdataset(shard_id, num_shards)`` uses (contiguous ranges of
the global sample order), so every backend agrees on it and it can be tested without a reader."""

from __future__ import annotations


def rank_range(*, num_samples: int, part: int, num_parts: int) -> tuple[int, int]:
    """Global sample positions ``[begin, end)`` of part ``part`` of ``num_parts`` (DALI's split)."""
    return num_samples * part // num_parts, num_samples * (part + 1) // num_parts


def epoch_part(*, rank: int, world_size: int, epoch: int, stick_to_shard: bool) -> int:
    """The part a rank reads in an epoch: DALI moves every rank one part on per epoch unless
    ``stick_to_shard``, so over ``world_size`` epochs each rank sees all the data."""
    return rank if stick_to_shard else (rank + epoch) % world_size


def part_sizes(*, num_samples: int, world_size: int) -> list[int]:
    """Samples in each of the ``world_size`` parts (they differ by at most one)."""
    return [end - begin for begin, end in
            (rank_range(num_samples=num_samples, part=p, num_parts=world_size) for p in range(world_size))]


def train_steps(*, num_samples: int, world_size: int, batch_size: int) -> int:
    """Full batches per epoch, the same on every rank whatever part it reads: the smallest part
    decides, and the rest of each part (fewer than ``batch_size + 1`` samples) is dropped."""
    return min(part_sizes(num_samples=num_samples, world_size=world_size)) // batch_size


def val_steps(*, num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches per evaluation, the same on every rank: enough for the largest part; smaller parts
    are padded with samples marked invalid (label -1)."""
    return -(-max(part_sizes(num_samples=num_samples, world_size=world_size)) // batch_size)


def reader_batches(*, part_samples: int, batch_size: int) -> int:
    """Batches DALI's reader (with ``pad_last_batch``) returns for one pass over a part."""
    return -(-part_samples // batch_size)
