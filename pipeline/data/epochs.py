"""Epoch bookkeeping shared by the loaders: a loader is built once per run and read one epoch
after another, each epoch from its first step or, after a pause (a stop signal, a resume), from
the step where it stopped. ``EpochLoader.iter_epoch(epoch, start_step)`` checks the request
against where the loader stands and leaves the reading to the backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    Subclasses implement ``_read(epoch, start_step)``, a generator of that epoch's batches."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.cursor = EpochCursor()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return self.iter_epoch(self.cursor.next_epoch)

    def iter_epoch(self, epoch: int, start_step: int = 0):
        """Batches ``start_step .. steps-1`` of ``epoch`` (checked now, read lazily)."""
        self.cursor.check(epoch, start_step, steps=self.steps)
        return self._read(epoch, start_step)

    def _read(self, epoch: int, start_step: int):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Where the loader stands, as plain JSON values (saved per rank with a checkpoint)."""
        return {"cursor": self.cursor.to_dict()}
