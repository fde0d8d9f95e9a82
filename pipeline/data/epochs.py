"""Epoch bookkeeping shared by the loaders: a loader is built once per run and read one epoch
after another, each epoch from its first step or, after a pause (a stop signal, a resume), from
the step where it stopped. ``EpochLoader.iter_epoch(epoch, start_step)`` checks the request
against where the loader stands and leaves the reading to the backend; ``state_dict()`` is where
it stands, and a loader built with ``restore=`` that state stands there too (every backend)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from numbers import Integral

from .checks import LoaderError

STATE_FORMAT = 1  # of state_dict(); a state of another format is not used


@dataclass
class EpochCursor:
    """Where a loader stands. Before its first read any epoch may be asked for (a resumed run
    starts wherever its checkpoint is); after that, epochs come in order."""

    started: bool = False
    next_epoch: int = 0  # the epoch a plain ``iter(loader)`` reads
    open_epoch: int | None = None  # the epoch being read, if a read was left in the middle
    consumed: int = 0  # batches of ``open_epoch`` handed out

    def continues(self, epoch: int, start_step: int) -> bool:
        """Whether reading ``epoch`` from ``start_step`` goes on with the epoch already open."""
        return self.open_epoch == epoch and self.consumed == start_step

    def check(self, epoch: int, start_step: int, *, steps: int) -> None:
        """Raise ValueError unless ``(epoch, start_step)`` continues the open epoch or starts the
        next one (any epoch before the first read)."""
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step must be in [0, {steps}], got {start_step}")
        if not self.started or self.continues(epoch, start_step) or epoch == self.next_epoch:
            return
        raise ValueError(f"epoch {epoch} from step {start_step} asked for, but the loader reads epoch "
                         f"{self.next_epoch} next (open: {self.open_epoch}, step {self.consumed}); "
                         "epochs are read in order")

    def begin(self, epoch: int) -> None:
        """Epoch ``epoch`` starts; the next plain read is ``epoch + 1``."""
        self.started, self.open_epoch, self.consumed, self.next_epoch = True, epoch, 0, epoch + 1

    def close(self) -> None:
        """The open epoch was read to its end."""
        self.open_epoch = None

    def to_dict(self) -> dict:
        return asdict(self)


class EpochLoader:
    """Base of the loaders: ``len()`` is the steps per epoch (the same on every rank),
    ``iter(loader)`` the next epoch, ``iter_epoch(epoch, start_step)`` an explicit position.
    Subclasses implement ``_read(epoch, start_step)``, a generator of that epoch's batches, and
    ``fingerprint()``, the settings a saved state must have been made with; they call
    ``_restore(restore)`` once they can compute their fingerprint."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.cursor = EpochCursor()
        self._restored = False  # a saved position, not yet checked against the first request
        self._reader = 0  # counts the iterators handed out; only the latest one may read

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return self.iter_epoch(self.cursor.next_epoch)

    def iter_epoch(self, epoch: int, start_step: int = 0):
        """Batches ``start_step .. steps-1`` of ``epoch`` (checked now, read lazily). The iterator
        replaces any earlier one: reading an earlier one afterwards raises LoaderError."""
        for name, value in (("epoch", epoch), ("start_step", start_step)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
                raise LoaderError(f"iter_epoch: {name} must be an integer >= 0, got {value!r}")
        epoch, start_step = int(epoch), int(start_step)  # the cursor is saved as JSON: Python ints
        if self._restored:
            self._restored = False
            try:
                self.cursor.check(epoch, start_step, steps=self.steps)
            except ValueError:
                # Nothing is read yet: the loader can start anywhere, as a fresh one. Said where some
                # of the epoch is left to read (an epoch shortened by a resume with changes to the
                # steps already trained reads nothing), in the epochs a user counts (from 1).
                if start_step < self.steps:
                    where = self.cursor
                    stood = (f"in epoch {where.open_epoch + 1} after {where.consumed} "
                             f"step{'' if where.consumed == 1 else 's'}"
                             if where.open_epoch is not None else f"before epoch {where.next_epoch + 1}")
                    warn(f"the saved loader state does not fit where the run goes on (it stood {stood}; the run "
                         f"goes on with epoch {epoch + 1} from step {start_step}); epoch {epoch + 1} is read from "
                         "its seed")
                self._forget_state()
        self.cursor.check(epoch, start_step, steps=self.steps)
        self._reader += 1
        return self._owned(self._reader, self._read(epoch, start_step))

    def _owned(self, reader: int, batches):
        """``batches`` while this iterator is the loader's latest. One loader has one reading
        position (a DALI pipeline, a DataLoader's workers, the cursor): two iterators read in turns
        would each take batches of one stream, and samples would come twice or never, silently."""
        while True:
            if reader != self._reader:
                raise LoaderError("this iterator of the loader was replaced by a later iter() or iter_epoch(): a "
                                  "loader reads one position at a time, so read each epoch through one iterator")
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch

    def _read(self, epoch: int, start_step: int):
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Where the loader stands, as plain JSON values (saved per rank with a checkpoint)."""
        return {"format": STATE_FORMAT, "fingerprint": self.fingerprint(), "cursor": self.cursor.to_dict()}

    def _restore(self, restore: dict | None) -> dict | None:
        """Stand where ``restore`` (a ``state_dict()`` of a loader with these settings) stood and
        return it; None, with a warning, for a state of other settings (the epochs are then read
        from their seeds, as by a fresh loader)."""
        if restore is None or "format" not in restore:
            # None, or a torch-backend position saved before states had a format: the position
            # is asked for with iter_epoch (training does), which a fresh loader reaches by reading.
            return None
        if restore.get("format") != STATE_FORMAT or restore.get("fingerprint") != self.fingerprint():
            theirs = restore.get("fingerprint") or {}
            differ = sorted(k for k, v in self.fingerprint().items() if theirs.get(k) != v) or ["format"]
            if set(differ) <= {"graph", "reads_sizes"}:  # the same settings; the graph of an earlier version
                warn("the saved loader state was made by an earlier version of the DALI loader (its graph has other "
                     "operators since: it reads each image's header before decoding it); the data order restarts "
                     "from the epoch's seed")
            else:
                warn(f"the saved loader state was made with other settings ({', '.join(differ)} differ); "
                     "the data order restarts from the epoch's seed")
            return None
        self.cursor, self._restored = EpochCursor(**restore["cursor"]), True
        return restore

    def _forget_state(self) -> None:
        """Back to a fresh loader's position (a restored state that does not fit the request)."""
        self.cursor = EpochCursor()


def as_saved(values: dict) -> dict:
    """``values`` as they read back from a checkpoint's JSON (lists, not tuples): a fingerprint."""
    return json.loads(json.dumps(values))


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
