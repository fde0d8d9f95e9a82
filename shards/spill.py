"""Bounded-memory shuffling of a streamed tar: one pass spills each input, raw, into the file of
the shard it belongs to; each shard is then built from its own spill file in random order.

This writes the data set twice (spill, then shards) but holds one image in memory at a time
whatever the archive's size, and turns a stream into files that workers can read at random.
A spill file is removed as soon as its shard is complete.
"""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

from .boxes import annotation_from_json
from .errors import ShardsError
from .sources import InputItem

_HEADER = struct.Struct("<II")  # metadata length, data length


class SpillWriter:
    """Appends inputs to one spill file per shard; all files of the part are open at once."""

    def __init__(self, folder: Path, shards: range):
        _raise_open_file_limit(len(shards) + 64)
        folder.mkdir(parents=True, exist_ok=True)
        self._files = {shard: open(spill_path(folder, shard), "wb", buffering=1 << 16) for shard in shards}

    def add(self, shard: int, item: InputItem, data: bytes) -> None:
        meta = json.dumps([item.key, item.wnid, item.source, item.rejected, item.details, item.boxes]).encode()
        file = self._files[shard]
        file.write(_HEADER.pack(len(meta), len(data)))
        file.write(meta)
        file.write(data)

    def close(self) -> None:
        for file in self._files.values():
            file.close()


def spill_path(folder: Path, shard: int) -> Path:
    """Where the spilled inputs of ``shard`` live."""
    return folder / f"{shard:06d}.spill"


def read_spill(path: Path) -> list[InputItem]:
    """The inputs of one spill file, in spill order, with locators into the file."""
    items, offset = [], 0
    with open(path, "rb") as file:
        while header := file.read(_HEADER.size):
            meta_size, data_size = _HEADER.unpack(header)
            key, wnid, source, rejected, details, boxes = json.loads(file.read(meta_size))
            offset += _HEADER.size + meta_size
            items.append(InputItem(key, wnid, source, (str(path), offset, data_size), rejected, details,
                                   annotation_from_json(boxes)))
            offset += data_size
            file.seek(offset)
    return items


def _raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ShardsError(
            f"this part would keep {needed} spill files open but the limit is {hard}: "
            "use a larger --shard-size or more --num-parts"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
