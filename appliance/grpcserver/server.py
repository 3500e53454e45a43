"""A gRPC server on asyncio and our own HTTP/2 (h2.py), for the daemon's handlers.

Why not grpc.aio: its C core hands every call between four threads (event-engine
poller and worker, completion-queue poller, the loop), which cost ≈ 0.2 ms per call
here — more than the handlers themselves (bench/NOTES.md). Here a request is parsed,
handled and answered on the event loop's thread.

Handlers are `MethodHandler`s (the fields of grpc's RpcMethodHandler; stubs.py builds
them from the services' descriptors), and the context passed to them offers what
grpc.aio's does for the daemon's handlers:
`invocation_metadata`, `abort`, `set_code`/`set_details`/`code`, `read`/`write`,
`time_remaining`, `peer`, `cancelled`/`done`.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import logging
import socket
import time
import zlib
from typing import NamedTuple

from . import h2
from .status import EOF, StatusCode

log = logging.getLogger("appliance.grpc")

_RESERVED = {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding",
             b"grpc-accept-encoding", b"user-agent"}
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_RESPONSE_HEADERS = h2.STATUS_200 + h2.encode_headers([(b"content-type", b"application/grpc")])
_OK_TRAILERS = h2.encode_headers([(b"grpc-status", b"0")])
_QUEUED_BEFORE_BACKPRESSURE = 4   # request messages buffered before acks wait for reads
_WRITE_CHUNK = 256 << 10          # DATA bytes written before looking at the transport's pause


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


# Both are BaseExceptions so that handlers' `except Exception` (grpcutil.rpc's) pass
# them through instead of turning them into UNKNOWN errors logged as unexpected.
class _Abort(BaseException):
    """Raised by `abort()`; ends the handler with the status already set."""


class _Finished(BaseException):
    """The stream is gone (reset by the client or the connection closed)."""


def _status_bytes(code: StatusCode, details: str) -> bytes:
    fields = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        fields.append((b"grpc-message", _percent_encode(details)))
    return h2.encode_headers(fields)


def _percent_encode(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in raw)


def _parse_timeout(value: bytes) -> float | None:
    """gRPC's "1 to 8 ASCII digits and a unit"; anything else is ignored (int() alone
    would take signs, spaces, underscores and numbers too large for a float)."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


