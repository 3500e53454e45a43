"""SPDY/3.1 framing, sans I/O: bytes in → events out, frames out as bytes.

What Kubernetes' streaming (kubectl exec/attach/port-forward, through kubelet) needs of
SPDY/3.1 (draft-mbelshe-httpbis-spdy-00 plus 3.1's session window): the client opens
streams with SYN_STREAM; we answer SYN_REPLY, exchange DATA, end streams with FIN or
RST_STREAM, answer PINGs and say GOAWAY. Header blocks are zlib-compressed with SPDY/3's
dictionary, one zlib stream per direction for the whole connection.

Flow control: we keep both windows as the spec says, but Go's spdystream (the peer
kubelet and kubectl use) neither sends WINDOW_UPDATE nor honours it, so the send side
is only held to the windows once the peer has shown it keeps them (a WINDOW_UPDATE or
an INITIAL_WINDOW_SIZE setting). Our receive window is only advertised, never enforced
against a peer: the bound on what we buffer is the caller's (it reads before it asks).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, _NOOP, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    range(1, 10)
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02

# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR, \
    FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED, _, FRAME_TOO_LARGE = range(1, 12)
# GOAWAY status codes
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = range(3)
SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 65536
MAX_WINDOW = 2 ** 31 - 1
MAX_DATA_CHUNK = 256 * 1024      # what we put in one DATA frame (the format allows 16 MiB)
MAX_HEADER_BLOCK = 256 * 1024    # decompressed; a bigger block is a protocol error
MAX_STREAMS = 1000               # open streams per connection

_HEADER = struct.Struct(">IBBH")  # first word, flags, length (24 bits as 8 + 16)
_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base "
    "content-encoding content-language content-length content-location content-md5 "
    "content-range content-type date etag expect expires from host if-match if-modified-since "
    "if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te trailer "
    "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
).split() + ["200 OK"] + "version HTTP/1.1 url public set-cookie keep-alive origin".split()
_TAIL = (b"100101201202205206300302303304305306307402405406407408409410411412413414415416417"
         b"502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
         b"400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
         b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
         b"Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
         b"image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
         b"text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
         b"charset=iso-8859-1,utf-,*,enq=0.")


def _dictionary() -> bytes:
    """SPDY/3's zlib dictionary (section 2.6.10.1): length-prefixed words, then a tail."""
    return b"".join(_U32.pack(len(w)) + w.encode() for w in _WORDS) + _TAIL


DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """A session error: send GOAWAY with `status` and close the connection."""

    def __init__(self, message: str, status: int = GOAWAY_PROTOCOL_ERROR):
        super().__init__(message)
        self.status = status


# --- events -------------------------------------------------------------------

@dataclass
class StreamOpened:
    stream_id: int
    headers: dict[str, list[str]]
    fin: bool


@dataclass
class Data:
    stream_id: int
    data: bytes
    fin: bool


@dataclass
class StreamReset:
    stream_id: int
    status: int


@dataclass
class WindowOpened:
    stream_id: int  # 0: the session's window


@dataclass
class GoAway:
    last_stream_id: int
    status: int


# --- header blocks ------------------------------------------------------------

def encode_headers(headers: dict[str, list[str] | str]) -> bytes:
    """The uncompressed name/value block; several values of a name are NUL-separated."""
    out = [_U32.pack(len(headers))]
    for name, values in headers.items():
        value = values if isinstance(values, str) else "\0".join(values)
        for part in (name.lower().encode(), value.encode()):
            out.append(_U32.pack(len(part)) + part)
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, list[str]]:
    try:
        (count,), pos = _U32.unpack_from(block), 4
        headers: dict[str, list[str]] = {}
        for _ in range(count):
            fields = []
            for _ in range(2):
                (n,) = _U32.unpack_from(block, pos)
                if pos + 4 + n > len(block):
                    raise ProtocolError("header block truncated")
                fields.append(block[pos + 4:pos + 4 + n].decode("utf-8", "replace"))
                pos += 4 + n
            name, value = fields
            if not name:
                raise ProtocolError("empty header name")
            headers.setdefault(name.lower(), []).extend(value.split("\0"))
    except struct.error:
        raise ProtocolError("header block truncated") from None
    if pos != len(block):
        raise ProtocolError("bytes after the header block")
    return headers


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    n = len(payload)
    return _HEADER.pack(0x80000000 | VERSION << 16 | kind, flags, n >> 16, n & 0xFFFF) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    n = len(data)
    return _HEADER.pack(stream_id & MAX_WINDOW, flags, n >> 16, n & 0xFFFF) + data


# --- the connection -----------------------------------------------------------

