"""One process at a time per split (or part of a split build) in OUT: an advisory lock.

Two identical builds started into one OUT would spill, write and delete each other's files and
both die mid-build (a FileNotFoundError on a spill file or a record). The second is refused at
once instead, naming the process that holds the lock. The lock is flock(2) on
``OUT/.build/<split>.part-IIII.lock``, one per part, so the parts of a split build (a Slurm
array) still run side by side. The kernel drops a flock when its process ends, however it ends:
a killed build leaves no lock behind and ``--resume`` finishes it. The file holds the holder's
pid and host, for the refusal's message only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import ShardsError
from .outdir import OutputLayout

_ATTEMPTS = 100  # each retry follows a lock file removed by a build that just ended: never many


@contextlib.contextmanager
def build_lock(layout: OutputLayout, part_id: int, num_parts: int) -> Iterator[None]:
    """Hold the lock of this split (part) of OUT for the ``with`` block, or raise ShardsError when
    another process holds it. Leaves OUT as it found it: the lock file and the folders made for it
    go when they are empty."""
    path = layout.lock_file(part_id)
    made_out = not layout.out.exists()
    what = f"its {layout.split} split" if num_parts == 1 else f"part {part_id} of its {layout.split} build"
    descriptor = None
    try:
        descriptor = _acquire(path, layout, what)
        yield
    finally:
        if descriptor is not None:
            # Removed while still locked: a process that opened this file meanwhile sees, once it
            # gets the lock, that the name is gone, and takes a new file (_is_current).
            path.unlink(missing_ok=True)
            os.close(descriptor)
        # .build always (an empty one is no build state); OUT when this build made it. Neither
        # goes while it holds something, such as another process's lock file.
        for folder in (path.parent, *([layout.out] if made_out else [])):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, layout: OutputLayout, what: str) -> int | None:
    """The open, locked lock file; None where the file system has no locks (the build goes on)."""
    missing = None
    for _ in range(_ATTEMPTS):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as error:  # a build that just ended removed the folder: make it again
            missing = error
            continue
        except OSError as error:
            if layout.out.is_dir() and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                # A read-only OUT: this process can race no one there (a complete build's --resume
                # has nothing to do, and any other build fails on its first write).
                return None
            raise ShardsError(f"OUT {layout.out}: cannot create {path} ({error.strerror})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_written(descriptor)
            os.close(descriptor)
            raise ShardsError(f"{layout.out}: {what} is being built by another process{holder}: wait for it to "
                              "end, or stop it and finish the build with --resume") from None
        except OSError as error:  # e.g. ENOLCK: a network file system without locks
            os.close(descriptor)
            path.unlink(missing_ok=True)
            print(f"warning: {path}: no lock ({error.strerror}): nothing stops a second build of "
                  f"{layout.split} into {layout.out} at the same time", file=sys.stderr, flush=True)
            return None
        if _is_current(descriptor, path):
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return descriptor
        os.close(descriptor)
    # Each attempt found a folder missing: not a race with a build ending but a place where folders
    # cannot be made (e.g. under /proc).
    if missing is None:  # each lock taken was of a file that a build ending meanwhile had removed
        raise ShardsError(f"{path}: could not take the build lock ({_ATTEMPTS} attempts)")
    raise ShardsError(f"OUT {layout.out}: cannot create {path} ({missing.strerror}, {_ATTEMPTS} attempts)")


def _is_current(descriptor: int, path: Path) -> bool:
    """Whether the locked file is still the one named ``path`` (its holder removes it as it ends)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _holder_written(descriptor: int, *, wait: float = 2.0) -> str:
    """``_holder``, waiting up to ``wait`` s for it: the holder writes its pid just after it takes
    the lock, and a build started at the same moment may look in between."""
    deadline = time.monotonic() + wait
    while not (holder := _holder(descriptor)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


def _holder(descriptor: int) -> str:
    """' (pid N on HOST)' from the lock file, or '' when its holder has not written it yet."""
    fields = os.pread(descriptor, 256, 0).decode(errors="replace").split()
    if len(fields) == 2 and fields[0].isdigit():
        return f" (pid {fields[0]} on {fields[1]})"
    return ""
