"""A gRPC server on asyncio and our own HTTP/2 (h2.py), for the daemon's handlers.

Why not grpc.aio: its C core hands every call between four threads (event-engine
poller and worker, completion-queue poller, the loop), which cost ≈ 0.2 ms per call
here — more than the handlers themselves (bench/NOTES.md). Here a request is parsed,
handled and answered on the event loop's thread.

Handlers are `MethodHandler`s (the fields of grpc's RpcMethodHandler; stubs.py builds
them from the services' descriptors), and the context passed to them (call.py) offers
what grpc.aio's does for the daemon's handlers:
`invocation_metadata`, `abort`, `set_code`/`set_details`/`code`, `read`/`write`,
`time_remaining`, `peer`, `cancelled`/`done`.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import NamedTuple

from ..acceptor import Listener
from ..errdefs import StatusCode
from . import h2
from .call import Abort, Call, Finished, SendTooLarge, request_metadata

log = logging.getLogger("appliance.grpc")


class _Details(NamedTuple):
    """What interceptors and generic handlers get (grpc.HandlerCallDetails' fields)."""
    method: str
    invocation_metadata: tuple


class MethodHandler(NamedTuple):
    """One method's kind, codecs and behaviour (the fields of grpc's RpcMethodHandler)."""
    request_streaming: bool
    response_streaming: bool
    request_deserializer: object
    response_serializer: object
    unary_unary: object = None
    unary_stream: object = None
    stream_unary: object = None
    stream_stream: object = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: "Server"):
        self.server = server
        self.h2 = h2.Connection()
        self.calls: dict[int, Call] = {}
        self.blocked: set[Call] = set()     # waiting for a flow-control window
        self.paused = False
        self._resumed = asyncio.Event()   # an Event: several calls may wait for it at once
        self._resumed.set()
        self.transport = None
        self.peer = ""
        self._going_away = False

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        name = transport.get_extra_info("peername")
        self.peer = f"ipv4:{name[0]}:{name[1]}" if isinstance(name, tuple) else "unix:"
        self.server.connections.add(self)
        transport.write(self.h2.initial_bytes())

    def data_received(self, data: bytes) -> None:
        out: list = []
        self.h2.windows_wanted = bool(self.blocked)
        try:
            events = self.h2.receive(data, out)
        except h2.ConnectionError_ as exc:
            log.log(logging.WARNING if exc.code == h2.ENHANCE_YOUR_CALM else logging.DEBUG,
                    "gRPC connection error from %s: %s", self.peer, exc)
            self.transport.write(b"".join(out) + self.h2.goaway(exc.code, str(exc).encode()))
            self.transport.close()
            return
        if out:
            self.transport.write(b"".join(out))
        # Calls start once the whole read is taken in (a unary request is complete by
        # then), and one reset in the same read never starts (rapid reset's pattern).
        starting = []
        for event in events:
            kind = type(event)
            if kind is h2.Data:
                call = self.calls.get(event.stream_id)
                if call is None:  # already answered: return the window anyway
                    self.acknowledge(event.stream_id, event.flow_length)
                else:
                    call.received(event.data, event.flow_length, event.end_stream)
            elif kind is h2.Request:
                call = self._call(event)
                if call is not None:
                    starting.append(call)
            elif kind is h2.WindowOpened:
                self._window_opened(event.stream_id)
            elif kind is h2.Reset:
                call = self.calls.pop(event.stream_id, None)
                self.h2.close_stream(event.stream_id)
                if call is not None:
                    call.stream_reset()
            elif kind is h2.GoAway:
                self._going_away = True
        for call in starting:
            if not call.done():
                self._run(call)

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call.stream_reset()
        self.calls.clear()
        self._resumed.set()

    def pause_writing(self) -> None:
        self.paused = True
        self._resumed.clear()
        # Stop reading too: what we read may owe replies (PING and SETTINGS acks) that
        # would pile up without bound for a client that sends but does not read.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self._resumed.set()
        self.transport.resume_reading()

    async def drained(self) -> None:
        if self.paused and not self.transport.is_closing():
            await self._resumed.wait()

    # --- calls ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def acknowledge(self, stream_id: int, n: int) -> None:
        if n:
            updates = self.h2.consumed(stream_id, n)
            if updates:
                self.write(updates)

    def end_call(self, call: Call) -> None:
        """The call sent its last frame (h2 forgot the stream then)."""
        self.calls.pop(call.stream_id, None)
        if self._going_away and not self.calls:
            self.transport.close()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            for call in list(self.blocked):
                call.window_opened()
        else:
            call = self.calls.get(stream_id)
            if call is not None:
                call.window_opened()

    def _call(self, event: h2.Request) -> Call | None:
        """The call a request opens, to be started (None: refused at once)."""
        stream_id = event.stream_id
        path, metadata, deadline = request_metadata(event.headers)
        call = Call(self, stream_id, path, metadata, deadline, not event.end_stream)
        self.calls[stream_id] = call
        if self.server.draining:
            call.finish(StatusCode.UNAVAILABLE, "the server is stopping")
            return None
        return call

    def _run(self, call: Call) -> None:
        call.task = asyncio.get_running_loop().create_task(self.server.handle(call))

    def go_away(self) -> None:
        self._going_away = True
        self.write(self.h2.goaway(h2.NO_ERROR))
        if not self.calls:
            self.transport.close()


