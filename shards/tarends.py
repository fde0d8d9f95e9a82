"""How a tar read as a stream ended. tarfile stops quietly at its end-of-archive marker (a zero
block), at a plain end of file (a tar cut short: a partial download or copy, cut at or inside a
header) and at a header whose checksum fails after the first member (a bit flipped in transit or
on disk): only the marker means every member was read. Open the tar with
``tarinfo=EndCheckedTarInfo`` and ask ``end_problem`` once the member loop is over."""

from __future__ import annotations

import tarfile


class EndCheckedTarInfo(tarfile.TarInfo):
    """A TarInfo that notes on its archive why the member list ended."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:  # a zero block: the end-of-archive marker
            archive.ended_at_marker = True
            raise
        except tarfile.InvalidHeaderError:  # a whole header that does not check out
            archive.damaged_header = True
            raise


def end_problem(archive: tarfile.TarFile, *, after: str) -> str | None:
    """None when ``archive`` (opened with ``EndCheckedTarInfo``) ended at its marker, else what
    happened, to follow the archive's name in a message (``after``: where, e.g. "after 6 images")."""
    if getattr(archive, "ended_at_marker", False):
        return None
    if getattr(archive, "damaged_header", False):
        return f"has a damaged tar header (its checksum fails) {after}: the archive is damaged; get it again"
    return f"ends without tar's end-of-archive marker: it was cut short (a partial download or copy?) {after}; " \
        "get the whole archive"
