"""User-facing training errors: the entry point prints their message (no traceback) and exits 2."""


class TrainError(Exception):
    """Bad input a user can fix: a missing folder, a wrong model name, a foreign checkpoint."""


class ConfigError(TrainError):
    """A config file, key, type or value that is wrong; the message names the key."""


class EvalError(TrainError):
    """Bad input to ``python -m pipeline.evaluate``: a run without weights, shards of another class
    list, a task the data or the model cannot do. One ``error:`` line, exit 2."""
