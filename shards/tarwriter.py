"""One shard on disk: a WebDataset tar, its DALI index (wds2idx format v1.2) and its sha256,
all produced in the same pass, under temporary names renamed into place when complete.

Not ``tarfile.TarFile`` or webdataset's ``TarWriter``: those give no member offsets for the
index (a second pass would be needed) and stamp wall-clock times, which breaks byte-identical
rebuilds. Headers are built directly (tests check them byte for byte against ``tarfile``'s):
``TarInfo.tobuf`` took a quarter of a pass-through build's time, and sha256 another third, so
hashing and writing run on a background thread (both release the GIL).
bench/bench_shards.py measures the whole against ``tar cf`` and webdataset.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from .dali_index import index_line, write_index
# fsync_directory is re-exported for pipeline/checkpoint.py until it imports shards.durable.
from .durable import fsync_directory

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar and Python's tarfile pad archives to whole 10 KiB records


@dataclass(frozen=True)
class WrittenShard:
    """What the manifest records of a finished shard."""

    name: str
    index: str
    samples: int
    bytes: int
    sha256: str


class ShardTarWriter:
    """Writes samples to ``tar_path`` and ``index_path``; use as a context manager.

    The files appear under their final names only when ``close()`` succeeds, so a killed
    build never leaves a shard that looks complete but is not.
    """

    def __init__(self, tar_path: Path, index_path: Path):
        self.tar_path, self.index_path = Path(tar_path), Path(index_path)
        self._tmp_tar = self.tar_path.with_name(f".tmp-{self.tar_path.name}")
        self._sink = _HashingSink(self._tmp_tar)
        self._offset = 0
        self._index_lines: list[str] = []
        self.written: WrittenShard | None = None  # set by close()

    def __enter__(self) -> "ShardTarWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add_sample(self, key: str, fields: list[tuple[str, bytes]]) -> None:
        """Append one sample: ``fields`` are (extension, bytes) pairs stored as ``key.ext``."""
        entries, parts, offset = [], [], self._offset
        for extension, data in fields:
            name = f"{key}.{extension}"
            parts += (_header(name, len(data)), data, b"\0" * (-len(data) % BLOCK))
            entries.append((extension, offset + BLOCK, len(data), name))
            offset += BLOCK + len(data) + (-len(data) % BLOCK)
        self._write(b"".join(parts))  # one hand-off to the hashing thread per sample
        self._index_lines.append(index_line(entries))

    def close(self) -> WrittenShard:
        """Finish the archive, write the index, fsync both and rename them into place."""
        self._write(b"\0" * (2 * BLOCK))
        self._write(b"\0" * (-self._offset % RECORD))
        sha256 = self._sink.close()
        write_index(self.index_path, self._index_lines)  # the index first: a tar never lacks one
        os.replace(self._tmp_tar, self.tar_path)
        fsync_directory(self.tar_path.parent)
        self.written = WrittenShard(
            self.tar_path.name, self.index_path.name, len(self._index_lines), self._offset,
            sha256,
        )
        return self.written

    def abort(self) -> None:
        """Drop the partial tar."""
        self._sink.close(ignore_errors=True)
        self._tmp_tar.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        self._sink.put(data)
        self._offset += len(data)


class _HashingSink:
    """Writes and hashes chunks on a background thread; ``close`` fsyncs and returns the sha256."""

    def __init__(self, path: Path):
        self._file = open(path, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=256)  # bounds the bytes in flight
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        if self._error:
            raise self._error
        self._queue.put(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._file.write(data)
                    self._sha.update(data)
            except BaseException as error:  # re-raised in the writing thread
                self._error = error

    def close(self, ignore_errors: bool = False) -> str:
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error and not ignore_errors:
                raise self._error
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        return self._sha.hexdigest()


# A USTAR header for a regular file with mode 0644, owner 0:0, no user names, mtime 0.
_HEAD_FIXED = b"0000644\0" + b"0000000\0" * 2
_TAIL_FIXED = b"00000000000\0"  # mtime
_AFTER_CHECKSUM = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 167)  # no device numbers


def _header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file (names up to 100 ASCII bytes)."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name}")
    before = encoded.ljust(100, b"\0") + _HEAD_FIXED + b"%011o\0" % size + _TAIL_FIXED
    checksum = sum(before) + sum(_AFTER_CHECKSUM) + 8 * ord(" ")
    return before + b"%06o\0 " % checksum + _AFTER_CHECKSUM

