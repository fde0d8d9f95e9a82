"""Loading the pickled CIFAR batches without running what a pickle asks for.

A pickle is a program: ``pickle.load`` calls whatever function it names (``os.system``
included), so the python versions of the CIFAR archives are read by an unpickler that resolves
only the globals those files hold. They were written by Python 2's cPickle (protocol 2) from
dicts of byte strings, ints, lists and numpy arrays; written that way, with Python 2.7 and
numpy 1.16, the only globals in them are numpy's array rebuilder, ``numpy.ndarray`` and
``numpy.dtype``. Python 3's ``pickle.dump(protocol=2)`` of the same dict (a user's re-pickled
copy) also names ``_codecs.encode`` for every bytes object, as ``encode(text, 'latin1')``, and
``__builtin__.bytes`` for an empty one, and at protocol 5 (``pickle.HIGHEST_PROTOCOL``) numpy
writes its arrays as calls of ``_frombuffer``: each is resolved to a function that does only that.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from .errors import ShardsError

# The function numpy's ndarray.__reduce__ names, whatever module it lives in in this numpy.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]



def _latin1_bytes(text, encoding):
    """What Python 3's protocol 2 asks of ``_codecs.encode``: the bytes a latin-1 text stands for
    (any other call is refused: the real function takes any codec)."""
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode called with ({type(text).__name__}, {encoding!r}), not the "
                                     "(text, 'latin1') of a pickled bytes object")
    return text.encode("latin1")


def _empty_bytes(*args):
    """What Python 3's protocol 2 asks of ``builtins.bytes``: ``bytes()`` (the real one also takes a
    size to allocate)."""
    if args:
        raise pickle.UnpicklingError(f"bytes called with {len(args)} argument(s), not the none of an empty bytes "
                                     "object")
    return b""


_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # numpy's rebuilder of a protocol-5 array


def _array_from_buffer(buffer, dtype, shape, order, axis_order=None):
    """numpy's protocol-5 array rebuilder (``pickle.HIGHEST_PROTOCOL``), called only with what it
    writes: the data's bytes, a dtype, a shape of ints and a memory order."""
    if not (isinstance(buffer, (bytes, bytearray)) and isinstance(dtype, np.dtype) and isinstance(shape, tuple)
            and all(type(n) is int for n in shape) and order in ("C", "F", "K")
            and (axis_order is None or isinstance(axis_order, (tuple, list)))):
        raise pickle.UnpicklingError("numpy's _frombuffer called with other arguments than a pickled array's")
    return _FROMBUFFER(buffer, dtype, shape, order, axis_order)


# (module, name) as written in the file -> what it resolves to; nothing else is resolved.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,  # protocol 5, numpy 1
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,  # protocol 5, numpy 2
    ("_codecs", "encode"): _latin1_bytes,  # a bytes object pickled by Python 3 at protocol 2
    ("__builtin__", "bytes"): _empty_bytes,  # an empty one (named as Python 2 would, fix_imports)
    ("builtins", "bytes"): _empty_bytes,  # the same written with fix_imports=False
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
