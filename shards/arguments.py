"""The command-line parser of every command of this project: argparse, except that a refused
argument is one ``error:`` line and exit 2, as every other user mistake of our commands is
(argparse's own refusal prints its whole usage block and ``prog: error: ...``)."""

from __future__ import annotations

import argparse
import os


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line refusals; its sub-commands (``add_subparsers``)
    are of this class too. Under several processes (``accelerate launch``, where every rank parses
    the same arguments) only rank 0 says it."""

    def error(self, message: str):
        text = f"error: {message} (see {self.prog} --help)\n" if os.environ.get("RANK", "0") == "0" else None
        self.exit(2, text)
