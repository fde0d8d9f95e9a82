"""One shard on disk: a WebDataset tar, its DALI index (wds2idx format v1.2) and its sha256,
all produced in the same pass, under temporary names renamed into place when complete.

We write tar headers with the standard library's ``TarInfo.tobuf`` but not through
``tarfile.TarFile`` or webdataset's ``TarWriter``: those give no member offsets for the index
(a second pass would be needed) and stamp wall-clock times, which breaks byte-identical
rebuilds; bench/bench_shards.py measures this writer against webdataset's TarWriter.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar and Python's tarfile pad archives to whole 10 KiB records
INDEX_VERSION = "v1.2"


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
        self._tmp_index = self.index_path.with_name(f".tmp-{self.index_path.name}")
        self._file = open(self._tmp_tar, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
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
        entries = []
        for extension, data in fields:
            name = f"{key}.{extension}"
            self._write(_header(name, len(data)))
            entries.append(f"{extension} {self._offset} {len(data)} {name}")
            self._write(data)
            padding = -len(data) % BLOCK
            if padding:
                self._write(b"\0" * padding)
        self._index_lines.append(" ".join(entries))

    def close(self) -> WrittenShard:
        """Finish the archive, write the index, fsync both and rename them into place."""
        self._write(b"\0" * (2 * BLOCK))
        self._write(b"\0" * (-self._offset % RECORD))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        lines = [f"{INDEX_VERSION} {len(self._index_lines)}", *self._index_lines]
        with open(self._tmp_index, "w") as index_file:
            index_file.write("\n".join(lines) + "\n")
            index_file.flush()
            os.fsync(index_file.fileno())
        os.replace(self._tmp_index, self.index_path)
        os.replace(self._tmp_tar, self.tar_path)
        fsync_directory(self.tar_path.parent)
        self.written = WrittenShard(
            self.tar_path.name, self.index_path.name, len(self._index_lines), self._offset,
            self._sha.hexdigest(),
        )
        return self.written

    def abort(self) -> None:
        """Drop the partial files."""
        self._file.close()
        for path in (self._tmp_tar, self._tmp_index):
            path.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._offset += len(data)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def fsync_directory(path: Path) -> None:
    """Make renames inside ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
