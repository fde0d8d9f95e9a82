"""Durable file writes: what is written here is on disk, under its final name, before the call
returns, so that a crash or a kill leaves the old file or the whole new one, never a torn one.

A rename is only durable once the folder that holds it is fsynced too; every function here that
creates or renames a name does that.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_directory(folder: Path) -> None:
    """Make the creations, renames and deletions inside ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Flush a file that is already written (by this process or another) to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder``, then ``folder`` itself, so that the whole
    tree survives a crash."""
    folder = Path(folder)
    # Deepest first: a folder is flushed after everything inside it.
    for path in sorted(folder.rglob("*"), key=lambda p: (-len(p.parts), str(p))):
        if path.is_symlink():
            continue
        if path.is_file():
            fsync_file(path)
        elif path.is_dir():
            fsync_directory(path)
    fsync_directory(folder)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    temporary = _written_beside(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_text_exclusive(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless ``path`` exists; returns whether this call wrote it.

    Of processes that race to create ``path``, exactly one wins, and readers see no file or the
    whole one: the text goes to a temporary name that is hard-linked to ``path``, and a link never
    replaces an existing name (``os.replace`` would, so the last writer would win).
    """
    path = Path(path)
    temporary = _written_beside(path, text)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links (some FUSE mounts)
            return _create_exclusive(path, text)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True


def _written_beside(path: Path, text: str) -> Path:
    """``text`` in a temporary file beside ``path``, on disk (fsynced); its name is unique per
    process and thread (parts of a split build started at once write the same plan.json)."""
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _create_exclusive(path: Path, text: str) -> bool:
    # Still one winner (O_EXCL), but a reader may see the file before its text is in it.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # a torn file would stand in the way of every later writer
        raise
    fsync_directory(path.parent)
    return True


def give_umask_mode(path: Path) -> None:
    """Give a file the mode the process's umask gives a new file (0644 under umask 022). For
    files a library creates readable by their owner alone: safetensors 0.8's ``save_file``
    writes 0600, so teammates on a shared cluster could not read a run's weights."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` sets it
    while it reads it: another thread creating a file in that moment would get the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
