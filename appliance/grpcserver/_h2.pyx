# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of _h2_py's Connection and events: the same protocol state, results
and errors (tests/unit/test_h2_twins.py), the same steps in the same order. What differs:
frame headers, WINDOW_UPDATE, SETTINGS, RST_STREAM, GOAWAY and padding are read from the
read's bytes in place (only DATA and header blocks become bytes objects), the methods a
frame goes through are C calls, events are extension types, and a one-piece unary answer
is written into one buffer."""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from . import _h2_py
from ._h2_py import PREFACE, ConnectionError_, Decoder, HPACKError, StreamError, goaway, \
    window_update

# the twin's constants as C values
cdef int DATA = _h2_py.DATA, HEADERS = _h2_py.HEADERS, PRIORITY = _h2_py.PRIORITY
cdef int RST_STREAM = _h2_py.RST_STREAM, SETTINGS = _h2_py.SETTINGS, PING = _h2_py.PING
cdef int PUSH_PROMISE = _h2_py.PUSH_PROMISE, GOAWAY = _h2_py.GOAWAY
cdef int WINDOW_UPDATE = _h2_py.WINDOW_UPDATE, CONTINUATION = _h2_py.CONTINUATION
cdef int END_STREAM = _h2_py.END_STREAM, ACK = _h2_py.ACK, END_HEADERS = _h2_py.END_HEADERS
cdef int PADDED = _h2_py.PADDED, PRIORITY_FLAG = _h2_py.PRIORITY_FLAG
cdef int NO_ERROR = _h2_py.NO_ERROR, PROTOCOL_ERROR = _h2_py.PROTOCOL_ERROR
cdef int FLOW_CONTROL_ERROR = _h2_py.FLOW_CONTROL_ERROR, STREAM_CLOSED = _h2_py.STREAM_CLOSED
cdef int FRAME_SIZE_ERROR = _h2_py.FRAME_SIZE_ERROR, REFUSED_STREAM = _h2_py.REFUSED_STREAM
cdef int COMPRESSION_ERROR = _h2_py.COMPRESSION_ERROR
cdef int ENHANCE_YOUR_CALM = _h2_py.ENHANCE_YOUR_CALM
cdef int HEADER_TABLE_SIZE = _h2_py.HEADER_TABLE_SIZE
cdef int INITIAL_WINDOW_SIZE = _h2_py.INITIAL_WINDOW_SIZE
cdef int MAX_FRAME_SIZE = _h2_py.MAX_FRAME_SIZE
cdef long long DEFAULT_WINDOW = _h2_py.DEFAULT_WINDOW, MAX_WINDOW = _h2_py.MAX_WINDOW
cdef long long DEFAULT_FRAME_SIZE = _h2_py.DEFAULT_FRAME_SIZE
cdef long long RECEIVE_WINDOW = _h2_py.RECEIVE_WINDOW
cdef Py_ssize_t MAX_HEADER_BLOCK = _h2_py.MAX_HEADER_BLOCK
cdef Py_ssize_t MAX_CONCURRENT = _h2_py.MAX_CONCURRENT
cdef double RESET_BURST = _h2_py.RESET_BURST, RESET_RATE = _h2_py.RESET_RATE
cdef Py_ssize_t DECODED_CACHE = _h2_py._DECODED_CACHE

# what the header block of a HEADERS frame opens (_h2_py: Request, Data or None)
cdef enum:
    OPENS_REQUEST, ENDS_REQUEST, REFUSED


# --- events ----------------------------------------------------------------------------

cdef class _Event:
    """Compared and shown by their fields, as the twin's dataclasses are."""

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == (<_Event>other)._fields()

    def __repr__(self):
        return f"{type(self).__name__}{self._fields()!r}"

    cdef tuple _fields(self):
        return ()


cdef class Request(_Event):
    cdef readonly object stream_id
    cdef readonly tuple headers   # ((name, value), …): shared with the cache, read only
    cdef readonly bint end_stream

    def __init__(self, stream_id, tuple headers, bint end_stream):
        self.stream_id, self.headers, self.end_stream = stream_id, headers, end_stream

    cdef tuple _fields(self):
        return self.stream_id, self.headers, self.end_stream


