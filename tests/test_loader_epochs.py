"""One loader per run: epochs read in order, a position saved with ``state_dict()`` and restored
in a new loader (a resumed run) gives exactly the batches the first loader goes on to give, and
a loader started at a later epoch reads that epoch's part. The reference is always the same
loader class read straight through (sample ids and pixels compared)."""

from __future__ import annotations

import json

import pytest
import torch

from loader_fixtures import make_labelled_shards, open_loader
from pipeline.data import LoaderError

BACKENDS = ["dali", "torch"]
BATCH = 8
WORLD = 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("epochs"))


def loader_of(shards, backend, *, restore=None, seed=7):
    return open_loader(shards, "train", batch_size=BATCH, rank=1, world_size=WORLD, seed=seed, backend=backend,
                       sample_ids=True, restore=restore, random_area=(0.3, 1.0))[0]


def same(a, b) -> bool:
    """Two lists of batches hold the same samples in the same order with the same pixels."""
    return len(a) == len(b) and all(x[2] == y[2] and torch.equal(x[0], y[0]) for x, y in zip(a, b))


def through_json(state: dict) -> dict:
    return json.loads(json.dumps(state))  # as a checkpoint stores it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stop_at", [3, 7])  # mid-epoch, and the last step of the epoch (7 = 58 // 8)
