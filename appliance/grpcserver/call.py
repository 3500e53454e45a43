"""One gRPC call: the servicer context its handler sees, and its stream's state."""
from __future__ import annotations

import asyncio
import base64
import collections
import time
import zlib
from typing import TYPE_CHECKING

from . import h2
from .status import EOF, StatusCode

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
        data = self._messages.popleft()
        if self._unacked and len(self._messages) < _QUEUED_BEFORE_BACKPRESSURE:
            self._conn.acknowledge(self._stream_id, self._unacked)
            self._unacked = 0
        if self._deserialize is None:
            return data
        try:
            return self._deserialize(data)
        except Exception as exc:  # the client's fault, not the handler's (grpc-go's words)
            raise internal_error(self, f"grpc: error unmarshalling request: {exc}") from None

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

    async def _send_message(self, message) -> None:
        if self._done:
            raise Finished()
        await self._send_serialized(self._serialize(message))

    async def _send_serialized(self, data: bytes) -> None:
        limit = self._conn.server.max_send
        if len(data) > limit:
            raise SendTooLarge(len(data), limit)
        self._send_headers()
        await self._send_data(len(data).to_bytes(5, "big") + data)

    async def _send_data(self, data: bytes) -> None:
        conn, sid = self._conn, self._stream_id
        view = memoryview(data)
        while view:
            n = conn.h2.sendable(sid, len(view))
            if n == 0:
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
                    raise Finished()

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


def request_metadata(headers) -> tuple[str, tuple, float | None]:
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


def internal_error(call: Call, details: str) -> Abort:
    call._code, call._details = StatusCode.INTERNAL, details
    return Abort()


async def more_than_one(call: Call) -> bool:
    """A unary method's request must end after its one message."""
    while call._request_open and not call._messages:
        await call._wait_for_data()
    return bool(call._messages)