cdef class Data(_Event):
    cdef readonly object stream_id
    cdef readonly bytes data
    cdef readonly long long flow_length   # counts against windows (padding included)
    cdef readonly bint end_stream

    def __init__(self, stream_id, bytes data, long long flow_length, bint end_stream):
        self.stream_id, self.data = stream_id, data
        self.flow_length, self.end_stream = flow_length, end_stream

    cdef tuple _fields(self):
        return self.stream_id, self.data, self.flow_length, self.end_stream


cdef class Reset(_Event):
    cdef readonly object stream_id
    cdef readonly object code

    def __init__(self, stream_id, code):
        self.stream_id, self.code = stream_id, code

    cdef tuple _fields(self):
        return self.stream_id, self.code


cdef class WindowOpened(_Event):
    cdef readonly object stream_id   # 0: the connection's window

    def __init__(self, stream_id):
        self.stream_id = stream_id

    cdef tuple _fields(self):
        return (self.stream_id,)


cdef class GoAway(_Event):
    cdef readonly object last_stream_id
    cdef readonly object code

    def __init__(self, last_stream_id, code):
        self.last_stream_id, self.code = last_stream_id, code

    cdef tuple _fields(self):
        return self.last_stream_id, self.code


cdef inline Data _data_event(object stream_id, bytes data, long long flow, bint end_stream):
    cdef Data event = Data.__new__(Data)
    event.stream_id, event.data, event.flow_length, event.end_stream = \
        stream_id, data, flow, end_stream
    return event


cdef inline Request _request_event(object stream_id, tuple headers, bint end_stream):
    cdef Request event = Request.__new__(Request)
    event.stream_id, event.headers, event.end_stream = stream_id, headers, end_stream
    return event


# --- frames ----------------------------------------------------------------------------

cdef inline unsigned int _u32(const unsigned char *p) noexcept:
    return <unsigned int>p[0] << 24 | <unsigned int>p[1] << 16 | <unsigned int>p[2] << 8 | p[3]


cdef inline char *_put_head(char *q, Py_ssize_t length, int kind, int flags,
                            unsigned int stream_id) noexcept:
    q[0], q[1], q[2] = <char>(length >> 16), <char>(length >> 8), <char>length
    q[3], q[4] = <char>kind, <char>flags
    q[5], q[6], q[7], q[8] = <char>(stream_id >> 24), <char>(stream_id >> 16), \
        <char>(stream_id >> 8), <char>stream_id
    return q + 9


cdef bytes _frame(int kind, int flags, unsigned int stream_id, payload,
                  Py_ssize_t offset=0, Py_ssize_t size=-1):
    """_h2_py.frame of payload[offset:offset + size] (all of it: size −1), `payload` any
    bytes-like object."""
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if size < 0:
            size = view.len
        out = PyBytes_FromStringAndSize(NULL, 9 + size)
        memcpy(_put_head(PyBytes_AS_STRING(out), size, kind, flags, stream_id),
               <char *>view.buf + offset, size)
    finally:
        PyBuffer_Release(&view)
    return out


cdef bytes _rst_stream(unsigned int stream_id, unsigned int code):
    out = PyBytes_FromStringAndSize(NULL, 13)
    cdef char *q = _put_head(PyBytes_AS_STRING(out), 4, RST_STREAM, 0, stream_id)
    q[0], q[1], q[2], q[3] = <char>(code >> 24), <char>(code >> 16), <char>(code >> 8), <char>code
    return out


cdef bytes _header_frames(unsigned int stream_id, bytes block, bint end_stream,
                          Py_ssize_t max_size):
    if PyBytes_GET_SIZE(block) <= max_size:
        return _frame(HEADERS, (END_STREAM if end_stream else 0) | END_HEADERS, stream_id,
                      block)
    return _h2_py.headers(stream_id, block, end_stream, max_size)


cdef int _strip_padding(const unsigned char *p, Py_ssize_t *first,
                        Py_ssize_t *last) except -1:
    """The payload p[first:last] without its padding (_h2_py's _strip_padding)."""
    if first[0] == last[0] or p[first[0]] >= last[0] - first[0]:
        raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
    last[0] -= p[first[0]]
    first[0] += 1
    return 0