def test_a_restored_loader_goes_on_exactly_where_the_first_one_was(shards, backend, stop_at):
    first = loader_of(shards, backend)
    steps = len(first)
    epoch0 = first.iter_epoch(0)
    head = [next(epoch0) for _ in range(stop_at)]
    state = through_json(first.state_dict())
    tail = list(epoch0)
    epoch1 = list(first.iter_epoch(1))
    assert len(head) + len(tail) == steps == 7

    again = loader_of(shards, backend, restore=state)
    assert same(list(again.iter_epoch(0, stop_at)), tail)
    assert same(list(again.iter_epoch(1)), epoch1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restored_loaders_plain_iter_reads_what_the_first_ones_would(shards, backend):
    """The README's loop: ``for batch in loader`` over a restored loader reads the epoch the
    saved loader's next ``iter()`` reads (the next one: the epoch left is left), and the rest of
    the left epoch is still there to ask for, as it was for the saved loader."""
    first = loader_of(shards, backend)
    epoch0 = first.iter_epoch(0)
    head = [next(epoch0) for _ in range(3)]
    state = through_json(first.state_dict())
    epoch1 = list(first)  # epoch 0 left after 3 steps
    assert len(epoch1) == len(first)
    assert same(list(loader_of(shards, backend, restore=state)), epoch1)
    rest = list(loader_of(shards, backend, restore=state).iter_epoch(0, 3))
    assert same(head + rest, list(loader_of(shards, backend).iter_epoch(0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restored_state_that_does_not_fit_the_first_request_is_dropped_with_a_warning(shards, backend, capfd):
    """A state that stands in epoch 0 asked for epoch 3 (a checkpoint of another point): the
    loader has read nothing yet, so it reads epoch 3 from its seed, as a fresh loader would."""
    first = loader_of(shards, backend)
    next(first.iter_epoch(0))
    state = through_json(first.state_dict())
    capfd.readouterr()
    reference = list(loader_of(shards, backend).iter_epoch(3))
    assert same(list(loader_of(shards, backend, restore=state).iter_epoch(3)), reference)
    # In the epochs a user counts: the state stood in the first epoch, the run goes on with the fourth.
    assert ("warning: the saved loader state does not fit where the run goes on (it stood in epoch 1 after 1 step; "
            "the run goes on with epoch 4 from step 0); epoch 4 is read from its seed\n") in capfd.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restored_state_asked_for_an_epoch_with_nothing_left_says_nothing(shards, backend, capfd):
    """A resume with changes that shortened the epochs below the steps the checkpoint had trained
    in its epoch: the run asks for that epoch from its (new) last step, nothing is read, and the
    state's misfit is no news (it warned of an epoch read from its seed; walkthrough)."""
    first = loader_of(shards, backend)
    epoch0 = first.iter_epoch(0)
    for _ in range(len(first)):
        next(epoch0)
    state = through_json(first.state_dict())  # after every step of epoch 0, the epoch still open
    state["cursor"]["consumed"] += 1  # as a longer epoch's state stands one step past this epoch's end
    capfd.readouterr()
    again = loader_of(shards, backend, restore=state)
    assert list(again.iter_epoch(0, len(again))) == []
    assert "warning" not in capfd.readouterr().err


def test_a_restored_synthetic_loader_stands_where_the_first_one_stood(shards):
    first = open_loader(shards, "train", batch_size=BATCH, world_size=WORLD, backend="synthetic")[0]
    epoch2 = first.iter_epoch(2)
    next(epoch2)
    state = through_json(first.state_dict())
    again = open_loader(shards, "train", batch_size=BATCH, world_size=WORLD, backend="synthetic", restore=state)[0]
    assert (again.cursor.open_epoch, again.cursor.consumed, again.cursor.next_epoch) == (2, 1, 3)
    assert len(list(again.iter_epoch(2, 1))) == len(again) - 1
    with pytest.raises(ValueError, match="epochs are read in order"):
        again.iter_epoch(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_saved_after_a_capped_epoch_resumes_at_the_next_epoch(shards, backend):
    # run.max_train_steps: training leaves each epoch after a few steps; the next epoch must be
    # the one an uninterrupted loader reads (DALI runs the rest of the pass first).
    first = loader_of(shards, backend)
    for _ in zip(range(2), first.iter_epoch(0)):
        pass
    state = through_json(first.state_dict())
    reference = list(first.iter_epoch(1))
    assert same(list(loader_of(shards, backend, restore=state).iter_epoch(1)), reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loader_started_at_a_later_epoch_reads_that_epochs_part(shards, backend):
    straight = loader_of(shards, backend)
    list(straight.iter_epoch(0))
    reference = list(straight.iter_epoch(1))
    late = list(loader_of(shards, backend).iter_epoch(1))
    ids = [{sid for batch in batches for sid in batch[2]} for batches in (reference, late)]
    # Rank 1 reads part 0 in epoch 1 (the parts rotate): the same samples, minus what each drops.
    assert len(ids[0] & ids[1]) > 0.8 * len(ids[0])
    if backend == "torch":  # every epoch's randomness is a function of (seed, rank, epoch, worker)
        assert same(late, reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fresh_loader_resumed_mid_epoch_skips_the_steps_already_trained(shards, backend):
    reference = list(loader_of(shards, backend).iter_epoch(0))
    assert same(list(loader_of(shards, backend).iter_epoch(0, 4)), reference[4:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_of_other_settings_is_not_used(shards, capfd, backend):
    first = loader_of(shards, backend, seed=7)
    next(first.iter_epoch(0))
    state = through_json(first.state_dict())
    reference = list(loader_of(shards, backend, seed=8).iter_epoch(0))
    capfd.readouterr()
    other = loader_of(shards, backend, seed=8, restore=state)
    assert same(list(other.iter_epoch(0)), reference)  # read from its own seed, from the start
    assert "other settings (seed differ)" in capfd.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_epochs_are_read_in_order(shards, backend):
    loader = open_loader(shards, "train", batch_size=BATCH, world_size=WORLD, backend=backend)[0]
    list(loader.iter_epoch(2))  # the first read may start anywhere (a resumed run)
    with pytest.raises(ValueError, match="epochs are read in order"):
        loader.iter_epoch(1)
    with pytest.raises(ValueError, match="epochs are read in order"):
        loader.iter_epoch(2)  # read already
    with pytest.raises(ValueError, match="epochs are read in order"):
        loader.iter_epoch(4)  # epoch 3 would be skipped
    assert len(list(iter(loader))) == len(loader)  # a plain iter() reads epoch 3
    with pytest.raises(ValueError, match="start_step must be in"):
        loader.iter_epoch(4, len(loader) + 1)


def test_an_epoch_cut_short_is_not_decoded_to_its_end(shards, monkeypatch):
    # run.max_train_steps: 2 of 7 steps used; the next epoch starts from a pipeline built for it
    # (its seed, its part), not after running the 5 unused batches of the pass.
    from pipeline.data.dali import DaliLoader

    runs = []
    original = DaliLoader._run
    monkeypatch.setattr(DaliLoader, "_run", lambda self: runs.append(1) or original(self))
    loader = loader_of(shards, "dali")
    for _ in zip(range(2), loader.iter_epoch(0)):
        pass
    second = list(loader.iter_epoch(1))
    assert len(runs) == 2 + 8  # epoch 1: 7 steps + the 1 padded batch of its pass, run to reach the next
    assert same(second, list(loader_of(shards, "dali").iter_epoch(1)))  # = a loader started at epoch 1


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_an_iterator_replaced_by_a_later_one_refuses_to_read(shards, backend):
    # Two iterators of one loader share its one position: read in turns, each took part of the same
    # stream, and samples came twice or never (both made before the first read passed every check).
    reference = list(loader_of(shards, backend).iter_epoch(0)) if backend != "synthetic" else None
    loader = open_loader(shards, "train", batch_size=BATCH, rank=1, world_size=WORLD, seed=7, backend=backend,
                         sample_ids=backend != "synthetic", random_area=(0.3, 1.0))[0]
    first, second = iter(loader), iter(loader)
    with pytest.raises(LoaderError, match=r"replaced by a later iter\(\) or iter_epoch\(\)"):
        next(first)
    batches = list(second)
    assert len(batches) == len(loader)
    if reference is not None:
        assert same(batches, reference)  # the latest iterator reads the epoch whole, in order
    # One left in the middle of an epoch: the next epoch's iterator replaces it.
    middle = iter(loader)
    next(middle)
    following = loader.iter_epoch(2)
    with pytest.raises(LoaderError, match="replaced"):
        next(middle)
    assert len(list(following)) == len(loader)


@pytest.mark.parametrize("epoch, start_step", [(-1, 0), (1.0, 0), (0, -2), (0, "3"), (True, 0)])
def test_iter_epoch_takes_integer_positions(shards, epoch, start_step):
    loader = open_loader(shards, "train", batch_size=BATCH, world_size=WORLD, backend="synthetic")[0]
    with pytest.raises(LoaderError, match=r"iter_epoch: (epoch|start_step) must be an integer >= 0"):
        loader.iter_epoch(epoch, start_step)
