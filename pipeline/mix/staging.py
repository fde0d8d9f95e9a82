"""Small host arrays to the GPU each step without a host wait and without allocating pinned memory.

A copy from pageable memory makes the host wait for the GPU's stream; `tensor.pin_memory()` per
call avoids the wait but allocates (and registers) pinned memory each time. Here each device has
a ring of pinned host slots, reused across calls: a step's rows go into the oldest slot, one
non_blocking copy takes them to a fresh device tensor (from the caching allocator, owned by the
caller), and a CUDA event recorded after the copy guards the slot. The slot is rewritten only
once its event says the copy has run; if it has not (the host runs further ahead of the GPU than
ever before), a new slot joins the ring instead of waiting, so after the first steps the ring
has its working size and nothing is allocated or waited for. Copies and events go on the
device's current stream, the one the kernels that read the copy run on.

A ring for the CPU (what the tests drive; `to_device` itself copies plainly there) has pageable
slots and copies that are complete at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Ring size beyond which a busy slot is waited for instead of adding one (a host that many steps
# ahead of the GPU: the launch queue fills long before).
MAX_SLOTS = 64
# Pinned bytes per slot to start with (a sampler's block of rows: 16 steps x batch 256 x 10 int32 =
# 160 KiB); a slot grows to the largest payload it has carried.
INITIAL_SLOT_BYTES = 256 * 1024
_TORCH_DTYPES = {np.dtype(name): getattr(torch, name)
                 for name in ("bool", "uint8", "int32", "int64", "float32", "float64")}


class _Done:
    """The event of a copy that is already complete (the CPU's synchronous copies)."""

    @staticmethod
    def query() -> bool:
        return True

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Slot:
    """One pinned host buffer and the event of the last copy out of it."""

    def __init__(self, nbytes: int, *, pinned: bool, event) -> None:
        self.host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        self.host_bytes = self.host.numpy()
        self.event = event


class PinnedRing:
    """Host-to-device copies of small arrays through reused pinned slots; see the module docstring."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.slots: list[_Slot] = []
        self.next = 0  # the oldest slot: the next to be reused

    def to_device(self, array: np.ndarray) -> Tensor:
        """`array` (C-contiguous numpy) as a new tensor on the device, copied asynchronously."""
        array = np.ascontiguousarray(array)
        slot = self._free_slot(array.nbytes)
        slot.host_bytes[: array.nbytes] = array.reshape(-1).view(np.uint8)
        on_device = torch.empty(array.nbytes, dtype=torch.uint8, device=self.device)
        on_device.copy_(slot.host[: array.nbytes], non_blocking=True)
        slot.event.record(self.stream())
        return on_device.view(_TORCH_DTYPES[array.dtype]).view(array.shape)

    def _free_slot(self, nbytes: int) -> _Slot:
        if not self.slots or not self.slots[self.next].event.query():
            if len(self.slots) < MAX_SLOTS:
                # The oldest slot is still being copied from: a new one goes before it in the ring.
                self.slots.insert(self.next, self._new_slot(nbytes))
            else:
                self.slots[self.next].event.synchronize()
        slot = self.slots[self.next]
        if len(slot.host_bytes) < nbytes:
            # A bigger payload than this slot has carried. Dropping the old buffer is safe while
            # its copy runs: the pinned allocator holds a block until the copies from it are done.
            self.slots[self.next] = slot = self._new_slot(nbytes)
        self.next = (self.next + 1) % len(self.slots)
        return slot

    def stream(self):
        """The stream the copy went on: the device's current one (None on the CPU)."""
        return torch.cuda.current_stream(self.device) if self.cuda else None

    def _new_slot(self, nbytes: int) -> _Slot:
        event = torch.cuda.Event() if self.cuda else _Done()
        return _Slot(max(nbytes, INITIAL_SLOT_BYTES), pinned=self.cuda, event=event)


_RINGS: dict[torch.device, PinnedRing] = {}


def ring_for(device: torch.device) -> PinnedRing:
    """The process's ring for `device` (made on first use)."""
    ring = _RINGS.get(device)
    if ring is None:
        ring = _RINGS[device] = PinnedRing(device)
    return ring


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A small host array as a new tensor on `device`, without a host wait: through
    `ring_for(device)` on a GPU, a plain copy on the CPU."""
    if device.type == "cpu":
        return torch.from_numpy(np.array(array))
    return ring_for(device).to_device(array)
