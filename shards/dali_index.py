"""DALI's index of a WebDataset tar (the format of its ``wds2idx`` tool, v1.2): a header line
``v1.2 <samples>``, then one line per sample of ``<extension> <offset> <size> <name>`` groups,
offsets pointing at each member's data. With it DALI seeks straight to a sample instead of
parsing every tar on every rank at start-up. Written and read only here; the tests check our
files against ``wds2idx``'s own output.
"""

from __future__ import annotations

from pathlib import Path

from .durable import write_text_atomic

INDEX_VERSION = "v1.2"

IndexEntry = tuple[str, int, int, str]  # extension, data offset, size, member name


def index_line(entries: list[IndexEntry]) -> str:
    """The index line of one sample from its members' entries, in tar order."""
    return " ".join(f"{extension} {offset} {size} {name}" for extension, offset, size, name in entries)


def write_index(path: Path, lines: list[str]) -> None:
    """Write an index from its sample lines (``index_line``), durably and atomically."""
    write_text_atomic(path, "\n".join([f"{INDEX_VERSION} {len(lines)}", *lines]) + "\n")


def read_index(path: Path) -> list[list[IndexEntry]]:
    """Per sample, its entries; ValueError when the file is not a v1.2 index."""
    lines = Path(path).read_text().splitlines() or [""]
    count = len(lines) - 1
    header = lines[0].split()
    if header != [INDEX_VERSION, str(count)]:
        # Said as what happened: "header 'v1.2 77' should be 'v1.2 4'" sent a reader to fix the header
        # of an index cut short (walkthrough).
        if not "".join(lines):
            raise ValueError("the index is empty")
        if len(header) == 2 and header[0] == INDEX_VERSION and header[1].isdigit():
            raise ValueError(f"the index lists {count} samples where its header says {header[1]}: cut short or "
                             "damaged")
        raise ValueError(f"not a {INDEX_VERSION} index: its first line is {lines[0][:60]!r}")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4 or not all(f.isdigit() for f in fields[1::4] + fields[2::4]):
            raise ValueError(f"line {number} ({line[:60]!r}) is not groups of <extension> <offset> <size> <name>")
        samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                        for i in range(0, len(fields), 4)])
    return samples
