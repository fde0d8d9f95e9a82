"""Import torchvision where PyPI's CUDA build of it meets a CPU build of torch (our CPU machines).

There torchvision's `_C` extension does not load (it links libc10_cuda.so); torchvision then still
registers fake kernels for two ops that `_C` would have defined, and `import torchvision` (and so
`import timm`) fails with "operator torchvision::nms does not exist". Defining those two schemas
lets the pure-Python parts import (transforms, timm's data code); the C++ ops stay unavailable.
Only the tests and the benchmark need this: pipeline.mix itself imports neither library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def import_torchvision() -> ModuleType:
    """Import and return torchvision, first defining the op schemas its import needs if `_C` is missing."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    library = torch.library.Library("torchvision", "DEF")
    for schema in MISSING_OP_SCHEMAS:
        library.define(schema)
    torchvision = importlib.import_module("torchvision")
    # The schemas live as long as the Library object does: keep it with the module that needs it.
    torchvision._cpu_torch_op_schemas = library
    return torchvision
