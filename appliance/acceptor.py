"""Listening sockets served the same way on any event loop (uvloop's or asyncio's): gRPC,
TTRPC, the debug and metrics endpoints.

Running out of fds must not make a busy loop nor lose the listener. asyncio 3.11 retries
accept() after EMFILE with one more call and a traceback per attempt; libuv accepts and
drops the waiting connections, and uvloop closes the listener for good on any other accept
error. Here an accept error stops accepting on that socket for `ACCEPT_RETRY` s (the
waiting clients stay in the backlog, as with Go's net/http and grpc-go) and is logged once
per `LOG_INTERVAL` s; accepting resumes by itself once clients close connections.
Accepted sockets become transports through the loop's `connect_accepted_socket`.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

log = logging.getLogger("appliance.accept")
ACCEPT_RETRY = 1.0    # seconds without accept() on a socket after an accept error
LOG_INTERVAL = 10.0   # at most one line per socket per this many seconds
BACKLOG = 128         # listen() backlog; accepts per readable event at most


class Listener:
    """Accepts on a bound, listening socket; each connection gets `protocol_factory()`."""

    def __init__(self, sock: socket.socket, protocol_factory, ssl=None):
        self.sock = sock
        self._factory, self._ssl = protocol_factory, ssl
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task] = set()   # connect_accepted_socket under way
        self._retry: asyncio.TimerHandle | None = None
        self._failures = 0
        self._logged: float | None = None   # when the last failure was logged
        self._name = _name(sock)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the socket (connections made stay open)."""
        if self.sock.fileno() == -1:
            return
        if self._retry is not None:
            self._retry.cancel()
        else:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in self._connecting:
            task.cancel()

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as exc:   # EMFILE, ENFILE, ENOBUFS, ENOMEM
                self._failed(exc)
                return
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
        if self._logged is not None:
            log.info("accepting connections on %s again", self._name)
            self._logged = None

    async def _connect(self, conn: socket.socket) -> None:
        try:   # on failure the transport has closed the socket
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError as exc:   # closed by the peer at once, a failed TLS handshake
            log.debug("connection on %s: %s", self._name, exc)

    def _failed(self, exc: OSError) -> None:
        self._failures += 1
        now = time.monotonic()
        if self._logged is None or now - self._logged >= LOG_INTERVAL:
            since = "" if self._logged is None else \
                f" ({self._failures} failed attempts in the last {now - self._logged:.0f}s)"
            log.error("accept on %s: %s%s; retrying every %gs until connections close",
                      self._name, exc.strerror or exc, since, ACCEPT_RETRY)
            self._failures, self._logged = 0, now
        self._loop.remove_reader(self.sock.fileno())
        self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self.sock.fileno(), self._accept)


def serve_streams(sock: socket.socket, connected) -> Listener:
    """`asyncio.start_server`'s role: `connected(reader, writer)` for each connection."""
    loop = asyncio.get_running_loop()
    return Listener(sock, lambda: asyncio.StreamReaderProtocol(
        asyncio.StreamReader(loop=loop), connected, loop=loop))


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname()) or "socket"
    except OSError:
        return "socket"