class Call:
    """One RPC: the servicer context its handler sees, and the stream's state."""

    def __init__(self, conn: "_Connection", stream_id: int, method: str, metadata: tuple,
                 deadline: float | None, request_open: bool):
        self._conn, self._stream_id, self._method = conn, stream_id, method
        self._metadata = metadata
        self._deadline = deadline
        self._request_open = request_open   # the client may still send messages
        self._buffer = bytearray()
        self._messages: collections.deque = collections.deque()
        self._unacked = 0                    # flow-controlled bytes held for backpressure
        self._readable: asyncio.Future | None = None
        self._writable: asyncio.Future | None = None
        self._deserialize = None
        self._headers_sent = False
        self._done = False                   # trailers sent or stream reset
        self._reset = False
        self._failed = False                 # the request stream broke (see _fail)
        self._server_stream = False          # one request, a stream of responses
        self._stopping = False               # cancelled by Server.stop
        self._code: StatusCode | None = None
        self._details = ""
        self._trailing: list = []            # encoded now: bad metadata fails the handler
        self.task: asyncio.Task | None = None

    # --- the servicer context -----------------------------------------------------

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._conn.peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self._reset

    def done(self) -> bool:
        return self._done

    def set_code(self, code: StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = _metadata_fields(metadata)

    async def send_initial_metadata(self, metadata) -> None:
        self._send_headers()

    async def abort(self, code: StatusCode, details: str = "", trailing_metadata=()):
        if code == StatusCode.OK:
            raise ValueError("abort with StatusCode.OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = _metadata_fields(trailing_metadata)
        raise _Abort()

    async def read(self):
        """The next request message, or EOF after the client's last."""
        while not self._messages:
            if self._failed:
                raise _Abort()
            if not self._request_open:
                return EOF
            if self._reset:
                raise asyncio.CancelledError()
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        data = self._messages.popleft()
        if self._unacked and len(self._messages) < _QUEUED_BEFORE_BACKPRESSURE:
            self._conn.acknowledge(self._stream_id, self._unacked)
            self._unacked = 0
        if self._deserialize is None:
            return data
        try:
            return self._deserialize(data)
        except Exception as exc:  # the client's fault, not the handler's (grpc-go's words)
            raise _internal(self, f"grpc: error unmarshalling request: {exc}") from None

    async def write(self, message) -> None:
        await self._send_message(message)

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self.read()
        if message is EOF:
            raise StopAsyncIteration
        return message

    # --- from the connection ------------------------------------------------------

    def _received(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        if self._failed:  # the rest of a broken request: only return its window
            self._conn.acknowledge(self._stream_id, flow_length)
            return
        if data:
            self._buffer += data
            self._split_messages()
        if len(self._messages) < _QUEUED_BEFORE_BACKPRESSURE:
            self._conn.acknowledge(self._stream_id, flow_length + self._unacked)
            self._unacked = 0
        else:
            self._unacked += flow_length
        if end_stream:
            self._request_open = False
            if self._buffer:
                self._fail(StatusCode.INTERNAL, "grpc: truncated message")
        self._wake_reader()

    def _split_messages(self) -> None:
        buf = self._buffer
        limit = self._conn.server.max_receive
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if length > limit:
                self._fail(StatusCode.RESOURCE_EXHAUSTED,
                           f"grpc: received message larger than max ({length} vs. {limit})")
                return
            if len(buf) < 5 + length:
                return
            compressed, data = buf[0], bytes(buf[5:5 + length])
            del buf[:5 + length]
            if compressed:
                inflater = zlib.decompressobj(wbits=31)  # gzip, the one codec we accept
                try:  # at most limit + 1 bytes: a small message may inflate to gigabytes
                    data = inflater.decompress(data, limit + 1)
                except zlib.error:
                    data = None
                if data is not None and len(data) > limit:
                    self._fail(StatusCode.RESOURCE_EXHAUSTED, "grpc: received message after "
                               f"decompression larger than max ({limit})")
                    return
                if data is None or not inflater.eof:
                    self._fail(StatusCode.INTERNAL, "grpc: failed to decompress message")
                    return
            self._messages.append(data)

    def _fail(self, code: StatusCode, details: str) -> None:
        """A broken request stream: the handler's next read ends the call with this status."""
        self._buffer.clear()
        self._messages.clear()
        self._request_open = False
        self._failed = True
        self._code, self._details = code, details

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _on_reset(self) -> None:
        self._reset = True
        self._done = True
        self._request_open = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._wake_reader()
        self._wake_writer()

    # --- to the connection ----------------------------------------------------------

    def _send_headers(self) -> None:
        if not self._headers_sent and not self._done:
            self._headers_sent = True
            self._conn.write(h2.frame(h2.HEADERS, h2.END_HEADERS, self._stream_id,
                                      _RESPONSE_HEADERS))

    async def _send_message(self, message, serializer=None) -> None:
        if self._done:
            raise _Finished()
        data = (serializer or self._serialize)(message)
        limit = self._conn.server.max_send
        if len(data) > limit:
            raise _SendTooLarge(len(data), limit)
        self._send_headers()
        await self._send_data(len(data).to_bytes(5, "big") + data)

    async def _send_data(self, data: bytes) -> None:
        conn, sid = self._conn, self._stream_id
        view = memoryview(data)
        while view:
            n = conn.h2.sendable(sid, len(view))
            if n == 0:
                if self._done:
                    raise _Finished()
                self._writable = asyncio.get_running_loop().create_future()
                conn.blocked.add(self)
                try:
                    await self._writable
                finally:
                    self._writable = None
                    conn.blocked.discard(self)
                continue
            n = min(n, _WRITE_CHUNK)
            chunk, step = view[:n], conn.h2.peer_frame_size
            frames = [h2.frame(h2.DATA, 0, sid, bytes(chunk[offset:offset + step]))
                      for offset in range(0, n, step)]
            conn.h2.sent(sid, n)
            view = view[n:]
            conn.write(b"".join(frames))
            if conn.paused:
                await conn.drained()
                if self._done:
                    raise _Finished()

    def _finish(self, code: StatusCode, details: str, response: bytes | None = None):
        """Send the response (if any) and the status, in one write where the window allows."""
        if self._done:
            return
        status = _OK_TRAILERS if code == StatusCode.OK and not details \
            else _status_bytes(code, details)
        if self._trailing:
            status += h2.encode_headers(self._trailing)
        out = []
        if not self._headers_sent:
            self._headers_sent = True
            if response is None:  # trailers-only
                out.append(h2.headers(self._stream_id, _RESPONSE_HEADERS + status, True,
                                      self._conn.h2.peer_frame_size))
                return self._close(out)
            out.append(h2.frame(h2.HEADERS, h2.END_HEADERS, self._stream_id, _RESPONSE_HEADERS))
        if response is not None:
            out.append(h2.frame(h2.DATA, 0, self._stream_id, response))
            self._conn.h2.sent(self._stream_id, len(response))
        # a long message or trailing metadata may need more than one frame
        out.append(h2.headers(self._stream_id, status, True, self._conn.h2.peer_frame_size))
        self._close(out)

    def _close(self, out: list) -> None:
        self._done = True
        if self._request_open:  # the client need not send the rest
            out.append(h2.rst_stream(self._stream_id, h2.NO_ERROR))
        self._conn.write(b"".join(out))
        self._conn.end_call(self)


class _SendTooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"grpc: trying to send message larger than max ({size} vs. {limit})")


def _metadata_fields(metadata) -> list:
    fields = []
    for key, value in metadata:
        key_bytes = key.lower().encode("ascii")
        if key.endswith("-bin"):
            value = base64.b64encode(value).rstrip(b"=")
        elif isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            raise TypeError(f"metadata {key!r}: {type(value).__name__} is not str or bytes")
        fields.append((key_bytes, value))
    return fields


def _request_metadata(headers) -> tuple[str, tuple, float | None]:
    path, timeout, metadata = "", None, []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value.decode("utf-8", "replace")
            continue
        if name in _RESERVED:
            if name == b"grpc-timeout":
                timeout = _parse_timeout(value)
            elif name == b"user-agent":
                metadata.append(("user-agent", value.decode("latin-1")))
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            metadata.append((key, value.decode("utf-8", "replace")))
    deadline = None if timeout is None else time.monotonic() + timeout
    return path, tuple(metadata), deadline


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
        try:
            events = self.h2.receive(data, out)
        except h2.ConnectionError_ as exc:
            log.debug("gRPC connection error from %s: %s", self.peer, exc)
            self.transport.write(b"".join(out) + h2.goaway(
                self.h2.highest_stream_id, exc.code, str(exc).encode()))
            self.transport.close()
            return
        if out:
            self.transport.write(b"".join(out))
        for event in events:
            kind = type(event)
            if kind is h2.Data:
                call = self.calls.get(event.stream_id)
                if call is None:  # already answered: return the window anyway
                    self.acknowledge(event.stream_id, event.flow_length)
                else:
                    call._received(event.data, event.flow_length, event.end_stream)
            elif kind is h2.Request:
                self._start(event)
            elif kind is h2.WindowOpened:
                self._window_opened(event.stream_id)
            elif kind is h2.Reset:
                call = self.calls.pop(event.stream_id, None)
                self.h2.close_stream(event.stream_id)
                if call is not None:
                    call._on_reset()
            elif kind is h2.GoAway:
                self._going_away = True

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call._on_reset()
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
        self.calls.pop(call._stream_id, None)
        self.h2.close_stream(call._stream_id)
        if self._going_away and not self.calls:
            self.transport.close()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            for call in list(self.blocked):
                call._wake_writer()
        else:
            call = self.calls.get(stream_id)
            if call is not None:
                call._wake_writer()

    def _start(self, event: h2.Request) -> None:
        stream_id = event.stream_id
        path, metadata, deadline = _request_metadata(event.headers)
        call = Call(self, stream_id, path, metadata, deadline, not event.end_stream)
        self.calls[stream_id] = call
        if self.server.draining:
            call._finish(StatusCode.UNAVAILABLE, "the server is stopping")
            return
        call.task = asyncio.get_running_loop().create_task(self.server.handle(call))

    def go_away(self) -> None:
        self._going_away = True
        self.write(h2.goaway(self.h2.highest_stream_id, h2.NO_ERROR))
        if not self.calls:
            self.transport.close()


class Server:
    """grpc.aio.server's role for the daemon: handlers, listeners, start, graceful stop."""

    def __init__(self, max_receive: int = 16 << 20, max_send: int = 16 << 20,
                 interceptors=()):
        self.max_receive, self.max_send = max_receive, max_send
        self._interceptors = list(interceptors)
        self._handlers = []
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: set[_Connection] = set()
        self.draining = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._handlers.extend(handlers)

    async def serve_socket(self, sock: socket.socket, ssl_context=None) -> None:
        """Serve on a bound, listening socket (unix or TCP; TLS with `ssl_context`)."""
        loop = asyncio.get_running_loop()
        server = await (loop.create_unix_server if sock.family == socket.AF_UNIX
                        else loop.create_server)(lambda: _Connection(self), sock=sock,
                                                 ssl=ssl_context)
        self._servers.append(server)

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
                if call._server_stream and call.task is not None and not call.task.done():
                    call._stopping = True
                    call.task.cancel()
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
        details = _Details(call._method, call._metadata)
        try:
            handler = await self._intercepted(details) if self._interceptors \
                else self._lookup(details)
            if handler is None:
                call._finish(StatusCode.UNIMPLEMENTED, self._unimplemented(call._method))
                return
            call._deserialize = handler.request_deserializer
            call._server_stream = handler.response_streaming and not handler.request_streaming
            call._serialize = handler.response_serializer or (lambda m: m)
            if call._deadline is None:
                response = await self._run(call, handler)
            else:
                async with asyncio.timeout_at(_loop_time(call._deadline)):
                    response = await self._run(call, handler)
            # serialized inside the try: a response of the wrong type fails like a handler
            data = call._serialize(response) \
                if response is not None and call._code in (None, StatusCode.OK) else None
        except _Abort:
            call._finish(call._code, call._details)
        except (asyncio.CancelledError, TimeoutError) as exc:
            if call._done:
                return   # reset by the client or the connection is gone
            if isinstance(exc, TimeoutError) and call._deadline is not None \
                    and time.monotonic() >= call._deadline:
                call._finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            elif isinstance(exc, TimeoutError):
                call._finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            elif call._stopping:
                call._finish(StatusCode.UNAVAILABLE, "the server is stopping")
            else:
                call._finish(StatusCode.CANCELLED, "Cancelled")
                raise
        except _Finished:
            pass
        except _SendTooLarge as exc:
            call._finish(StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except NotImplementedError as exc:
            call._finish(call._code or StatusCode.UNIMPLEMENTED,
                         call._details or str(exc))
        except Exception as exc:
            log.exception("unexpected error in %s", call._method)
            call._finish(StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        else:
            if call._code not in (None, StatusCode.OK):
                call._finish(call._code, call._details)
            elif data is None:
                call._finish(StatusCode.OK, "")
            elif len(data) > self.max_send:
                call._finish(StatusCode.RESOURCE_EXHAUSTED,
                             str(_SendTooLarge(len(data), self.max_send)))
            elif call._conn.h2.sendable(call._stream_id, len(data) + 5) == len(data) + 5 \
                    and len(data) + 5 <= call._conn.h2.peer_frame_size:
                call._finish(StatusCode.OK, "", len(data).to_bytes(5, "big") + data)
            else:
                try:
                    await call._send_message(data, serializer=_same)
                except _Finished:
                    return
                call._finish(StatusCode.OK, "")

    def _unimplemented(self, path: str) -> str:
        """grpc-go's words for an unknown method or service."""
        service, _, method = path[1:].partition("/")
        if not method:
            return f"malformed method name: {path!r}"
        known = any(generic.handlers(service) for generic in self._handlers
                    if hasattr(generic, "handlers"))
        return f"unknown method {method} for service {service}" if known \
            else f"unknown service {service}"

    @staticmethod
    async def _run(call: Call, handler):
        """Run the handler; returns a unary response (None for streaming handlers)."""
        if handler.request_streaming:
            request = call
        else:
            request = await call.read()
            if request is EOF:
                raise _internal(call, "grpc: no request message for a unary method")
            if call._messages or call._request_open and await _more_than_one(call):
                raise _internal(call, "grpc: too many request messages for a unary method")
        if handler.response_streaming:
            behaviour = handler.unary_stream or handler.stream_stream
            result = behaviour(request, call)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    await call._send_message(item)
            elif hasattr(result, "__await__"):
                await result
            elif result is not None:
                for item in result:
                    await call._send_message(item)
            return None
        behaviour = handler.unary_unary or handler.stream_unary
        response = behaviour(request, call)
        if hasattr(response, "__await__"):
            response = await response
        return response


def _same(data):
    return data


def _loop_time(deadline: float) -> float:
    """Our deadlines are time.monotonic(); the loop's clock is the same on Linux,
    but convert anyway in case a loop uses another."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


def _internal(call: Call, details: str) -> _Abort:
    call._code, call._details = StatusCode.INTERNAL, details
    return _Abort()


async def _more_than_one(call: Call) -> bool:
    """A unary method's request must end after its one message."""
    while call._request_open and not call._messages:
        call._readable = asyncio.get_running_loop().create_future()
        try:
            await call._readable
        finally:
            call._readable = None
    return bool(call._messages)
