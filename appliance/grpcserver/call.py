"""One gRPC call: the servicer context its handler sees, and its stream's state."""
from __future__ import annotations

import asyncio
import base64
import collections
import time
import zlib
from typing import TYPE_CHECKING

from ..errdefs import StatusCode
from . import h2
from .status import EOF

if TYPE_CHECKING:
    from .server import _Connection

_RESERVED = {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding",
             b"grpc-accept-encoding", b"user-agent"}
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_RESPONSE_HEADERS = h2.STATUS_200 + h2.encode_headers([(b"content-type", b"application/grpc")])
_OK_TRAILERS = h2.encode_headers([(b"grpc-status", b"0")])
_QUEUED_BEFORE_BACKPRESSURE = 4   # request messages buffered before acks wait for reads
_WRITE_CHUNK = 256 << 10          # DATA bytes written before looking at the transport's pause


# Both are BaseExceptions so that handlers' `except Exception` (grpcutil.rpc's) pass
# them through instead of turning them into UNKNOWN errors logged as unexpected.

class Abort(BaseException):
    """Raised by `abort()`; ends the handler with the status already set."""


class Finished(BaseException):
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
    """One RPC: the servicer context its handler sees, and the stream's state.

    Besides the servicer context, what the server uses: `stream_id`, `method`,
    `deadline` and `task`; for the connection `received`, `stream_reset` and
    `window_opened`; for dispatch `run` (the handler), `respond` (a unary
    answer), `finish` (a status), `expire`/`expired` when its deadline passes,
    and `stop`/`stopped` when the server stops.
    """

    # Most of a call's state keeps these values for its whole life: class defaults, set
    # on the instance only when they change (a call is made for every request).
    _unacked = 0                    # flow-controlled bytes held for backpressure
    _readable: asyncio.Future | None = None
    _writable: asyncio.Future | None = None
    _deserialize = None
    _serialize = None
    _headers_sent = False
    _done = False                   # trailers sent or stream reset
    _reset = False
    _failed = False                 # the request stream broke (see _fail)
    _server_stream = False          # one request, a stream of responses
    stopped = False                 # cancelled by Server.stop
    expired = False                 # cancelled by its deadline
    _code: StatusCode | None = None
    _details = ""
    _trailing: list | tuple = ()    # encoded when set: bad metadata fails the handler
    task: asyncio.Task | None = None
    _timer: asyncio.TimerHandle | None = None

    def __init__(self, conn: "_Connection", stream_id: int, method: str, metadata: tuple,
                 deadline: float | None, request_open: bool):
        self._conn, self.stream_id, self.method = conn, stream_id, method
        self._metadata = metadata
        self.deadline = deadline             # time.monotonic(), or None
        self._request_open = request_open   # the client may still send messages
        self._buffer = bytearray()
        self._messages: collections.deque = collections.deque()

    # --- the servicer context -----------------------------------------------------

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._conn.peer

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

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
        if not self._headers_sent and not self._done:
            self._conn.write(self._response_headers())

    async def abort(self, code: StatusCode, details: str = "", trailing_metadata=()):
        if code == StatusCode.OK:
            raise ValueError("abort with StatusCode.OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = _metadata_fields(trailing_metadata)
        raise Abort()

    async def read(self):
        """The next request message, or EOF after the client's last."""
        while not self._messages:
            if self._failed:
                raise Abort()
            if not self._request_open:
                return EOF
            if self._reset:
                raise asyncio.CancelledError()
            await self._wait_for_data()
        return self._next_message()

    def _next_message(self):
        """The first message queued (there is one), deserialized."""
        data = self._messages.popleft()
        if self._unacked and len(self._messages) < _QUEUED_BEFORE_BACKPRESSURE:
            self._conn.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0
        if self._deserialize is None:
            return data
        try:
            return self._deserialize(data)
        except Exception as exc:  # the client's fault, not the handler's (grpc-go's words)
            raise self._internal(f"grpc: error unmarshalling request: {exc}") from None

    async def write(self, message) -> None:
        if self._done:
            raise Finished()
        data = self._message(self._serialize(message))
        await self._send_data(memoryview(data), [] if self._headers_sent else
                              [self._response_headers()])

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self.read()
        if message is EOF:
            raise StopAsyncIteration
        return message

    # --- from the connection ------------------------------------------------------

    def received(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        """DATA (or the end of the request) for this stream."""
        if self._failed:  # the rest of a broken request: only return its window
            self._conn.acknowledge(self.stream_id, flow_length)
            return
        if data:
            if not self._buffer and not data[0] and len(data) >= 5 and \
                    int.from_bytes(data[1:5], "big") == len(data) - 5 <= \
                    self._conn.server.max_receive:   # one whole uncompressed message
                self._messages.append(data[5:])
            else:
                self._buffer += data
                self._split_messages()
        if len(self._messages) < _QUEUED_BEFORE_BACKPRESSURE:
            self._conn.acknowledge(self.stream_id, flow_length + self._unacked)
            self._unacked = 0
        else:
            self._unacked += flow_length
        if end_stream:
            self._request_open = False
            if self._buffer:
                self._fail(StatusCode.INTERNAL, "grpc: truncated message")
        self._wake_reader()

    def stream_reset(self) -> None:
        """The stream is gone (reset by the client, or the connection closed): the
        handler is cancelled and nothing more is sent."""
        self._reset = True
        self._done = True
        self._request_open = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._wake_reader()
        self.window_opened()

    def window_opened(self) -> None:
        """A flow-control window this call may be waiting for has grown."""
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

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

    async def _wait_for_data(self) -> None:
        """Until the connection brings data, the end of the request or a reset."""
        self._readable = asyncio.get_running_loop().create_future()
        try:
            await self._readable
        finally:
            self._readable = None

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    # --- from dispatch ----------------------------------------------------------------

    async def run(self, handler) -> bytes | None:
        """Run the method's handler (a MethodHandler) with this call as its context;
        returns its unary response serialized (None for streaming handlers, for no
        response or for a status other than OK set by the handler)."""
        self._deserialize = handler.request_deserializer
        self._serialize = handler.response_serializer or _identity
        self._server_stream = handler.response_streaming and not handler.request_streaming
        if handler.request_streaming:
            request = self
        elif not self._request_open and len(self._messages) == 1:   # all here: the usual
            request = self._next_message()
        else:
            request = await self.read()
            if request is EOF:
                raise self._internal("grpc: no request message for a unary method")
            while self._request_open and not self._messages:
                await self._wait_for_data()
            if self._messages:
                raise self._internal("grpc: too many request messages for a unary method")
        if handler.response_streaming:
            behaviour = handler.unary_stream or handler.stream_stream
            result = behaviour(request, self)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    await self.write(item)
            elif hasattr(result, "__await__"):
                await result
            elif result is not None:
                for item in result:
                    await self.write(item)
            return None
        behaviour = handler.unary_unary or handler.stream_unary
        response = behaviour(request, self)
        if hasattr(response, "__await__"):
            response = await response
        if response is None or self._code not in (None, StatusCode.OK):
            return None
        return self._serialize(response)  # a response of the wrong type fails here

    def respond(self, data: bytes):
        """A unary call's serialized response and the OK status: one write where the
        windows allow; else returns a coroutine that sends the rest as they open."""
        limit = self._conn.server.max_send
        if len(data) > limit:
            return self.finish(StatusCode.RESOURCE_EXHAUSTED, str(SendTooLarge(len(data), limit)))
        if self._done:
            return
        message = len(data).to_bytes(5, "big") + data
        h2_conn, out = self._conn.h2, []
        if not self._headers_sent and not self._trailing:   # the usual case: one piece
            wire = h2_conn.unary_answer(self.stream_id, _RESPONSE_HEADERS, message,
                                        _OK_TRAILERS, self._request_open)
            if wire is not None:
                self._headers_sent = self._done = True
                self._conn.write(wire)
                self._conn.end_call(self)
                return
        if not self._headers_sent:
            self._headers_sent = True
            out.append(h2_conn.send_headers(self.stream_id, _RESPONSE_HEADERS))
        wire, n = h2_conn.send_data(self.stream_id, message, _WRITE_CHUNK)
        out.append(wire)
        if n < len(message):  # the rest as the windows open
            self._conn.write(b"".join(out))
            return self._respond_rest(memoryview(message)[n:])
        self._end(StatusCode.OK, "", out)

    async def _respond_rest(self, view: memoryview) -> None:
        try:
            out = await self._send_data(view, [], keep_last=True)
        except Finished:
            return
        self._end(StatusCode.OK, "", out)

    def finish(self, code: StatusCode, details: str) -> None:
        """Send the status (and the trailing metadata) and end the stream."""
        self._end(code, details, [])

    def start_deadline(self) -> None:
        """The deadline's timer (a bare one, not asyncio.timeout_at, ≈ 4× dearer per
        call: kubelet gives every CRI call a deadline)."""
        if self.deadline is not None:
            loop = asyncio.get_running_loop()
            # our deadlines are time.monotonic(): the loop's clock on Linux, but a loop
            # may use another
            self._timer = loop.call_at(loop.time() + (self.deadline - time.monotonic()),
                                       self.expire)

    def stop_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def expire(self) -> None:
        """The deadline passed: the handler is cancelled, to end with DEADLINE_EXCEEDED."""
        if self.task is not None and not self.task.done() and not self._done:
            self.expired = True
            self.task.cancel()

    def stop(self) -> None:
        """The server stops: a server stream (a subscription never ends by itself) is
        cancelled, to end with UNAVAILABLE."""
        if self._server_stream and self.task is not None and not self.task.done():
            self.stopped = True
            self.task.cancel()

    # --- to the connection ----------------------------------------------------------

    def _response_headers(self) -> bytes:
        self._headers_sent = True
        return self._conn.h2.send_headers(self.stream_id, _RESPONSE_HEADERS)

    def _message(self, data: bytes) -> bytes:
        """A serialized message with gRPC's length prefix (uncompressed)."""
        limit = self._conn.server.max_send
        if len(data) > limit:
            raise SendTooLarge(len(data), limit)
        return len(data).to_bytes(5, "big") + data

    async def _send_data(self, view: memoryview, out: list, keep_last: bool = False) -> list:
        """Send `view` as DATA frames as the windows allow, after the frames in `out`.
        With `keep_last`, the last piece is returned unwritten, for the status to join
        it in one write."""
        conn, sid = self._conn, self.stream_id
        while view:
            wire, n = conn.h2.send_data(sid, view, _WRITE_CHUNK)
            if n == 0:
                if out:
                    conn.write(b"".join(out))
                    out = []
                if self._done:
                    raise Finished()
                self._writable = asyncio.get_running_loop().create_future()
                conn.blocked.add(self)
                try:
                    await self._writable
                finally:
                    self._writable = None
                    conn.blocked.discard(self)
                continue
            out.append(wire)
            view = view[n:]
            if keep_last and not view:
                break
            conn.write(b"".join(out))
            out = []
            if conn.paused:
                await conn.drained()
                if self._done:
                    raise Finished()
        return out

    def _end(self, code: StatusCode, details: str, out: list) -> None:
        if self._done:
            return
        status = _OK_TRAILERS if code == StatusCode.OK and not details \
            else _status_bytes(code, details)
        if self._trailing:
            status += h2.encode_headers(self._trailing)
        if not self._headers_sent:  # trailers-only
            self._headers_sent = True
            status = _RESPONSE_HEADERS + status
        self._done = True
        out.append(self._conn.h2.end_stream(self.stream_id, status, self._request_open))
        self._conn.write(b"".join(out))
        self._conn.end_call(self)

    def _internal(self, details: str) -> Abort:
        self._code, self._details = StatusCode.INTERNAL, details
        return Abort()


def _identity(message):
    return message


class SendTooLarge(Exception):
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


_PSEUDO, _PATH, _TIMEOUT, _USER_AGENT, _DROPPED = range(5)
_FIELD_KINDS = {b":path": _PATH, b":method": _PSEUDO, b":scheme": _PSEUDO,
                b":authority": _PSEUDO, b"grpc-timeout": _TIMEOUT,
                b"user-agent": _USER_AGENT, **{name: _DROPPED for name in _RESERVED
                                               if name not in (b"grpc-timeout", b"user-agent")}}
_PARSED_CACHE = 256
_parsed: dict[tuple, tuple] = {}


def request_metadata(headers) -> tuple[str, tuple, float | None]:
    """A request's path, its metadata (what the handler sees) and its deadline. The
    same header list (a client's every call of a method, when it sets no deadline or
    its encoder repeats one) is parsed once."""
    parsed = _parsed.get(headers)
    if parsed is None:
        parsed = _parse_headers(headers)
        if len(_parsed) >= _PARSED_CACHE:
            _parsed.clear()
        _parsed[headers] = parsed
    path, metadata, timeout = parsed
    return path, metadata, None if timeout is None else time.monotonic() + timeout


def _parse_headers(headers) -> tuple[str, tuple, float | None]:
    path, timeout, metadata = "", None, []
    kinds = _FIELD_KINDS
    for name, value in headers:
        kind = kinds.get(name)
        if kind is not None:
            if kind == _PATH:
                path = value.decode("utf-8", "replace")
            elif kind == _TIMEOUT:
                timeout = _parse_timeout(value)
            elif kind == _USER_AGENT:
                metadata.append(("user-agent", value.decode("latin-1")))
            continue
        if name[:1] == b":":
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            metadata.append((key, value.decode("utf-8", "replace")))
    return path, tuple(metadata), timeout
