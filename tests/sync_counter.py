"""Counting host syncs on a CPU, where nothing really syncs: a TorchDispatchMode marks "device
data" (the batches, the model's parameters and everything computed from them) and counts the
operations that, on a GPU, make the host wait for that data: reading a value (``.item()``,
``bool()``, ``float()``), data-dependent shapes (``nonzero``, boolean-mask indexing,
``masked_select``), ``equal``, and ``.tolist()``/``.numpy()``. A non-blocking copy into an unmarked tensor is the
asynchronous hand-off to host memory (pinned memory + event on CUDA) and does not mark it; other
writes mark their destination (a fresh device buffer filled from the batch is device data).
What cannot be told apart on a CPU: ``.cpu()`` of device data (a no-op here).

    with SyncCounter() as counter:
        counter.mark(images, labels, *model.parameters())
        ... one training step ...
    assert counter.syncs == [], counter.syncs
"""

from __future__ import annotations

import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

VALUE_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_numpy",
               "aten::masked_select", "aten::equal", "aten::_unique2", "aten::unique_dim",
               "aten::unique_consecutive", "aten::repeat_interleave"}
MASK_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class SyncCounter(TorchDispatchMode):
    """Records (op name, where in our code) for every sync-type op on marked data."""

    def __init__(self) -> None:
        super().__init__()
        self.marked = WeakTensorKeyDictionary()
        self.syncs: list[tuple[str, str]] = []
        self._patched = {}

    def mark(self, *tensors) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self.marked[tensor] = True

    def is_marked(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor in self.marked

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        marked_input = any(self.is_marked(t) for t in inputs)
        out = func(*args, **kwargs)
        if not marked_input:
            return out
        if name in VALUE_READS or (name in MASK_INDEXING and _has_mask(args)):
            self._record(name)
        if name == "aten::copy_" and not self.is_marked(args[0]) and kwargs.get(
                "non_blocking", args[2] if len(args) > 2 else False):
            return out  # the asynchronous hand-off to host memory: the destination is not device data
        self.mark(*(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)))
        return out

    def _record(self, name: str) -> None:
        ours = [f"pipeline/{frame.filename.rsplit('/pipeline/', 1)[1]}:{frame.lineno}"
                for frame in traceback.extract_stack() if "/pipeline/" in frame.filename]
        self.syncs.append((name, ours[-1] if ours else "?"))

    def __enter__(self):
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._patched[method] = original

            def counting(tensor, *args, _original=original, _name=method, **kwargs):
                if self.is_marked(tensor):
                    self._record(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, method, counting)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._patched.items():
            setattr(torch.Tensor, method, original)
        return super().__exit__(*exc)


def _has_mask(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in tree_leaves(indices))
