"""A restricted unpickler for uploaded files: plain data and numpy scalars/arrays only.

``pickle.loads`` on uploaded bytes calls whatever the pickle names (``os.system``,
``subprocess.Popen``, ...). :class:`SafeUnpickler` resolves no global except the few that
numpy's own pickles use to rebuild dtypes, scalars and arrays, and the few builtins that
protocols 0-3 name for sets, bytes and complex numbers; each is wrapped so that it accepts
only what numpy or pickle itself writes, and only numeric, boolean and string dtypes come
back (no object, structured, void or datetime dtypes). Any other global, and so any
REDUCE/INST/OBJ/NEWOBJ of anything else, fails with :class:`RefusedPickleError` naming
it. dict, list, tuple, str, bytes, int, float, bool and None need no global at all.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy._core.multiarray import scalar as _numpy_scalar

__all__ = ["RefusedPickleError", "SafeUnpickler", "safe_loads"]

# dtype kinds that may come back: bool, signed, unsigned, float, complex, str, bytes
_KINDS = frozenset("biufcUS")
_MAX_ITEMSIZE = 4096  # bytes per item (a string dtype could ask for gigabytes)


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list, or a dtype that is not plain."""


def _plain_dtype(dtype: Any) -> np.dtype[Any]:
    if not isinstance(dtype, np.dtype):
        raise RefusedPickleError(f"expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.kind not in _KINDS or dtype.hasobject or dtype.fields is not None:
        raise RefusedPickleError(
            f"refused numpy dtype {dtype.str!r}: only bool, integer, float, complex and "
            "string dtypes are accepted"
        )
    if dtype.itemsize > _MAX_ITEMSIZE:
        raise RefusedPickleError(f"refused numpy dtype {dtype.str!r}: items over 4 kB")
    return dtype


def _fresh(dtype: Any) -> np.dtype[Any]:
    """A new dtype equal to the pickle's ``dtype``, for numpy to keep. The pickle holds
    its own dtype object and may BUILD it again later; one that an array or scalar kept
    would change under it (say, to claim object references in float bytes)."""
    return _plain_dtype(np.dtype(_plain_dtype(dtype).str))


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype[Any]:
    if not isinstance(spec, str):
        raise RefusedPickleError(f"refused a numpy dtype built from {type(spec).__name__}")
    # Always a copy: the BUILD that follows must not reach numpy's shared dtypes. That
    # state may still change it, so its users check it again (_plain_dtype).
    return _plain_dtype(np.dtype(spec, align=bool(align), copy=True))


class _Array(np.ndarray):
    """What ``_reconstruct`` builds: numpy gets a checked, fresh copy of the state's dtype."""

    def __setstate__(self, state: Any, /) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise RefusedPickleError("refused an ndarray state that numpy does not write")
        super().__setstate__((*state[:-3], _fresh(state[-3]), *state[-2:]))


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy writes (ndarray, (0,), b"b") here: an empty placeholder that the state fills;
    # anything else could allocate an array of any size before the state is checked
    if subtype is not _Array or shape != (0,) or dtype != b"b":
        raise RefusedPickleError("refused an ndarray reconstruction that numpy does not write")
    return np.ndarray.__new__(_Array, (0,), np.dtype("b"))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _fresh(dtype)
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = bytes(buffer.raw())
    if not isinstance(buffer, bytes | bytearray):
        raise RefusedPickleError("refused a numpy buffer that is not bytes")
    if order not in ("C", "F"):
        raise RefusedPickleError(f"refused numpy array order {order!r}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    # protocols 0-2 have no bytes opcode and write bytes as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedPickleError("refused _codecs.encode other than of a str to latin1")
    return text.encode("latin1")


def _bytearray(data: Any = b"", *args: Any) -> bytearray:
    if isinstance(data, str) and args == ("latin-1",):  # protocol 2
        return bytearray(data, "latin-1")
    if not isinstance(data, bytes) or args:  # bytearray(n) would allocate n bytes
        raise RefusedPickleError("refused a bytearray that is not built from bytes")
    return bytearray(data)


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not isinstance(real, int | float) or not isinstance(imag, int | float):
        raise RefusedPickleError("refused complex() of anything but two numbers")
    return complex(real, imag)


_SCALAR = "scalar"  # resolved per unpickler: it counts what it rebuilt
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | str] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[_module, "_reconstruct"] = _reconstruct
    _ALLOWED[_module, "scalar"] = _SCALAR
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[_module, "_frombuffer"] = _frombuffer
_ALLOWED["numpy", "dtype"] = _dtype
_ALLOWED["numpy", "ndarray"] = _Array
_ALLOWED["_codecs", "encode"] = _latin1
for _module in ("builtins", "__builtin__"):  # protocols 0-3 rebuild these by name
    _ALLOWED[_module, "set"] = set
    _ALLOWED[_module, "frozenset"] = frozenset
    _ALLOWED[_module, "bytearray"] = _bytearray
    _ALLOWED[_module, "complex"] = _complex


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the allow-list of the module docstring.

    After :meth:`load`, :attr:`numpy_scalar_types` names the numpy scalar types that the
    pickle held (``{"float64"}`` for lists of numpy floats, empty for Python floats).
    """

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.numpy_scalar_types: set[str] = set()
        self._scalar = self._scalar_maker()

    def _scalar_maker(self) -> Callable[..., Any]:
        """numpy's ``scalar(dtype, data)``, checked. A pickle may BUILD a memoised dtype
        again after its first use, so numpy never sees the pickle's dtype object: each one
        is mapped, when first seen, to a fresh dtype of its type code then, and scalars
        are made from that (a tampered dtype's code is "|V.." or "|O" and is refused).
        ``kept`` holds the pickle's dtypes, so their ids are not reused while it lives.
        numpy checks that ``data`` holds the dtype's bytes."""
        fresh: dict[int, np.dtype[Any]] = {}
        kept: list[Any] = []
        types = self.numpy_scalar_types

        def check(dtype: Any) -> np.dtype[Any]:
            if not isinstance(dtype, np.dtype):
                raise RefusedPickleError(f"expected a numpy dtype, got {type(dtype).__name__}")
            plain = fresh[id(dtype)] = _fresh(dtype)
            kept.append(dtype)
            types.add(plain.name)
            return plain

        def scalar(dtype: Any, data: bytes) -> Any:  # one call per number: kept lean
            return _numpy_scalar(fresh.get(id(dtype)) or check(dtype), data)

        return scalar

    def find_class(self, module: str, name: str, /) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise RefusedPickleError(
                f"refused global {module}.{name}: only plain containers, numbers, strings "
                "and numpy arrays/scalars may be uploaded"
            )
        return self._scalar if found == _SCALAR else found

    def persistent_load(self, pid: Any, /) -> Any:
        raise RefusedPickleError("refused a persistent id: the pickle refers to outside objects")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler` (arrays come back as an ndarray
    subclass that checked its dtype; ``np.asarray`` gives a plain one).

    Raises:
        RefusedPickleError: a global or dtype outside the allow-list.
        pickle.UnpicklingError: the bytes are not a pickle.
    """
    return SafeUnpickler(io.BytesIO(data)).load()
