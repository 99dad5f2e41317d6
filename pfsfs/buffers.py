"""Byte buffers for bulk data paths, made without the memory work CPython does holding the GIL.

A mount answers the kernel's reads on one thread while its read-ahead threads fetch and verify
chunks. Their reads and BLAKE3 release the GIL, but each thread needs it for its Python steps,
so a megabyte's ``memset`` or ``memcpy`` done while holding it stalls all the others. Two such
spots were on the cold-read path (``perf``: 4% of all samples in ``memset``, 5% in ``memmove``):

- ``bytearray(n)`` zero-fills the buffer that ``preadv`` then overwrites. ``uninitialized``
  leaves it as ``malloc`` gave it (CPython's ``PyByteArray_FromStringAndSize(NULL, n)``).
- ``b"".join`` copies a FUSE read that straddles two chunks (most 1 MiB reads do) with the GIL
  held. ``concat`` copies with ``ctypes.memmove``, a foreign call that releases it, from the
  parts' buffers (their addresses from ``PyObject_GetBuffer``).

Cold 1 GiB ``cat`` through a local-store mount (5 interleaved rounds, old and new code, the
disk's own cold ``cat`` of the source files 1,890-1,974 MB/s): 1,424-1,569 MB/s before,
1,654-1,789 after.

Uninitialized bytes are never handed out: a caller exposes only what it has written (what
``preadv`` returned; every byte of a ``concat``). Off CPython (no ``ctypes.pythonapi``) the
ordinary ``bytearray`` and ``join`` are used.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

# Function objects of our own (``pythonapi[name]`` makes a new one; ``pythonapi.name`` is shared
# by the whole process, and setting its prototype would change it for every other user).
try:
    _new_bytearray = ctypes.pythonapi["PyByteArray_FromStringAndSize"]
    _new_bytearray.restype = ctypes.py_object
    _new_bytearray.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
except (AttributeError, OSError):  # not CPython
    _new_bytearray = None


def uninitialized(size: int) -> bytearray:
    """A new ``bytearray`` of ``size`` bytes whose contents are undefined (not zeroed)."""
    if _new_bytearray is None or size <= 0:
        return bytearray(max(size, 0))
    return _new_bytearray(None, size)  # type: ignore[no-any-return]


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (in the stable ABI since 3.11)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


try:
    _get_buffer = ctypes.pythonapi["PyObject_GetBuffer"]
    _get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    _release_buffer = ctypes.pythonapi["PyBuffer_Release"]
    _release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
    _release_buffer.restype = None
except (AttributeError, OSError):  # not CPython
    _get_buffer = None


def _address(part: memoryview) -> int | None:
    """Where a contiguous view's bytes start (None: not to be had here). Valid while ``part``
    lives: its buffer cannot move or shrink while a view of it exists."""
    if _get_buffer is None or not part.c_contiguous:
        return None
    view = _PyBuffer()
    _get_buffer(part, ctypes.byref(view), 0)  # PyBUF_SIMPLE; raises if it cannot
    try:
        return view.buf  # type: ignore[no-any-return]
    finally:
        _release_buffer(ctypes.byref(view))


#: Below this many bytes ``b"".join`` is cheaper: each foreign call gives the GIL up and has to
#: win it back from the read-ahead threads.
CONCAT_MIN = 256 << 10


def concat(parts: Sequence[bytes | bytearray | memoryview]) -> bytes | bytearray:
    """The parts' bytes one after the other in a new buffer, copied outside the GIL when there
    are ``CONCAT_MIN`` of them or more (else, and off CPython: ``b"".join``, the same bytes).
    No other thread may write into a part meanwhile (chunks are never written once filled)."""
    views = [v for v in map(memoryview, parts) if v.nbytes]
    total = sum(v.nbytes for v in views)
    addresses = [_address(v) for v in views] if total >= CONCAT_MIN else [None]
    if None in addresses:
        return b"".join(views)
    out = uninitialized(total)
    dst = ctypes.addressof(ctypes.c_char.from_buffer(out))
    for view, src in zip(views, addresses, strict=True):
        ctypes.memmove(dst, src, view.nbytes)  # a foreign call: the GIL is released meanwhile
        dst += view.nbytes
    return out
