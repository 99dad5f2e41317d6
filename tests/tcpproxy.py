"""A TCP proxy that tests can kill: the S3 server "dies" for the client while its state survives.

moto keeps its data in memory, so killing moto itself destroys the very state a test wants to
inspect afterwards (did the ref move? is every object it names there?). Putting this proxy
between the client and moto and killing *it* looks the same to the client — connections reset,
then refused — while the test can still look at moto directly, or ``restart`` the proxy on the
same port as a server coming back would. ``stall`` makes it a hung server instead (bytes held
until ``resume``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from .s3server import free_port


class KillableProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream_port``; counts bytes sent upstream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    restart = start

    def kill(self) -> None:
        """Reset every open connection and stop listening (new connections are refused)."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: the close sends a RST, like a crashed server's kernel would.
                # shutdown first: it wakes the pump thread blocked in recv on this socket
                # (a bare close would not, and the connection would stay open).
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def stall(self) -> None:
        """Hold every byte in both directions (a hung server: requests neither fail nor end)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward what was held, and everything after it."""
        self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if up:
                    with self._lock:
                        self.bytes_up += len(data)
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
