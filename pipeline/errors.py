"""User-facing training errors: the entry point prints their message (no traceback) and exits 2."""

import sys


def loader_errors() -> tuple[type, ...]:
    """LoaderError once the loader code is imported (before that, none can be raised): for an
    except clause of a command line that imports it late (it is evaluated only when an
    exception is on its way)."""
    error = getattr(sys.modules.get("pipeline.data"), "LoaderError", None)  # None while it is being imported
    return (error,) if error is not None else ()


class TrainError(Exception):
    """Bad input a user can fix: a missing folder, a wrong model name, a foreign checkpoint."""


class ConfigError(TrainError):
    """A config file, key, type or value that is wrong; the message names the key."""


class EvalError(TrainError):
    """Bad input to ``python -m pipeline.evaluate``: a run without weights, shards of another class
    list, a task the data or the model cannot do. One ``error:`` line, exit 2."""
