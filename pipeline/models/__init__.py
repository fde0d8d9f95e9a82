"""Models: any timm model by name (``factory``), and our own architectures, registered into timm
when this package is imported (``pyramidnet``: PyramidNet with ShakeDrop, stochastic depth and
DropBlock). ``pipeline.run`` and the config rules import it, so ``model.name=pyramidnet200_a240``
works in ``pipeline/train.py``; elsewhere, ``import pipeline.models`` before
``timm.create_model("pyramidnet200_a240", ...)``."""

from . import pyramidnet  # noqa: F401  (registers the PyramidNets with timm)
from .factory import (check_model_name, create_model, input_size_problem, model_option_problem, read_classes,
                      read_num_classes, unknown_model_message)

__all__ = ["check_model_name", "create_model", "input_size_problem", "model_option_problem", "read_classes",
           "read_num_classes", "unknown_model_message"]
