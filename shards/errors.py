"""The one exception type for user mistakes: the CLI prints its message, never a traceback; and
the one line for the commonest set-up mistake, a Python without the project's dependencies."""

import contextlib
import sys
from collections.abc import Iterator

# What the project imports of its dependencies (pyproject.toml's), by top-level import name.
DEPENDENCY_MODULES = frozenset({"torch", "torchvision", "nvidia", "timm", "accelerate", "webdataset", "PIL", "numpy",
                                "scipy", "sklearn", "tqdm", "yaml", "safetensors", "matplotlib"})


class ShardsError(Exception):
    """A problem with the user's input or output folder, explained in the message."""


@contextlib.contextmanager
def dependencies_required() -> Iterator[None]:
    """Around a command line's imports and work: a dependency this Python lacks (a system
    ``python`` run instead of the project environment's) ends the command with one ``error:``
    line and exit 2 instead of an import traceback; any other missing module is a bug, re-raised."""
    try:
        yield
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in DEPENDENCY_MODULES:
            raise
        print(f"error: this Python ({sys.executable}) has no {top}, which the project needs: run the project's "
              "environment's python (source .venv/bin/activate after the README's install command)", file=sys.stderr)
        raise SystemExit(2) from None