class Server:
    """grpc.aio.server's role for the daemon: handlers, listeners, start, graceful stop."""

    def __init__(self, max_receive: int = 16 << 20, max_send: int = 16 << 20,
                 interceptors=()):
        self.max_receive, self.max_send = max_receive, max_send
        self._interceptors = list(interceptors)
        self._handlers = []
        self._methods: dict[str, object] = {}   # path → handler, see _handler
        self._servers: list[Listener] = []
        self.connections: set[_Connection] = set()
        self.draining = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._handlers.extend(handlers)
        self._methods.clear()

    async def serve_socket(self, sock: socket.socket, ssl_context=None) -> None:
        """Serve on a bound, listening socket (unix or TCP; TLS with `ssl_context`)."""
        self._servers.append(Listener(sock, lambda: _Connection(self), ssl=ssl_context))

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish within `grace` s, then cancel them.

        Server streams (event subscriptions, reads) end at once with UNAVAILABLE: a
        subscription never finishes by itself, and containerd drops them all on stop.
        """
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.go_away()
            for call in list(conn.calls.values()):
                call.stop()
        tasks = [c.task for conn in self.connections for c in conn.calls.values()
                 if c.task is not None and not c.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for conn in list(self.connections):
            conn.transport.abort()

    # --- one call ----------------------------------------------------------------------

    def _handler(self, call: Call):
        """The method's handler, remembered by path when every generic handler says its
        answer depends on the path only (`stable_handlers`, as stubs.GrpcServices')."""
        handler = self._methods.get(call.method)
        if handler is None:
            handler = self._lookup(_Details(call.method, call.invocation_metadata()))
            if handler is not None and all(getattr(generic, "stable_handlers", False)
                                           for generic in self._handlers):
                self._methods[call.method] = handler
        return handler

    def _lookup(self, details: _Details):
        for generic in self._handlers:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    async def _intercepted(self, details: _Details):
        async def continuation(d, index=0):
            if index == len(self._interceptors):
                return self._lookup(d)
            return await self._interceptors[index].intercept_service(
                lambda nd: continuation(nd, index + 1), d)
        return await continuation(details)

    async def handle(self, call: Call) -> None:
        try:
            handler = await self._intercepted(_Details(call.method, call.invocation_metadata())) \
                if self._interceptors else self._handler(call)
            if handler is None:
                call.finish(StatusCode.UNIMPLEMENTED, self._unimplemented(call.method))
                return
            if call.deadline is None:
                data = await call.run(handler)
            else:
                call.start_deadline()   # while the handler runs
                try:
                    data = await call.run(handler)
                finally:
                    call.stop_deadline()
        except Abort:
            call.finish(call.code(), call.details())
        except (asyncio.CancelledError, TimeoutError) as exc:
            if call.done():
                return   # reset by the client or the connection is gone
            if call.expired or isinstance(exc, TimeoutError) and call.deadline is not None \
                    and time.monotonic() >= call.deadline:
                if call.expired:
                    asyncio.current_task().uncancel()
                call.finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            elif isinstance(exc, TimeoutError):
                call.finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            elif call.stopped:
                call.finish(StatusCode.UNAVAILABLE, "the server is stopping")
            else:
                call.finish(StatusCode.CANCELLED, "Cancelled")
                raise
        except Finished:
            pass
        except SendTooLarge as exc:
            call.finish(StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except NotImplementedError as exc:
            call.finish(call.code() or StatusCode.UNIMPLEMENTED, call.details() or str(exc))
        except Exception as exc:
            log.exception("unexpected error in %s", call.method)
            call.finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        else:
            if data is not None:  # (run gives none when the handler set another status)
                rest = call.respond(data)
                if rest is not None:   # windows shut: the rest as they open
                    await rest
            elif call.code() not in (None, StatusCode.OK):
                call.finish(call.code(), call.details())
            else:
                call.finish(StatusCode.OK, "")

    def _unimplemented(self, path: str) -> str:
        """grpc-go's words for an unknown method or service."""
        service, _, method = path[1:].partition("/")
        if not method:
            return f"malformed method name: {path!r}"
        known = any(generic.handlers(service) for generic in self._handlers
                    if hasattr(generic, "handlers"))
        return f"unknown method {method} for service {service}" if known \
            else f"unknown service {service}"

