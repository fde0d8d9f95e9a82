"""Folders the user names (run.out_dir, data.shards) checked before any work: a file or a broken
link where one of them, or a folder above it, must be made would otherwise end the run in a
traceback from mkdir or the demo build's rename."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(folder: Path) -> tuple[Path, str] | None:
    """The nearest of ``folder`` and the folders above it that exists, when it is no folder, and
    what it is: "a file" or "a broken link" (nothing can be created there). None when the nearest
    is a folder."""
    folder = Path(folder)
    for place in (folder, *folder.parents):
        if place.is_dir():
            return None
        if place.is_symlink() and not place.exists():
            return place, "a broken link"
        if place.exists():
            return place, "a file"
    return None


def in_the_way(name: str, folder: Path) -> str | None:
    """``file_in_the_way`` said for the config key ``name``: "name=FOLDER: a file, not a folder",
    "name=FOLDER: X is a broken link, not a folder"; None when nothing is in the way."""
    found = file_in_the_way(folder)
    if found is None:
        return None
    place, what = found
    return f"{name}={folder}: {'' if place == Path(folder) else f'{place} is '}{what}, not a folder"
