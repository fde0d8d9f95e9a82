"""The bench scripts' checks of their command lines: a bad value is argparse's one error line
(usage, ``error: ...``, exit 2) before any work, not a traceback after minutes of it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Refuse each option ``--name`` whose value is below ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def listed(parser: argparse.ArgumentParser, option: str, text: str, choices, noun: str) -> list[str]:
    """``text`` split at commas, each item one of ``choices`` (else refused, naming the first stranger)."""
    items = text.split(",")
    unknown = [item for item in items if item not in choices]
    if unknown:
        parser.error(f"--{option}: unknown {noun} {unknown[0]!r}; choose from {','.join(choices)}")
    return items


def device_present(parser: argparse.ArgumentParser, device: str) -> None:
    """Refuse ``--device cuda`` where torch sees no CUDA device (torch's error came after the set-up,
    as a traceback: "Found no NVIDIA driver", or DALI's failed assert)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")


def timm_model(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse a ``--model`` timm does not have, before the shards are built."""
    import timm

    if not timm.is_model(name):
        parser.error(f"--model: timm has no model {name!r} (timm.list_models() lists them)")


def out_problem(path: Path) -> str:
    """Why the results file ``path`` could not be written ("" when it can): a folder, a parent
    that is a file, or a folder this process may not write. Checked before the work whose figures
    it keeps: found at the end, it was a traceback after minutes of work (a lent GPU's whole run)."""
    if path.is_dir():
        return f"{path} is a folder; give a file"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the missing ones are made
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    # Tried, not asked with os.access: that says yes to root everywhere, /proc included, where the
    # write then failed after the work. The file itself opened to append (nothing written, nothing
    # changed), and a temporary file beside it (the atomic writes) made and removed.
    if path.exists():
        if not path.is_file():  # a FIFO, a device: opened, it would block or take the table
            return f"{path} is not a regular file; give a file"
        try:
            with open(path, "ab"):
                pass
        except OSError as error:
            return f"{path} may not be written ({error.strerror or error})"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".out-check-"):
            pass
    except OSError as error:
        return f"no file can be made in {folder} ({error.strerror or error})"
    return ""


def writable_out(parser: argparse.ArgumentParser, path: Path) -> None:
    """Refuse ``--out`` (or its default) where ``out_problem`` finds one."""
    problem = out_problem(path)
    if problem:
        parser.error(f"--out {path}: {problem}")
