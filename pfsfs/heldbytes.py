"""Counting the memory that cached buffers and views really keep alive.

A read cache may hold views (``memoryview`` slices) into the buffer one ranged GET filled,
instead of copies. A view keeps its whole buffer alive, so a cache that counted only the views'
lengths could hold far more than its budget (a 4 KiB view can pin a 32 MiB span). ``HeldBytes``
counts each distinct buffer once, for as long as any cached entry refers to it, so caches bound
what they really keep. Callers name the buffer an entry keeps (``owner_of``) and serialise
their own calls (it takes no lock).
"""

from __future__ import annotations

from typing import Any


def owner_of(data: Any) -> Any:
    """The object whose memory ``data`` keeps alive: a view's buffer, else ``data`` itself."""
    return data.obj if isinstance(data, memoryview) else data


class HeldBytes:
    """Bytes held by a set of entries, each distinct buffer counted once (``total``)."""

    def __init__(self) -> None:
        self.total = 0
        # id(buffer) → [buffer (kept, so the id stays its own), entries referring to it, size]
        self._held: dict[int, list[Any]] = {}

    def add(self, buffer: Any) -> None:
        held = self._held.get(id(buffer))
        if held is None:
            size = memoryview(buffer).nbytes
            self._held[id(buffer)] = [buffer, 1, size]
            self.total += size
        else:
            held[1] += 1

    def remove(self, buffer: Any) -> None:
        held = self._held[id(buffer)]
        held[1] -= 1
        if held[1] == 0:
            del self._held[id(buffer)]
            self.total -= held[2]
