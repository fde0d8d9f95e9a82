"""The files of a source folder, in the order a build lists them.

Linked folders are followed: an ImageNet subset is often a folder of links to class folders, and
``os.walk``'s default left their images out without a word (or found "no files" when every class
was a link). A link back to a folder above it would make that walk endless: such a link is not
descended into (it holds no file the walk does not already list).
"""

from __future__ import annotations

import os
from typing import Iterator


def walk_files(folder) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder, its sorted subfolders, its sorted file names) top down, as ``os.walk`` gives
    them, following links to folders but never around a loop."""
    above: dict[str, frozenset[str]] = {os.fspath(folder): frozenset()}
    for directory, dirnames, filenames in os.walk(folder, followlinks=True):
        seen = above.pop(directory, frozenset()) | {os.path.realpath(directory)}
        dirnames[:] = sorted(name for name in dirnames
                             if os.path.realpath(os.path.join(directory, name)) not in seen)
        for name in dirnames:
            above[os.path.join(directory, name)] = seen
        yield directory, dirnames, sorted(filenames)
