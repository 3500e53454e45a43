"""HTTP/2 for a gRPC server, sans I/O: bytes in → events out, frames out as bytes.

Only what gRPC needs (RFC 9113): no push, no priorities, no upgrade. Both directions'
flow control is kept here. Input: `receive` gives events; the caller says when the
application took data (`consumed`, which returns the WINDOW_UPDATEs owed). Output:
`send_headers`, `send_data` and `end_stream` return the frames to write, split to the
peer's frame size, and `send_data` takes only what the windows allow; when they are
shut, the caller waits for a `WindowOpened` event.

This is the pure-Python twin, and the definitions both twins share (constants, errors,
frame builders): import `h2`, which takes the compiled Connection and events (_h2.pyx)
where they are built.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass

try:
    from .._hpack import Decoder, HPACKError
except ImportError:   # not built (a source checkout): the pure twin, same results
    from .._hpack_py import Decoder, HPACKError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, _, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)
ENHANCE_YOUR_CALM = 0xB

# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, \
    MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = range(1, 7)

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2 ** 31 - 1
DEFAULT_FRAME_SIZE = 16384
# What we advertise: a large receive window, so ctr's 1 MiB content writes need no
# flow-control round trips.
RECEIVE_WINDOW = 8 << 20
MAX_HEADER_BLOCK = 1 << 20
MAX_CONCURRENT = 1000  # streams per connection: each is a task, so bound them
# Streams a client may reset while we serve them (a token bucket, nghttp2 ≥ 1.57's
# figures): "rapid reset" (CVE-2023-44487) opens and resets streams without end, each
# costing us a call set up and torn down; it gets GOAWAY ENHANCE_YOUR_CALM.
RESET_BURST, RESET_RATE = 1000, 33.0   # resets, resets per second

# HPACK "indexed header field" representations of one byte (indices 1–126)
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))
_DECODED_CACHE = 64      # header blocks remembered with what they decode to
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">IBI")   # a frame's header: length (24 bits) and type, flags, stream
_SETTING = struct.Struct(">HI")


class ConnectionError_(Exception):
    """A connection error: send GOAWAY with `code` and close."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StreamError(Exception):
    """A stream error: reset that stream with `code`; the connection goes on."""

    def __init__(self, stream_id: int, code: int, message: str):
        super().__init__(message)
        self.stream_id, self.code = stream_id, code


@dataclass(slots=True)
class Request:
    stream_id: int
    headers: tuple  # ((name: bytes, value: bytes), …): shared with the cache, read only
    end_stream: bool


@dataclass(slots=True)
class Data:
    stream_id: int
    data: bytes
    flow_length: int  # counts against windows (padding included)
    end_stream: bool


@dataclass(slots=True)
class Reset:
    stream_id: int
    code: int


@dataclass(slots=True)
class WindowOpened:
    stream_id: int  # 0: the connection's window


