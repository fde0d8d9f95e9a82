"""The one exception type for user mistakes: the CLI prints its message, never a traceback; and
the one line for the commonest set-up mistake, a Python without the project's dependencies."""

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

# The project's dependencies (pyproject.toml's), by the name they are imported as.
DEPENDENCY_MODULES = ("torch", "torchvision", "nvidia.dali", "timm", "accelerate", "webdataset", "PIL", "numpy",
                      "scipy", "sklearn", "tqdm", "yaml", "safetensors", "matplotlib", "cv2", "tensorboard", "triton")

class ShardsError(Exception):
    """A problem with the user's input or output folder, explained in the message."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or ``scancel``, a ``kill``), raised where Ctrl-C raises
    KeyboardInterrupt: the command ends the same way, with a resume hint instead of a bare death."""


@contextlib.contextmanager
def dependencies_required() -> Iterator[None]:
    """Around a command line's imports and work: a dependency this Python lacks (a system
    ``python`` run instead of the project environment's) ends the command with one ``error:``
    line and exit 2 instead of an import traceback; any other missing module is a bug, re-raised."""
    try:
        yield
    except ModuleNotFoundError as error:
        missing = _missing_dependency(error.name or "")
        if missing is None:
            raise
        print(f"error: this Python ({sys.executable}) has no {missing}, which the project needs: run the project's "
              "environment's python (source .venv/bin/activate after the README's install command)", file=sys.stderr)
        raise SystemExit(2) from None


def _missing_dependency(name: str) -> str | None:
    """The dependency a failed import of ``name`` shows missing; None when ``name`` is none of
    them, or a part of one that is there (a broken install or a bug: its traceback is the news)."""
    dependency = next((d for d in DEPENDENCY_MODULES if name == d or name.startswith(d + ".")), None)
    if dependency is None:
        return None
    try:
        present = importlib.util.find_spec(dependency) is not None
    except ImportError:  # a parent package missing too (nvidia.dali without nvidia)
        present = False
    return None if present else dependency
