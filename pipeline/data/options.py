"""How a loader reads, as opposed to what it does to the images (``Augmentation``): the backend,
the batch, the threads and the GPU decoder's hints. One small typed object for ``create_loader``."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from .checks import LoaderError

BACKENDS = ("dali", "torch", "synthetic")


@dataclass(frozen=True)
class LoaderOptions:
    """Reading options shared by every backend (the GPU hints only matter to DALI's mixed decoder)."""

    batch_size: int  # per process
    backend: str = "dali"  # dali, torch or synthetic
    num_threads: int = 2  # DALI threads, or torch DataLoader worker processes
    shuffle_buffer: int = 4096  # samples in the reader's shuffle buffer (train only)
    hw_decoder_load: float = 0.65  # share of JPEGs the GPU's hardware decoder takes (DALI, GPU only)
    preallocate_hint: tuple[int, int] = (0, 0)  # (width, height) the GPU decoder preallocates for; 0 = none

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LoaderError(f"unknown backend {self.backend!r}; choose one of {list(BACKENDS)}")
        for name in ("batch_size", "num_threads", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoaderError(f"{name} must be an integer >= 1, got {value!r}")
        # Of the wrong kind ("0.5", None), these were a TypeError from the comparison itself.
        load = self.hw_decoder_load
        if isinstance(load, bool) or not isinstance(load, Real) or not 0.0 <= load <= 1.0:
            raise LoaderError(f"hw_decoder_load must be a number in [0, 1], got {load!r}")
        hint = self.preallocate_hint
        if not (isinstance(hint, (tuple, list)) and len(hint) == 2
                and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in hint)):
            raise LoaderError(f"preallocate_hint must be (width, height), whole numbers >= 0, got {hint!r}")
