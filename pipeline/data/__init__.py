"""Data loading for training: ``create_loader`` over the shards built by ``python -m shards``."""

from .checks import LoaderError
from .factory import create_loader

__all__ = ["LoaderError", "create_loader"]
