"""Every seed of a run derives from ``run.seed`` here, and only here: per epoch, per rank, per
stream of randomness (reader shuffle, augmentation, mixing) and per loader worker. numpy's
SeedSequence mixes the integers, so neighbouring inputs give unrelated seeds; every formula
below is a pure function, so a resumed run derives exactly the seeds an uninterrupted one did.

    epoch_seed(run, epoch)              the seed of one epoch (loaders built at that epoch, mixing)
    stream_seed(seed, rank, stream)     31-bit, for DALI (pipeline: 0, reader: 1) and the synthetic data
    torch_worker_seed(run, rank, epoch, worker)   torch backend: torch's and numpy's RNG in a worker
    generator_seed(seed, rank)          64-bit, for the MixSampler's numpy Generator and evaluation draws
"""

from __future__ import annotations

import numpy as np

# DALI and torch's global RNG take non-negative 31/32-bit seeds; one mask serves both.
_SEED_MASK = 0x7FFFFFFF

# Streams of stream_seed: distinct consumers of one (seed, rank) never share a sequence.
DALI_PIPELINE_STREAM = 0
DALI_READER_STREAM = 1
TORCH_WORKER_STREAM = 2
MODEL_STREAM = 3  # torch's global RNG on each rank after the (shared) initial weights: dropout, drop path
COLOR_STREAM = 4  # the colour augmentation's torch Generator (pipeline/data/color.py)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The seed of one epoch of a run (ranks are mixed in downstream)."""
    return int(np.random.SeedSequence([run_seed, epoch]).generate_state(1)[0] & _SEED_MASK)


def stream_seed(*, seed: int, rank: int, stream: int = 0) -> int:
    """A 31-bit seed per (seed, rank, stream): different randomness on every rank, reproducible."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0] & _SEED_MASK)


def torch_worker_seed(*, run_seed: int, rank: int, epoch: int, worker: int) -> int:
    """The seed of one torch DataLoader worker in one epoch (torchvision draws from torch's
    global RNG, so each worker seeds it). Workers of one epoch get consecutive seeds."""
    base = stream_seed(seed=epoch_seed(run_seed, epoch), rank=rank, stream=TORCH_WORKER_STREAM)
    return base * 64 % 2**31 + worker


def generator_seed(*, seed: int, rank: int) -> int:
    """A 64-bit generator seed (numpy or torch) that differs per rank."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(rank,)).generate_state(1, dtype=np.uint64)[0])
