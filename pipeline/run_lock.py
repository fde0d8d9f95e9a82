"""One training per run folder at a time: ``RUN/.lock``, locked by the main process of the training
that writes the folder, for as long as that process lives (and one evaluation per ``--out``
folder, the same way: ``pipeline/evaluate/runner.py``).

Two trainings into one ``run.out_dir`` (a command started twice, a job submitted twice) would both
run to the end, each saving over the other's checkpoints and appending to one ``metrics.jsonl``.
The lock is a POSIX record lock (``lockf``), not ``flock``: the kernel drops it when its process
ends, however it ends (a SIGKILL, a node's crash seen by the NFS server), and a process the
training forks (DataLoader workers) does not inherit it, so none of them can keep a folder locked
after its training is gone. It works across nodes on NFS (the lock manager); on a file system
without locks (some Lustre and FUSE mounts) there is no guard, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from .errors import TrainError

LOCK_FILE = ".lock"
# lockf's answers when another process holds the lock; any other error: the file system has no locks.
HELD = {errno.EACCES, errno.EAGAIN}


class RunFolderLock:
    """``with RunFolderLock(run_dir) as lock: ... lock.take(accelerator) ...``: the lock is held
    from ``take`` until the block ends."""

    def __init__(self, run_dir: Path, *, refusal=None, error: type[Exception] = TrainError) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None
        # What the second process is told: in_use(folder, holder) for a training; an evaluation's own.
        self.refusal = refusal or in_use
        self.error = error

    def take(self, accelerator) -> None:
        """Called by every rank: the main process takes the lock; a TrainError on every rank (so
        that none waits for the others at a barrier) when another training holds it."""
        refusal = self._take() if accelerator.is_main_process else ""
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            refusal = broadcast_object_list([refusal])[0]
        if refusal:
            raise self.error(refusal)

    def _take(self) -> str:
        """Lock the file (creating the folder); what to refuse with when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in HELD:
                handle.seek(0)
                refusal = self.refusal(self.path.parent, handle.read().strip())
                handle.close()
                return refusal
            return ""  # no locks on this file system: no guard (and nothing to hold)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return ""

    def release(self) -> None:
        """Close the file, which drops the lock (the process's end does it too)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_run_folder_free(run_dir: Path) -> None:
    """TrainError when a training holds ``run_dir``'s lock (``--check``: before a job starts its
    nodes). Takes the lock for a moment where it is free; writes nothing, creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return
    with open(path) as handle:  # read-only: lockf on it needs a shared lock
        try:
            fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in HELD:
                raise TrainError(in_use(Path(run_dir), handle.read().strip())) from None


def in_use(run_dir: Path, holder: str) -> str:
    # NFSv3 keeps a crashed client's locks until that host is back: the only case for removing it.
    return (f"run.out_dir={run_dir} is in use by another training ({holder or 'its process unknown'}): "
            "wait for it to end or stop it (its checkpoints resume it), or give another run.out_dir (if that "
            f"host is down, NFS may keep its lock until it is back: then remove {Path(run_dir) / LOCK_FILE})")