@dataclass(slots=True)
class GoAway:
    last_stream_id: int
    code: int


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def headers(stream_id: int, block: bytes, end_stream: bool, max_size: int) -> bytes:
    """HEADERS, and CONTINUATIONs for a block larger than the peer's frames."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_size:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    pieces = [block[i:i + max_size] for i in range(0, len(block), max_size)]
    return frame(HEADERS, flags, stream_id, pieces[0]) + b"".join(
        frame(CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]) + \
        frame(CONTINUATION, END_HEADERS, stream_id, pieces[-1])


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, message: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + message)


# --- HPACK for what we send: literal fields, never indexed, so encoding is a byte join ---

def _literal(name: bytes, value: bytes) -> bytes:
    """"Literal Header Field without Indexing — New Name" (no Huffman)."""
    return b"\x00" + _hpack_length(name) + name + _hpack_length(value) + value


def _hpack_length(data: bytes) -> bytes:
    n = len(data)
    if n < 127:
        return bytes((n,))
    out, n = [127], n - 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_headers(fields) -> bytes:
    return b"".join(_literal(n, v) for n, v in fields)


# Our SETTINGS and the connection window opened to RECEIVE_WINDOW: a connection's first bytes
INITIAL_BYTES = frame(SETTINGS, 0, 0, _SETTING.pack(INITIAL_WINDOW_SIZE, RECEIVE_WINDOW) +
                      _SETTING.pack(ENABLE_PUSH, 0) +
                      _SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK) +
                      _SETTING.pack(MAX_CONCURRENT_STREAMS, MAX_CONCURRENT)) + \
    window_update(0, RECEIVE_WINDOW - DEFAULT_WINDOW)

STATUS_200 = b"\x88"  # ":status: 200", static table entry 8


class Connection:
    """One server-side HTTP/2 connection's protocol state."""

    def __init__(self, clock=time.monotonic):
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = Decoder(MAX_HEADER_BLOCK)
        self._decoded: dict[bytes, tuple] = {}   # see _decode
        self._headers_stream = 0  # stream whose header block continues, 0 if none
        self._header_block = bytearray()
        self._header_end_stream = False
        self._header_kind = Request      # Request, or Data (trailers: the end of a
                                         # stream already open), or None (refused)
        self.highest_stream_id = 0
        self.open_streams: set[int] = set()  # ids the client may still send DATA on
        self.peer_frame_size = DEFAULT_FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW          # connection-level, ours to the peer
        self.stream_send_windows: dict[int, int] = {}
        self._unacked_connection = 0               # received, consumed, not yet returned
        self._unacked_streams: dict[int, int] = {}
        # What the peer may still send us: a peer ignoring our windows would make us
        # buffer without bound.
        self.receive_window = RECEIVE_WINDOW
        self.stream_receive_windows: dict[int, int] = {}
        self._clock = clock
        # Whether WindowOpened events are wanted: the caller may say no while nothing
        # waits for a window (a WINDOW_UPDATE follows nearly every answer).
        self.windows_wanted = True
        self._reset_tokens, self._reset_time = float(RESET_BURST), clock()

    def initial_bytes(self) -> bytes:
        return INITIAL_BYTES

    # --- input -------------------------------------------------------------------

    def receive(self, data: bytes, out: list) -> list:
        """Parse `data`; returns events; replies owed by the protocol (SETTINGS and PING
        acks) are appended to `out`. Raises ConnectionError_."""
        buf = self._buffer
        if not self._preface_seen:
            buf += data
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise ConnectionError_(PROTOCOL_ERROR, "bad connection preface")
                return []
            if bytes(buf[:len(PREFACE)]) != PREFACE:
                raise ConnectionError_(PROTOCOL_ERROR, "bad connection preface")
            del buf[:len(PREFACE)]
            self._preface_seen = True
            data = b""
        if buf:   # the rest of a frame from an earlier read
            buf += data
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        events = []
        pos, end = 0, len(data)
        head = _HEAD.unpack_from
        while end - pos >= 9:
            length_kind, flags, stream_id = head(data, pos)
            length = length_kind >> 8
            if length > DEFAULT_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos < 9 + length:
                break
            payload = data[pos + 9:pos + 9 + length]
            pos += 9 + length
            kind = length_kind & 0xFF
            try:
                if self._headers_stream:   # only CONTINUATION may come
                    self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events, out)
                elif kind == DATA:
                    self._data(flags, stream_id & 0x7FFFFFFF, payload, events, out)
                elif kind == HEADERS:
                    self._headers(flags, stream_id & 0x7FFFFFFF, payload, events)
                elif kind == WINDOW_UPDATE:
                    self._window_update(stream_id & 0x7FFFFFFF, payload, events)
                else:
                    self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events, out)
            except StreamError as exc:
                out.append(rst_stream(exc.stream_id, exc.code))
                self._remote_closed(exc.stream_id)
                events.append(Reset(exc.stream_id, exc.code))
        if pos < end:
            buf += data[pos:]
        return events

    def _frame(self, kind, flags, stream_id, payload, events, out):
        if self._headers_stream and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload, events, out)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == CONTINUATION:
            if stream_id != self._headers_stream or not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._header_block += payload
            if len(self._header_block) > MAX_HEADER_BLOCK:
                raise ConnectionError_(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                self._end_headers(events)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload, events, out)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise ConnectionError_(PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise ConnectionError_(PROTOCOL_ERROR, "bad RST_STREAM")
            if stream_id > self.highest_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if stream_id in self.stream_send_windows:  # not yet answered in full
                self._take_reset_token()
            self.close_stream(stream_id)
            events.append(Reset(stream_id, _U32.unpack(payload)[0]))
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "short GOAWAY")
            events.append(GoAway(_U32.unpack_from(payload)[0] & 0x7FFFFFFF,
                                 _U32.unpack_from(payload, 4)[0]))
        elif kind == PRIORITY:
            if not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise StreamError(stream_id, FRAME_SIZE_ERROR, "bad PRIORITY")
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # unknown frame types are ignored (RFC 9113 §4.1)

    def _take_reset_token(self):
        now = self._clock()
        tokens = min(RESET_BURST, self._reset_tokens + (now - self._reset_time) * RESET_RATE)
        if tokens < 1:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many stream resets")
        self._reset_tokens, self._reset_time = tokens - 1, now

    @staticmethod
    def _strip_padding(flags, payload):
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
            return payload[1:len(payload) - payload[0]]
        return payload

    def _data(self, flags, stream_id, payload, events, out):
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self.receive_window:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.receive_window -= flow
        data = self._strip_padding(flags, payload) if flags & PADDED else payload
        if stream_id not in self.open_streams:
            # It still counts on the connection: return that at once, or frames in
            # flight to streams we closed could use up the window for good.
            self._return_now(flow, out)
            if stream_id > self.highest_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream_id not in self.stream_send_windows:
                return  # closed by us: the peer may have sent before it knew (§5.1)
            raise StreamError(stream_id, STREAM_CLOSED, "DATA on a half-closed stream")
        window = self.stream_receive_windows[stream_id]
        if flow > window:
            self._return_now(flow, out)
            raise StreamError(stream_id, FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        self.stream_receive_windows[stream_id] = window - flow
        if flags & END_STREAM:
            self._remote_closed(stream_id)
        events.append(Data(stream_id, data, flow, bool(flags & END_STREAM)))

    def _return_now(self, flow, out):
        update = self._connection_consumed(flow)
        if update:
            out.append(update)

    def _remote_closed(self, stream_id):
        self.open_streams.discard(stream_id)
        self.stream_receive_windows.pop(stream_id, None)

    def _headers(self, flags, stream_id, payload, events):
        if not stream_id or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & PADDED:
            payload = self._strip_padding(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if stream_id in self.open_streams:
            self._header_kind = Data
        elif stream_id <= self.highest_stream_id:
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        elif len(self.stream_send_windows) >= MAX_CONCURRENT:  # a client ignoring our limit
            self.highest_stream_id = stream_id
            self._header_kind = None
        else:
            self.highest_stream_id = stream_id
            self.open_streams.add(stream_id)
            self.stream_send_windows[stream_id] = self.peer_initial_window
            self.stream_receive_windows[stream_id] = RECEIVE_WINDOW
            self._header_kind = Request
        end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:   # the whole block in one frame: the usual case
            self._header_done(stream_id, payload, end_stream, events)
            return
        self._headers_stream = stream_id
        self._header_block = bytearray(payload)
        self._header_end_stream = end_stream

    def _end_headers(self, events):
        stream_id, block = self._headers_stream, bytes(self._header_block)
        self._headers_stream = 0
        self._header_block = bytearray()
        self._header_done(stream_id, block, self._header_end_stream, events)

    def _header_done(self, stream_id, block, end_stream, events):
        headers = self._decode(block)
        if self._header_kind is None:
            raise StreamError(stream_id, REFUSED_STREAM, "too many concurrent streams")
        if self._header_kind is Data:
            # trailers from the client: only an end-of-stream marker for gRPC
            if not end_stream:
                raise StreamError(stream_id, PROTOCOL_ERROR, "trailers without END_STREAM")
            self._remote_closed(stream_id)
            events.append(Data(stream_id, b"", 0, True))
            return
        if end_stream:
            self._remote_closed(stream_id)
        events.append(Request(stream_id, headers, end_stream))

    def _decode(self, block: bytes) -> tuple:
        """Decode even a block we refuse: the decoder's table must stay in step with the
        peer's encoder. A block of one-byte indexed fields only changes no table, so
        while the table is unchanged it decodes as before: from the cache."""
        cacheable = not block.translate(None, _ONE_BYTE_INDEXED)
        if cacheable:
            headers = self._decoded.get(block)
            if headers is not None:
                return headers
        else:
            self._decoded.clear()  # the table may change
        try:
            headers = self._decoder.decode(block)
        except HPACKError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"hpack: {exc}") from None
        if cacheable:
            if len(self._decoded) >= _DECODED_CACHE:
                self._decoded.clear()
            self._decoded[block] = headers
        return headers

    def _settings(self, flags, stream_id, payload, events, out):
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for sid in self.stream_send_windows:
                    self.stream_send_windows[sid] += delta
                    if self.stream_send_windows[sid] > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "stream window overflow")
                if delta > 0 and self.windows_wanted:  # writers waiting for a stream
                    events.append(WindowOpened(0))             # window may go on
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2 ** 24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad max frame size")
                self.peer_frame_size = value
            elif key == HEADER_TABLE_SIZE:
                pass  # we never index what we send, so the peer's table size is moot
        out.append(frame(SETTINGS, ACK, 0))

    def _window_update(self, stream_id, payload, events):
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "zero window increment")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
        elif stream_id in self.stream_send_windows:
            if not increment:
                raise StreamError(stream_id, PROTOCOL_ERROR, "zero window increment")
            self.stream_send_windows[stream_id] += increment
            if self.stream_send_windows[stream_id] > MAX_WINDOW:
                raise StreamError(stream_id, FLOW_CONTROL_ERROR, "stream window overflow")
        elif stream_id > self.highest_stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        else:
            return  # a late update for a finished stream
        if self.windows_wanted:
            events.append(WindowOpened(stream_id))

    # --- output ----------------------------------------------------------------------

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> bytes:
        """HEADERS carrying an encoded header block (CONTINUATIONs if it is larger than
        the peer's frames)."""
        if not end_stream and len(block) <= self.peer_frame_size:
            return frame(HEADERS, END_HEADERS, stream_id, block)
        return headers(stream_id, block, end_stream, self.peer_frame_size)

    def send_data(self, stream_id: int, data, limit: int = MAX_WINDOW) -> tuple[bytes, int]:
        """DATA frames for as much of `data` (bytes or memoryview) as the windows allow,
        at most `limit` bytes, and that count; 0 while a window is shut (or the stream
        is closed). The windows are debited."""
        n = min(len(data), limit, self.send_window, self.stream_send_windows.get(stream_id, 0))
        if n <= 0:
            return b"", 0
        self.send_window -= n
        self.stream_send_windows[stream_id] -= n
        step = self.peer_frame_size
        if n <= step:
            return frame(DATA, 0, stream_id, data[:n]), n
        return b"".join([frame(DATA, 0, stream_id, data[offset:min(offset + step, n)])
                         for offset in range(0, n, step)]), n

    def unary_answer(self, stream_id: int, head: bytes, message: bytes, trailers: bytes,
                     stop_peer: bool) -> bytes | None:
        """A whole answer in one piece: HEADERS (`head`), one DATA frame, the last
        HEADERS (`trailers`) and, with `stop_peer`, RST_STREAM(NO_ERROR); the stream is
        forgotten. None where that does not fit (windows, the peer's frame size): the
        caller then goes frame by frame (send_headers, send_data, end_stream)."""
        n = len(message)
        if n > self.send_window or n > self.stream_send_windows.get(stream_id, 0) or \
                max(n, len(head), len(trailers)) > self.peer_frame_size:
            return None
        self.send_window -= n
        pack = _HEAD.pack
        out = b"".join((pack(len(head) << 8 | HEADERS, END_HEADERS, stream_id), head,
                        pack(n << 8 | DATA, 0, stream_id), message,
                        pack(len(trailers) << 8 | HEADERS, END_HEADERS | END_STREAM, stream_id),
                        trailers))
        if stop_peer:
            out += rst_stream(stream_id, NO_ERROR)
        self.close_stream(stream_id)
        return out

    def end_stream(self, stream_id: int, block: bytes, stop_peer: bool) -> bytes:
        """The last HEADERS (END_STREAM: trailers, or a whole trailers-only answer) and,
        with `stop_peer`, RST_STREAM(NO_ERROR): the client need not send the rest of
        its request (RFC 9113 §8.1). The stream is forgotten."""
        if len(block) <= self.peer_frame_size:
            out = frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block)
        else:
            out = headers(stream_id, block, True, self.peer_frame_size)
        if stop_peer:
            out += rst_stream(stream_id, NO_ERROR)
        self.close_stream(stream_id)
        return out

    def goaway(self, code: int, message: bytes = b"") -> bytes:
        """GOAWAY naming the last stream we took."""
        return goaway(self.highest_stream_id, code, message)

    def consumed(self, stream_id: int, n: int) -> bytes:
        """The application took `n` flow-controlled bytes; returns WINDOW_UPDATEs owed
        (batched: a quarter of the window at a time)."""
        out = self._connection_consumed(n)
        if stream_id in self.open_streams:
            unacked = self._unacked_streams.get(stream_id, 0) + n
            if unacked >= RECEIVE_WINDOW // 4:
                out += window_update(stream_id, unacked)
                self.stream_receive_windows[stream_id] += unacked
                unacked = 0
            self._unacked_streams[stream_id] = unacked
        return out

    def _connection_consumed(self, n: int) -> bytes:
        self._unacked_connection += n
        if self._unacked_connection < RECEIVE_WINDOW // 4:
            return b""
        n, self._unacked_connection = self._unacked_connection, 0
        self.receive_window += n
        return window_update(0, n)

    def close_stream(self, stream_id: int) -> None:
        self._remote_closed(stream_id)
        self.stream_send_windows.pop(stream_id, None)
        self._unacked_streams.pop(stream_id, None)
