"""Loading the pickled CIFAR batches without running what a pickle asks for.

A pickle is a program: ``pickle.load`` calls whatever function it names (``os.system``
included), so the python versions of the CIFAR archives are read by an unpickler that resolves
only the globals those files hold. They were written by Python 2's cPickle (protocol 2) from
dicts of byte strings, ints, lists and numpy arrays; written that way, with Python 2.7 and
numpy 1.16, the only globals in them are numpy's array rebuilder, ``numpy.ndarray`` and
``numpy.dtype``. Python 3's ``pickle.dump(protocol=2)`` of the same dict also names
``_codecs.encode`` (for every bytes object): such re-pickled files are refused like any other.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from .errors import ShardsError

# The function numpy's ndarray.__reduce__ names, whatever module it lives in in this numpy.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]

# (module, name) as written in the file -> what it resolves to; nothing else is resolved.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside ALLOWED_GLOBALS; it was not imported, nor called."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Every way a pickle names a global (GLOBAL, STACK_GLOBAL, INST, OBJ, the copyreg
        # extension codes) goes through here: refusing it here refuses it everywhere.
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def load_cifar_pickle(data: bytes, source: str) -> object:
    """Unpickle a CIFAR python-version file as the official loader does (``encoding='bytes'``),
    resolving only numpy's array globals; anything else is a ShardsError naming ``source``."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as refused:
        raise ShardsError(
            f"{source}: refused to unpickle: it calls for {refused.qualified_name}, which no CIFAR file holds "
            "(a pickle can run any code while it loads; only numpy arrays, lists, ints and strings are read)"
        ) from None
    except Exception as error:  # truncated or foreign data: pickle and numpy raise many types
        raise ShardsError(f"{source}: not a readable pickle ({type(error).__name__}: {error})") from None
