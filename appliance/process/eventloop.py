"""The daemon's event loop: asyncio's, with an accept that backs off when out of fds.

asyncio 3.11's accept loop (`_accept_connection`) goes on calling accept() after EMFILE,
logging a traceback and scheduling one more retry per attempt: with the fd limit reached
the retries multiply into thousands of tracebacks a second and a busy loop. Here the
first failure stops accepting on that socket for `ACCEPT_RETRY` s and is logged once
per `LOG_INTERVAL` s; accepting resumes by itself once clients close connections.
This overrides a private method (same signature in 3.11 and 3.12; the daemon's Python
is pinned), covering every listener at once: gRPC, TTRPC, debug and metrics.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

log = logging.getLogger("appliance.accept")
ACCEPT_RETRY = 1.0    # seconds without accept() on a socket after running out of fds
LOG_INTERVAL = 10.0   # at most one line per socket per this many seconds
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class EventLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        super().__init__()
        self._accept_failures: dict[int, list] = {}   # fd → [failures, last logged]

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, *timeouts):
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._accept_failed(sock, exc)
                self._remove_reader(sock.fileno())
                self.call_later(ACCEPT_RETRY, self._resume_accepting, protocol_factory, sock,
                                sslcontext, server, backlog, *timeouts)
                return
            self.create_task(self._accept_connection2(
                protocol_factory, conn, {"peername": addr}, sslcontext, server, *timeouts))
        self._accept_recovered(sock)

    def _resume_accepting(self, protocol_factory, sock, sslcontext, server, *args):
        if sock.fileno() != -1 and (server is None or server.is_serving()):  # not closed since
            self._start_serving(protocol_factory, sock, sslcontext, server, *args)

    def _accept_failed(self, sock, exc: OSError) -> None:
        state = self._accept_failures.setdefault(sock.fileno(), [0, None])
        state[0] += 1
        now = time.monotonic()
        if state[1] is None or now - state[1] >= LOG_INTERVAL:
            since = "" if state[1] is None else \
                f" ({state[0]} failed attempts in the last {now - state[1]:.0f}s)"
            log.error("accept on %s: %s%s; retrying every %gs until connections close",
                      _name(sock), exc.strerror or exc, since, ACCEPT_RETRY)
            state[:] = [0, now]

    def _accept_recovered(self, sock) -> None:
        if self._accept_failures.pop(sock.fileno(), None) is not None:
            log.info("accepting connections on %s again", _name(sock))


def _name(sock) -> str:
    try:
        return str(sock.getsockname()) or "socket"
    except OSError:
        return "socket"
