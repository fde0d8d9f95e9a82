"""The bench scripts' checks of their command lines: a bad value is argparse's one error line
(usage, ``error: ...``, exit 2) before any work, not a traceback after minutes of it."""

from __future__ import annotations

import argparse


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
