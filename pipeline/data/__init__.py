"""Data loading for training: ``create_loader`` over the shards built by ``python -m shards``."""

from .checks import LoaderError
from .factory import create_loader, steps_per_epoch

__all__ = ["LoaderError", "create_loader", "steps_per_epoch"]
