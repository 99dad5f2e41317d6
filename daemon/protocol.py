"""JSON-lines messages over trio streams: the control socket and the daemon↔worker channel.

Each message is one JSON object on one line. Requests carry ``op`` (and, on the worker
channel, an ``id`` the response repeats); responses carry ``ok`` and either the result fields
or ``error: {type, message, paths}``, where ``type`` names a ``PfsError`` subclass so the CLI
can exit with the right code. Paths travel as ``os.fsdecode`` strings (surrogate escapes
survive JSON's ``\\u`` escaping), so any byte name round-trips.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from pfsfs.errors import Conflict, PfsError

log = logging.getLogger(__name__)

MAX_LINE = 16 << 20


def error_reply(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, PfsError):
        err: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message}
        if isinstance(exc, Conflict) and exc.paths:
            err["paths"] = exc.paths
    else:
        log.exception("internal error", exc_info=exc)
        err = {"type": "DaemonError", "message": f"internal daemon error: {exc!r}"}
    return {"ok": False, "error": err}


class Channel:
    """Send and receive JSON objects over a trio stream, one per line."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next object, or None at end of stream."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if not line.strip():
                    continue
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("expected a JSON object")
                return value
            if len(self._buf) > MAX_LINE:
                raise ValueError("message too long")
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self._buf += data

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        except (trio.ClosedResourceError, OSError):
            pass