class Connection:
    """One SPDY/3.1 session, server side (client-initiated streams have odd ids)."""

    def __init__(self, server: bool = True):
        self.server = server
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 9,
                                         zdict=DICTIONARY)
        self.last_peer_stream = 0
        self.next_own_stream = 2 if server else 1
        self.open_streams: set[int] = set()          # not yet closed in both directions
        self.remote_closed: set[int] = set()         # the peer sent FIN
        self.local_closed: set[int] = set()          # we sent FIN
        self.initial_send_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW            # the session's (3.1)
        self.stream_send_windows: dict[int, int] = {}
        self.peer_keeps_windows = False
        self.going_away = False

    # output
    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        self._out.append(control_frame(kind, flags, payload))

    def _header_block(self, headers) -> bytes:
        raw = encode_headers(headers)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def reply(self, stream_id: int, headers: dict | None = None, fin: bool = False) -> None:
        self._control(SYN_REPLY, FLAG_FIN if fin else 0,
                      _U32.pack(stream_id) + self._header_block(headers or {}))
        if fin:
            self._closed_locally(stream_id)

    def open_stream(self, headers: dict, fin: bool = False) -> int:
        stream_id, self.next_own_stream = self.next_own_stream, self.next_own_stream + 2
        self._control(SYN_STREAM, FLAG_FIN if fin else 0,
                      _U32x2.pack(stream_id, 0) + b"\0\0" + self._header_block(headers))
        self.open_streams.add(stream_id)
        self.stream_send_windows[stream_id] = self.initial_send_window
        if fin:
            self._closed_locally(stream_id)
        return stream_id

    def sendable(self, stream_id: int) -> int:
        """How many bytes of data the windows allow now on `stream_id`."""
        if stream_id not in self.stream_send_windows or stream_id in self.local_closed:
            return 0
        if not self.peer_keeps_windows:
            return MAX_WINDOW
        return max(0, min(self.send_window, self.stream_send_windows[stream_id]))

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> int:
        """Queue DATA frames; returns how much of `data` was taken (FIN only if all was)."""
        if stream_id not in self.stream_send_windows or stream_id in self.local_closed:
            return 0
        n = min(len(data), self.sendable(stream_id))
        view = memoryview(data)
        for pos in range(0, n, MAX_DATA_CHUNK):
            chunk = view[pos:min(pos + MAX_DATA_CHUNK, n)]
            last = fin and pos + len(chunk) == len(data)
            self._out.append(data_frame(stream_id, FLAG_FIN if last else 0, bytes(chunk)))
        if self.peer_keeps_windows:
            self.send_window -= n
            self.stream_send_windows[stream_id] -= n
        if fin and n == len(data):
            if n == 0:
                self._out.append(data_frame(stream_id, FLAG_FIN, b""))
            self._closed_locally(stream_id)
        return n

    def reset(self, stream_id: int, status: int = CANCEL) -> None:
        self._control(RST_STREAM, 0, _U32x2.pack(stream_id & MAX_WINDOW, status))
        self._forget(stream_id)

    def go_away(self, status: int = GOAWAY_OK) -> None:
        self.going_away = True
        self._control(GOAWAY, 0, _U32x2.pack(self.last_peer_stream, status))

    def ping(self, ping_id: int) -> None:
        self._control(PING, 0, _U32.pack(ping_id))

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took `n` bytes of `stream_id`'s data: give the windows back."""
        if n <= 0:
            return
        self._control(WINDOW_UPDATE, 0, _U32x2.pack(0, n))
        if stream_id in self.open_streams and stream_id not in self.remote_closed:
            self._control(WINDOW_UPDATE, 0, _U32x2.pack(stream_id, n))

    def _closed_locally(self, stream_id: int) -> None:
        self.local_closed.add(stream_id)
        if stream_id in self.remote_closed:
            self._forget(stream_id)

    def _closed_remotely(self, stream_id: int) -> None:
        self.remote_closed.add(stream_id)
        if stream_id in self.local_closed:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self.open_streams.discard(stream_id)
        self.remote_closed.discard(stream_id)
        self.local_closed.discard(stream_id)
        self.stream_send_windows.pop(stream_id, None)

    # input
    def receive(self, data: bytes) -> list:
        """Parse whole frames out of what arrived; ProtocolError ends the session (its
        GOAWAY is already queued). Frames to answer (PING, RST_STREAM) are queued too."""
        self._buffer += data
        events: list = []
        buf = self._buffer
        while len(buf) >= 8:
            word, flags, hi, lo = _HEADER.unpack_from(buf)
            length = hi << 16 | lo
            if len(buf) < 8 + length:
                break
            payload = bytes(buf[8:8 + length])
            del buf[:8 + length]
            try:
                if word & 0x80000000:
                    self._control_frame(word >> 16 & 0x7FFF, word & 0xFFFF, flags, payload,
                                        events)
                else:
                    self._data_frame(word, flags, payload, events)
            except ProtocolError as exc:
                self.go_away(exc.status)
                raise
        return events

    def _data_frame(self, stream_id: int, flags: int, payload: bytes, events: list) -> None:
        fin = bool(flags & FLAG_FIN)
        if stream_id not in self.open_streams or stream_id in self.remote_closed:
            self.reset(stream_id, INVALID_STREAM if stream_id not in self.open_streams
                       else STREAM_ALREADY_CLOSED)
            return
        events.append(Data(stream_id, payload, fin))
        if fin:
            self._closed_remotely(stream_id)

    def _control_frame(self, version: int, kind: int, flags: int, payload: bytes,
                       events: list) -> None:
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        if kind == SYN_STREAM:
            if len(payload) < 10:
                raise ProtocolError("short SYN_STREAM")
            stream_id = _U32.unpack_from(payload)[0] & MAX_WINDOW
            headers = self._headers(payload[10:])
            if stream_id == 0 or stream_id % 2 != (1 if self.server else 0) \
                    or stream_id <= self.last_peer_stream:
                raise ProtocolError(f"invalid stream id {stream_id} in SYN_STREAM")
            self.last_peer_stream = stream_id
            if self.going_away or len(self.open_streams) >= MAX_STREAMS:
                self.reset(stream_id, REFUSED_STREAM)
                return
            self.open_streams.add(stream_id)
            self.stream_send_windows[stream_id] = self.initial_send_window
            fin = bool(flags & FLAG_FIN)
            events.append(StreamOpened(stream_id, headers, fin))
            if fin:
                self._closed_remotely(stream_id)
            if flags & FLAG_UNIDIRECTIONAL:
                self._closed_locally(stream_id)
        elif kind in (SYN_REPLY, HEADERS):
            if len(payload) < 4:
                raise ProtocolError("short SYN_REPLY/HEADERS")
            stream_id = _U32.unpack_from(payload)[0] & MAX_WINDOW
            self._headers(payload[4:])  # keeps the shared zlib stream in step
            if flags & FLAG_FIN and stream_id in self.open_streams:
                self._closed_remotely(stream_id)
        elif kind == RST_STREAM:
            if len(payload) != 8:
                raise ProtocolError("RST_STREAM of a wrong length")
            stream_id, status = _U32x2.unpack(payload)
            stream_id &= MAX_WINDOW
            if stream_id in self.open_streams:
                self._forget(stream_id)
                events.append(StreamReset(stream_id, status))
        elif kind == SETTINGS:
            self._settings(payload)
        elif kind == PING:
            if len(payload) != 4:
                raise ProtocolError("PING of a wrong length")
            ping_id = _U32.unpack(payload)[0]
            if ping_id % 2 != (0 if self.server else 1):  # the peer's ping: echo it
                self._control(PING, 0, payload)
        elif kind == GOAWAY:
            if len(payload) < 4:
                raise ProtocolError("short GOAWAY")
            last = _U32.unpack_from(payload)[0] & MAX_WINDOW
            status = _U32.unpack_from(payload, 4)[0] if len(payload) >= 8 else GOAWAY_OK
            self.going_away = True
            events.append(GoAway(last, status))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 8:
                raise ProtocolError("WINDOW_UPDATE of a wrong length")
            stream_id, delta = _U32x2.unpack(payload)
            stream_id, delta = stream_id & MAX_WINDOW, delta & MAX_WINDOW
            if delta == 0:
                raise ProtocolError("WINDOW_UPDATE of 0")
            self.peer_keeps_windows = True
            if stream_id == 0:
                if self.send_window + delta > MAX_WINDOW:
                    raise ProtocolError("session window overflow", GOAWAY_PROTOCOL_ERROR)
                self.send_window += delta
                events.append(WindowOpened(0))
            elif stream_id in self.stream_send_windows:
                if self.stream_send_windows[stream_id] + delta > MAX_WINDOW:
                    self.reset(stream_id, FLOW_CONTROL_ERROR)
                    events.append(StreamReset(stream_id, FLOW_CONTROL_ERROR))
                    return
                self.stream_send_windows[stream_id] += delta
                events.append(WindowOpened(stream_id))
        # other kinds (NOOP, CREDENTIAL, unknown) are ignored, as the spec asks

    def _settings(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError("short SETTINGS")
        (count,) = _U32.unpack_from(payload)
        if len(payload) != 4 + 8 * count:
            raise ProtocolError("SETTINGS of a wrong length")
        for i in range(count):
            id_flags, value = _U32x2.unpack_from(payload, 4 + 8 * i)
            if id_flags & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("initial window too large")
                delta = value - self.initial_send_window
                self.initial_send_window = value
                self.peer_keeps_windows = True
                for sid in self.stream_send_windows:
                    self.stream_send_windows[sid] += delta

    def _headers(self, compressed: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(compressed, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block: {exc}") from None
        if len(raw) > MAX_HEADER_BLOCK or self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        return decode_headers(raw) if raw else {}
