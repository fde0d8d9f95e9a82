"""The command-line parser of every command of this project: argparse, except that a refused
argument is one ``error:`` line and exit 2, as every other user mistake of our commands is
(argparse's own refusal prints its whole usage block and ``prog: error: ...``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line refusals; its sub-commands (``add_subparsers``)
    are of this class too. Under several processes (``accelerate launch``, where every rank parses
    the same arguments) only rank 0 says it."""

    def error(self, message: str):
        text = f"error: {message} (see {self.prog} --help)\n" if os.environ.get("RANK", "0") == "0" else None
        self.exit(2, text)


def path(text: str) -> Path:
    """A path argument (``type=path``). An empty one, an unset shell variable's (``--out $OUT``), is
    refused: as ``Path("")`` it was the current folder, where a build or a report then wrote."""
    return Path(nonempty(text))


def nonempty(text: str) -> str:
    """A path argument kept as text (a trailing ``/`` means a folder), refused when empty as ``path``."""
    return _not_blank(text, "path")


def nonblank(text: str) -> str:
    """A value that is not a path (a split name, a list of labels), refused when empty as ``path``
    is: ``--split $SPLIT`` with SPLIT unset read as the default split, without a word."""
    return _not_blank(text, "value")


def _not_blank(text: str, what: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty {what} (an unset shell variable?)")
    return text