cdef bint _one_byte_indexed(bytes block) noexcept:
    """Only one-byte indexed fields (0x81–0xFE): _h2_py's `not block.translate(...)`."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(block)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(block)):
        if p[i] < 0x81 or p[i] == 0xFF:
            return False
    return True


# --- the connection --------------------------------------------------------------------

cdef class Connection:
    """One server-side HTTP/2 connection's protocol state (see _h2_py.Connection)."""
    cdef readonly bytearray _buffer
    cdef bint _preface_seen
    cdef object _decoder
    cdef dict _decoded
    cdef readonly unsigned int _headers_stream  # stream whose block continues, 0 if none
    cdef readonly bytearray _header_block
    cdef bint _header_end_stream
    cdef int _header_kind
    cdef public long long highest_stream_id
    cdef public set open_streams             # ids the client may still send DATA on
    cdef public long long peer_frame_size
    cdef public long long peer_initial_window
    cdef public long long send_window        # connection-level, ours to the peer
    cdef public dict stream_send_windows
    cdef public long long _unacked_connection
    cdef public dict _unacked_streams
    cdef public long long receive_window     # what the peer may still send us
    cdef public dict stream_receive_windows
    cdef object _clock
    cdef public bint windows_wanted
    cdef public double _reset_tokens, _reset_time

    def __init__(self, clock=None):
        if clock is None:
            import time
            clock = time.monotonic
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = Decoder(MAX_HEADER_BLOCK)
        self._decoded = {}
        self._headers_stream = 0
        self._header_block = bytearray()
        self._header_end_stream = False
        self._header_kind = OPENS_REQUEST
        self.highest_stream_id = 0
        self.open_streams = set()
        self.peer_frame_size = DEFAULT_FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW
        self.stream_send_windows = {}
        self._unacked_connection = 0
        self._unacked_streams = {}
        self.receive_window = RECEIVE_WINDOW
        self.stream_receive_windows = {}
        self._clock = clock
        self.windows_wanted = True
        self._reset_tokens, self._reset_time = RESET_BURST, clock()

    def initial_bytes(self) -> bytes:
        return _h2_py.INITIAL_BYTES

    # --- input -------------------------------------------------------------------

    def receive(self, data, list out) -> list:
        """Parse `data`; returns events; replies owed by the protocol (SETTINGS and PING
        acks) are appended to `out`. Raises ConnectionError_."""
        cdef bytearray buf = self._buffer
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
        cdef bytes chunk
        if buf:   # the rest of a frame from an earlier read
            buf += data
            chunk = bytes(buf)
            del buf[:]
        elif type(data) is bytes:
            chunk = data
        else:
            chunk = bytes(data)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(chunk), start, length
        cdef int kind, flags
        cdef unsigned int stream_id
        cdef list events = []
        while end - pos >= 9:
            length = p[pos] << 16 | p[pos + 1] << 8 | p[pos + 2]
            if length > DEFAULT_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos < 9 + length:
                break
            kind, flags = p[pos + 3], p[pos + 4]
            stream_id = _u32(p + pos + 5) & 0x7FFFFFFF
            start = pos + 9
            pos = start + length
            try:
                if self._headers_stream and kind != CONTINUATION:
                    raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
                self._frame(chunk, start, length, kind, flags, stream_id, events, out)
            except StreamError as exc:
                out.append(_rst_stream(exc.stream_id, exc.code))
                self._remote_closed(exc.stream_id)
                events.append(Reset(exc.stream_id, exc.code))
        if pos < end:
            buf += chunk[pos:]
        return events

    cdef int _frame(self, bytes chunk, Py_ssize_t start, Py_ssize_t length, int kind, int flags,
                    unsigned int stream_id, list events, list out) except -1:
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(chunk) + start
        if kind == DATA:
            self._data(chunk, start, length, flags, stream_id, events, out)
        elif kind == HEADERS:
            self._headers(chunk, start, length, flags, stream_id, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(p, length, stream_id, events)
        elif kind == CONTINUATION:
            if stream_id != self._headers_stream or not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._header_block += chunk[start:start + length]
            if len(self._header_block) > MAX_HEADER_BLOCK:
                raise ConnectionError_(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                self._end_headers(events)
        elif kind == SETTINGS:
            self._settings(p, length, flags, stream_id, events, out)
        elif kind == PING:
            if stream_id or length != 8:
                raise ConnectionError_(PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                out.append(_frame(PING, ACK, 0, chunk, start, 8))
        elif kind == RST_STREAM:
            if not stream_id or length != 4:
                raise ConnectionError_(PROTOCOL_ERROR, "bad RST_STREAM")
            if stream_id > self.highest_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if stream_id in self.stream_send_windows:  # not yet answered in full
                self._take_reset_token()
            self.close_stream(stream_id)
            events.append(Reset(stream_id, _u32(p)))
        elif kind == GOAWAY:
            if length < 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "short GOAWAY")
            events.append(GoAway(_u32(p) & 0x7FFFFFFF, _u32(p + 4)))
        elif kind == PRIORITY:
            if not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if length != 5:
                raise StreamError(stream_id, FRAME_SIZE_ERROR, "bad PRIORITY")
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # unknown frame types are ignored (RFC 9113 §4.1)
        return 0

    cdef int _take_reset_token(self) except -1:
        cdef double now = self._clock()
        cdef double tokens = min(RESET_BURST,
                                 self._reset_tokens + (now - self._reset_time) * RESET_RATE)
        if tokens < 1:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many stream resets")
        self._reset_tokens, self._reset_time = tokens - 1, now
        return 0

    cdef int _data(self, bytes chunk, Py_ssize_t start, Py_ssize_t flow, int flags,
                   unsigned int stream_id, list events, list out) except -1:
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        if flow > self.receive_window:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.receive_window -= flow
        cdef Py_ssize_t first = start, last = start + flow
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(chunk)
        if flags & PADDED:
            _strip_padding(p, &first, &last)
        sid = <object>stream_id
        if sid not in self.open_streams:
            # It still counts on the connection: return that at once, or frames in
            # flight to streams we closed could use up the window for good.
            self._return_now(flow, out)
            if stream_id > self.highest_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            if sid not in self.stream_send_windows:
                return 0  # closed by us: the peer may have sent before it knew (§5.1)
            raise StreamError(sid, STREAM_CLOSED, "DATA on a half-closed stream")
        cdef long long window = self.stream_receive_windows[sid]
        if flow > window:
            self._return_now(flow, out)
            raise StreamError(sid, FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        self.stream_receive_windows[sid] = window - flow
        if flags & END_STREAM:
            self._remote_closed(sid)
        events.append(_data_event(sid, PyBytes_FromStringAndSize(<const char *>p + first,
                                                                 last - first),
                                  flow, flags & END_STREAM))
        return 0

    cdef int _return_now(self, long long flow, list out) except -1:
        update = self._connection_consumed(flow)
        if update:
            out.append(update)
        return 0

    cdef int _remote_closed(self, stream_id) except -1:
        self.open_streams.discard(stream_id)
        self.stream_receive_windows.pop(stream_id, None)
        return 0

    cdef int _headers(self, bytes chunk, Py_ssize_t start, Py_ssize_t length,
                      int flags, unsigned int stream_id, list events) except -1:
        if not stream_id or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        cdef Py_ssize_t first = start, last = start + length
        if flags & PADDED:
            _strip_padding(<const unsigned char *>PyBytes_AS_STRING(chunk), &first, &last)
        if flags & PRIORITY_FLAG:
            if last - first < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            first += 5
        sid = <object>stream_id
        if sid in self.open_streams:
            self._header_kind = ENDS_REQUEST
        elif stream_id <= self.highest_stream_id:
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        elif len(self.stream_send_windows) >= MAX_CONCURRENT:  # a client ignoring our limit
            self.highest_stream_id = stream_id
            self._header_kind = REFUSED
        else:
            self.highest_stream_id = stream_id
            self.open_streams.add(sid)
            self.stream_send_windows[sid] = self.peer_initial_window
            self.stream_receive_windows[sid] = RECEIVE_WINDOW
            self._header_kind = OPENS_REQUEST
        cdef bint end_stream = flags & END_STREAM
        block = PyBytes_FromStringAndSize(PyBytes_AS_STRING(chunk) + first, last - first)
        if flags & END_HEADERS:   # the whole block in one frame: the usual case
            return self._header_done(sid, block, end_stream, events)
        self._headers_stream = stream_id
        self._header_block = bytearray(block)
        self._header_end_stream = end_stream
        return 0

    cdef int _end_headers(self, list events) except -1:
        stream_id, block = self._headers_stream, bytes(self._header_block)
        self._headers_stream = 0
        self._header_block = bytearray()
        return self._header_done(stream_id, block, self._header_end_stream, events)

    cdef int _header_done(self, stream_id, bytes block, bint end_stream,
                          list events) except -1:
        headers = self._decode(block)
        if self._header_kind == REFUSED:
            raise StreamError(stream_id, REFUSED_STREAM, "too many concurrent streams")
        if self._header_kind == ENDS_REQUEST:
            # trailers from the client: only an end-of-stream marker for gRPC
            if not end_stream:
                raise StreamError(stream_id, PROTOCOL_ERROR, "trailers without END_STREAM")
            self._remote_closed(stream_id)
            events.append(_data_event(stream_id, b"", 0, True))
            return 0
        if end_stream:
            self._remote_closed(stream_id)
        events.append(_request_event(stream_id, headers, end_stream))
        return 0

    cdef tuple _decode(self, bytes block):
        """See _h2_py's _decode: blocks of one-byte indexed fields come from a cache
        while the table is unchanged."""
        cdef bint cacheable = _one_byte_indexed(block)
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
            if len(self._decoded) >= DECODED_CACHE:
                self._decoded.clear()
            self._decoded[block] = headers
        return headers

    cdef int _settings(self, const unsigned char *p, Py_ssize_t length, int flags,
                       unsigned int stream_id, list events, list out) except -1:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if length:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return 0
        if length % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS length")
        cdef Py_ssize_t offset
        cdef int key
        cdef long long value, delta, window
        for offset in range(0, length, 6):
            key, value = p[offset] << 8 | p[offset + 1], _u32(p + offset + 2)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for sid, window in self.stream_send_windows.items():
                    self.stream_send_windows[sid] = window + delta
                    if window + delta > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "stream window overflow")
                if delta > 0 and self.windows_wanted:  # writers waiting for a stream
                    events.append(WindowOpened(0))             # window may go on
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 0xFFFFFF:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad max frame size")
                self.peer_frame_size = value
            # HEADER_TABLE_SIZE: we never index what we send, so the peer's is moot
        out.append(_frame(SETTINGS, ACK, 0, b""))
        return 0

    cdef int _window_update(self, const unsigned char *p, Py_ssize_t length,
                            unsigned int stream_id, list events) except -1:
        if length != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        cdef long long increment = _u32(p) & 0x7FFFFFFF, window
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "zero window increment")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            sid = <object>stream_id
            found = self.stream_send_windows.get(sid)
            if found is not None:
                if not increment:
                    raise StreamError(sid, PROTOCOL_ERROR, "zero window increment")
                window = <long long>found + increment
                self.stream_send_windows[sid] = window
                if window > MAX_WINDOW:
                    raise StreamError(sid, FLOW_CONTROL_ERROR, "stream window overflow")
            elif stream_id > self.highest_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            else:
                return 0  # a late update for a finished stream
        if self.windows_wanted:
            events.append(WindowOpened(stream_id))
        return 0

    # --- output ----------------------------------------------------------------------

    def send_headers(self, unsigned int stream_id, bytes block, bint end_stream=False):
        """HEADERS carrying an encoded header block (CONTINUATIONs if it is larger than
        the peer's frames)."""
        if not end_stream and PyBytes_GET_SIZE(block) <= self.peer_frame_size:
            return _frame(HEADERS, END_HEADERS, stream_id, block)
        return _header_frames(stream_id, block, end_stream, self.peer_frame_size)

    def send_data(self, unsigned int stream_id, data, long long limit=MAX_WINDOW):
        """DATA frames for as much of `data` (bytes or memoryview) as the windows allow,
        at most `limit` bytes, and that count; 0 while a window is shut (or the stream
        is closed). The windows are debited."""
        sid = <object>stream_id
        cdef long long stream_window = self.stream_send_windows.get(sid, 0)
        cdef long long n = min(<long long>len(data), limit, self.send_window, stream_window)
        if n <= 0:
            return b"", 0
        self.send_window -= n
        self.stream_send_windows[sid] = stream_window - n
        cdef long long step = self.peer_frame_size
        if n <= step:
            return _frame(DATA, 0, stream_id, data, 0, n), n
        return b"".join([_frame(DATA, 0, stream_id, data, offset, min(step, n - offset))
                         for offset in range(0, n, step)]), n

    def unary_answer(self, unsigned int stream_id, bytes head, message, bytes trailers,
                     bint stop_peer):
        """A whole answer in one piece: HEADERS (`head`), one DATA frame, the last
        HEADERS (`trailers`) and, with `stop_peer`, RST_STREAM(NO_ERROR); the stream is
        forgotten. None where that does not fit (windows, the peer's frame size): the
        caller then goes frame by frame (send_headers, send_data, end_stream)."""
        sid = <object>stream_id
        cdef Py_ssize_t h = PyBytes_GET_SIZE(head), t = PyBytes_GET_SIZE(trailers)
        cdef long long stream_window = self.stream_send_windows.get(sid, 0)
        cdef Py_buffer view
        cdef char *q
        PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
        try:
            if view.len > self.send_window or view.len > stream_window or \
                    max(view.len, h, t) > self.peer_frame_size:
                return None
            self.send_window -= view.len
            out = PyBytes_FromStringAndSize(NULL, 27 + h + view.len + t + (13 if stop_peer else 0))
            q = _put_head(PyBytes_AS_STRING(out), h, HEADERS, END_HEADERS, stream_id)
            memcpy(q, PyBytes_AS_STRING(head), h)
            q = _put_head(q + h, view.len, DATA, 0, stream_id)
            memcpy(q, view.buf, view.len)
            q = _put_head(q + view.len, t, HEADERS, END_HEADERS | END_STREAM, stream_id)
        finally:
            PyBuffer_Release(&view)
        memcpy(q, PyBytes_AS_STRING(trailers), t)
        if stop_peer:
            q = _put_head(q + t, 4, RST_STREAM, 0, stream_id)
            q[0] = q[1] = q[2] = q[3] = NO_ERROR
        self.close_stream(sid)
        return out

    def end_stream(self, unsigned int stream_id, bytes block, bint stop_peer):
        """The last HEADERS (END_STREAM: trailers, or a whole trailers-only answer) and,
        with `stop_peer`, RST_STREAM(NO_ERROR): the client need not send the rest of
        its request (RFC 9113 §8.1). The stream is forgotten."""
        out = _header_frames(stream_id, block, True, self.peer_frame_size)
        if stop_peer:
            out += _rst_stream(stream_id, NO_ERROR)
        self.close_stream(stream_id)
        return out

    def goaway(self, int code, bytes message=b""):
        """GOAWAY naming the last stream we took."""
        return goaway(self.highest_stream_id, code, message)

    cpdef bytes consumed(self, stream_id, long long n):
        """The application took `n` flow-controlled bytes; returns WINDOW_UPDATEs owed
        (batched: a quarter of the window at a time)."""
        cdef bytes out = self._connection_consumed(n)
        cdef long long unacked
        if stream_id in self.open_streams:
            unacked = self._unacked_streams.get(stream_id, 0) + n
            if unacked >= RECEIVE_WINDOW // 4:
                out += window_update(stream_id, unacked)
                self.stream_receive_windows[stream_id] += unacked
                unacked = 0
            self._unacked_streams[stream_id] = unacked
        return out

    cdef bytes _connection_consumed(self, long long n):
        self._unacked_connection += n
        if self._unacked_connection < RECEIVE_WINDOW // 4:
            return b""
        n, self._unacked_connection = self._unacked_connection, 0
        self.receive_window += n
        return window_update(0, n)

    cpdef close_stream(self, stream_id):
        self._remote_closed(stream_id)
        self.stream_send_windows.pop(stream_id, None)
        self._unacked_streams.pop(stream_id, None)
