"""Folders the user names (run.out_dir, data.shards) checked before any work: a file where one of
them, or a folder above it, must be made would otherwise end the run in a traceback from mkdir."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest of ``folder`` and the folders above it that exists, when it is not a folder (a
    file, or a broken link): nothing can be created there. None when the nearest is a folder."""
    folder = Path(folder)
    for place in (folder, *folder.parents):
        if place.is_dir():
            return None
        if place.exists() or place.is_symlink():
            return place
    return None
