"""What people see: a tqdm bar on the main process, one JSON line of metrics per epoch
(``RUN/metrics.jsonl``), and Accelerate's trackers (TensorBoard) when asked."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import TrainError

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path, *, remedy: str = "mend or remove that line (run.resume=none starts over)"
                 ) -> list[dict]:
    """Every epoch's record of a run, in order. A last line cut short (a kill or a full disk while
    it was written: no newline after it) is left out: its epoch's checkpoint comes after it, so a
    resume trains that epoch again and writes it anew. Any other line that is not a record is a
    TrainError naming the file and the line, then ``remedy`` (the default is the training's: a
    plot's reader is not helped by starting the run over)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")  # ends with "" when the last record has its newline
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise TrainError(f"{path}: line {number} is not a metrics record ({error.msg}): {line[:80]!r}; "
                             f"{remedy}") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise TrainError(f"{path}: line {number} is not a metrics record (no epoch): {line[:80]!r}; "
                             f"{remedy}")
        records.append(record)
    return records


def truncate_metrics(run_dir: Path, *, last_epoch: int) -> None:
    """Drop records after ``last_epoch``: a resumed run re-runs them and writes them again. A fresh
    start (0) reads nothing: a damaged file must not stop a run that starts over."""
    path = Path(run_dir) / METRICS_FILE
    kept = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch] if last_epoch > 0 else []
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def truncate_events(folder: Path, *, last_epoch: int) -> None:
    """``truncate_metrics`` for TensorBoard (``RUN/tensorboard``, whose steps are epochs): every
    summary logged for an epoch after ``last_epoch`` is dropped from the event files (each file
    rewritten with TensorBoard's own writer and renamed over itself). Left there, an epoch logged
    and then killed before its checkpoint, or the epochs a branch replaces, were drawn beside the
    new ones. A writer's ``purge_step`` hides them only from TensorBoard's Python reader: its
    default fast loader ignores it and went on drawing every tag not logged again (review)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    try:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:  # without tensorboard nothing here wrote events
        return
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        try:
            events = list(LegacyEventFileLoader(str(path)).Load())  # as written: no conversion
        except Exception as error:  # noqa: BLE001 - damage of any kind is TensorBoard's to show; the run goes on
            print(f"warning: {path}: not read ({type(error).__name__}), so its events after epoch {last_epoch} "
                  "stay", flush=True)
            continue
        kept = [event for event in events if not (event.HasField("summary") and event.step > last_epoch)]
        if len(kept) == len(events):
            continue
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as temporary:
            writer = EventFileWriter(temporary)  # writes its own file_version event first
            for event in kept:
                if not event.HasField("file_version"):
                    writer.add_event(event)
            writer.close()
            (written,) = Path(temporary).glob("events.out.tfevents.*")
            os.replace(written, path)  # its name kept: TensorBoard reads a folder's files in name order


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one epoch's record (flushed at once: a later kill does not lose it)."""
    with open(Path(run_dir) / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class Progress:
    """A tqdm bar per epoch on the main process only; the other ranks get a no-op."""

    def __init__(self, *, enabled: bool, total: int, epoch: int, epochs: int, initial: int = 0) -> None:
        # Imported here: `python -m pipeline.plot`, which reads metrics through this module, then
        # reaches its one-line answer to a Python without the project's packages.
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch}/{epochs}", dynamic_ncols=True,
                        leave=False) if enabled else None

    def update(self, steps: int, **postfix) -> None:
        """Advance by ``steps`` and show ``postfix`` (loss, lr, img/s, data wait)."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(steps)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def format_epoch(record: dict, *, split: str = "val") -> str:
    """One human line per epoch for the console; ``split``: the one the run evaluates on."""
    text = (f"epoch {record['epoch']}/{record['epochs']}: loss {record['train_loss']:.4f} "
            f"lr {record['lr']:.4g} {record['img_per_s']:.0f} img/s data wait {100 * record['data_wait_share']:.0f}%")
    if "top1_err" in record:
        text += (f" | {split} top-1 err {record['top1_err']:.2f}% top-5 err {record['top5_err']:.2f}%"
                 f" (best top-1 {record['best_top1_err']:.2f}% at epoch {record['best_epoch']})")
    return text
