"""HTTP/2 framing of the gRPC server, sans I/O (appliance/grpcserver/h2.py), each test on
both twins (the compiled _h2 and the pure _h2_py)."""
import struct

import hpack
import pytest
from h2_helpers import h2_twin  # noqa: F401 (fixture)

from appliance.grpcserver import h2

pytestmark = pytest.mark.usefixtures("h2_twin")


def connection():
    conn = h2.Connection()
    out = []
    assert conn.receive(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0), out) == []
    assert out == [h2.frame(h2.SETTINGS, h2.ACK, 0)]
    return conn


def request_headers(path=b"/s.S/M"):
    return hpack.Encoder().encode([(b":method", b"POST"), (b":path", path),
                                   (b"content-type", b"application/grpc"),
                                   (b"containerd-namespace", b"default")])


def test_preface_and_frames_split_at_every_byte():
    block = request_headers()
    wire = h2.PREFACE + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block) + \
        h2.frame(h2.DATA, h2.END_STREAM, 1, b"\0\0\0\0\2hi")
    conn, events, out = h2.Connection(), [], []
    for i in range(len(wire)):
        events += conn.receive(wire[i:i + 1], out)
    assert [type(e) for e in events] == [h2.Request, h2.Data]
    assert (b":path", b"/s.S/M") in events[0].headers
    assert events[1].data == b"\0\0\0\0\2hi" and events[1].end_stream
    assert conn.open_streams == set()


def test_bad_preface_is_a_connection_error():
    with pytest.raises(h2.ConnectionError_):
        h2.Connection().receive(b"GET / HTTP/1.1\r\n\r\n", [])


def test_continuation_padding_and_priority():
    block = request_headers()
    padded = bytes([3]) + struct.pack(">IB", 0, 7) + block[:5] + b"\0\0\0"
    conn, out = connection(), []
    events = conn.receive(h2.frame(h2.HEADERS, h2.PADDED | h2.PRIORITY_FLAG, 3, padded), out)
    assert events == []
    events = conn.receive(h2.frame(h2.CONTINUATION, h2.END_HEADERS, 3, block[5:]), out)
    assert (b"containerd-namespace", b"default") in events[0].headers
    data = conn.receive(h2.frame(h2.DATA, h2.PADDED, 3, bytes([4]) + b"abc" + b"\0" * 4), out)
    assert data[0].data == b"abc" and data[0].flow_length == 8


def test_protocol_violations():
    with pytest.raises(h2.ConnectionError_) as err:  # even stream ids belong to servers
        connection().receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 2, request_headers()), [])
    assert err.value.code == h2.PROTOCOL_ERROR
    with pytest.raises(h2.ConnectionError_) as err:
        connection().receive(h2.frame(h2.DATA, 0, 1, b"x" * 20000), [])
    assert err.value.code == h2.FRAME_SIZE_ERROR
    conn = connection()
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 5, request_headers()), [])
    with pytest.raises(h2.ConnectionError_):  # stream ids must grow
        conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 3, request_headers()), [])
    conn = connection()
    conn.receive(h2.frame(h2.HEADERS, 0, 1, request_headers()[:3]), [])
    with pytest.raises(h2.ConnectionError_):  # a header block must continue at once
        conn.receive(h2.frame(h2.DATA, 0, 1, b"x"), [])
    with pytest.raises(h2.ConnectionError_) as err:
        connection().receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xbf"), [])  # no entry
    assert err.value.code == h2.COMPRESSION_ERROR


def test_data_on_a_finished_stream_resets_only_that_stream():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, request_headers()), out)
    events = conn.receive(h2.frame(h2.DATA, 0, 1, b"late"), out)
    assert events == [h2.Reset(1, h2.STREAM_CLOSED)]
    assert out[-1] == h2.rst_stream(1, h2.STREAM_CLOSED)


def test_ping_is_acknowledged():
    out = []
    connection().receive(h2.frame(h2.PING, 0, 0, b"12345678"), out)
    assert out == [h2.frame(h2.PING, h2.ACK, 0, b"12345678")]


def sendable(conn, stream_id):
    """What send_data would take on `stream_id` now, without taking it."""
    return max(0, min(conn.send_window, conn.stream_send_windows.get(stream_id, 0)))


def test_send_windows_follow_settings_and_updates():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    assert sendable(conn, 1) == h2.DEFAULT_WINDOW
    assert conn.send_data(1, b"x" * 65000)[1] == 65000
    assert conn.send_data(1, b"y" * 10 ** 6)[1] == 535
    assert conn.send_data(1, b"z")[1] == 0
    conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, 100535)), out)
    assert conn.send_data(1, b"z")[1] == 0  # the connection window still limits
    events = conn.receive(h2.window_update(0, 1 << 20), out)
    assert events == [h2.WindowOpened(0)]
    assert conn.send_data(1, b"y" * 10 ** 6)[1] == 35000
    with pytest.raises(h2.ConnectionError_):
        conn.receive(h2.window_update(0, h2.MAX_WINDOW), out)


def test_window_updates_give_events_only_while_wanted():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    conn.windows_wanted = False   # nothing waits: the windows grow all the same
    assert conn.receive(h2.window_update(0, 1000) + h2.window_update(1, 2000), out) == []
    conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, 70000)), out)
    assert (conn.send_window, conn.stream_send_windows[1]) == (66535, 72000)
    conn.windows_wanted = True
    assert conn.receive(h2.window_update(0, 1) + h2.window_update(1, 1), out) == \
        [h2.WindowOpened(0), h2.WindowOpened(1)]


def test_consumed_bytes_come_back_as_window_updates_in_batches():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    quarter = h2.RECEIVE_WINDOW // 4
    assert conn.consumed(1, quarter - 1) == b""
    assert conn.consumed(1, 1) == h2.window_update(0, quarter) + h2.window_update(1, quarter)


def test_continuation_flood_is_refused_before_the_block_ends():
    conn = connection()
    conn.receive(h2.frame(h2.HEADERS, 0, 1, request_headers()), [])
    with pytest.raises(h2.ConnectionError_):
        for _ in range(h2.MAX_HEADER_BLOCK // h2.DEFAULT_FRAME_SIZE + 2):
            conn.receive(h2.frame(h2.CONTINUATION, 0, 1, b"\0" * h2.DEFAULT_FRAME_SIZE), [])
            assert len(conn._header_block) <= h2.MAX_HEADER_BLOCK


def test_client_trailers_end_the_stream_without_a_new_request():
    encoder, conn, out = hpack.Encoder(), connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, encoder.encode(
        [(b":method", b"POST"), (b":path", b"/s.S/M")])), out)
    events = conn.receive(h2.frame(h2.DATA, 0, 1, b"\0\0\0\0\0") + h2.frame(
        h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, encoder.encode([(b"x-t", b"1")])), out)
    assert events == [h2.Data(1, b"\0\0\0\0\0", 5, False), h2.Data(1, b"", 0, True)]
    assert conn.open_streams == set()


def test_refused_trailers_still_feed_the_hpack_table():
    encoder, conn, out = hpack.Encoder(), connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, encoder.encode(
        [(b":method", b"POST"), (b":path", b"/s.S/M")])), out)
    # trailers without END_STREAM: a stream error, but the entry they add to the
    # encoder's table is used by the next request
    events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, encoder.encode(
        [(b"x-new-entry", b"v")])), out)
    assert events == [h2.Reset(1, h2.PROTOCOL_ERROR)]
    events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 3, encoder.encode(
        [(b":path", b"/s.S/N"), (b"x-new-entry", b"v")])), out)
    assert events[0].headers == ((b":path", b"/s.S/N"), (b"x-new-entry", b"v"))


def test_data_beyond_the_receive_window_is_a_flow_control_error():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    chunk = h2.frame(h2.DATA, 0, 1, b"x" * h2.DEFAULT_FRAME_SIZE)
    for _ in range(h2.RECEIVE_WINDOW // h2.DEFAULT_FRAME_SIZE):  # all the peer may send
        conn.receive(chunk, out)
    with pytest.raises(h2.ConnectionError_) as err:  # a peer ignoring our window
        conn.receive(h2.frame(h2.DATA, 0, 1, b"x"), out)
    assert err.value.code == h2.FLOW_CONTROL_ERROR


def test_data_in_flight_to_a_stream_we_closed_gives_back_the_window():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    conn.close_stream(1)  # answered early; the client was still uploading
    peer_window, events = h2.RECEIVE_WINDOW, []
    for _ in range(2 * h2.RECEIVE_WINDOW // h2.DEFAULT_FRAME_SIZE):
        assert peer_window >= h2.DEFAULT_FRAME_SIZE  # the peer is never starved
        out = []
        events += conn.receive(h2.frame(h2.DATA, 0, 1, b"x" * h2.DEFAULT_FRAME_SIZE), out)
        peer_window -= h2.DEFAULT_FRAME_SIZE
        for update in out:
            assert update[3] == h2.WINDOW_UPDATE and update[5:9] == b"\0\0\0\0"
            peer_window += struct.unpack(">I", update[9:])[0]
    assert events == []  # ignored, not reset (RFC 9113 §5.1, closed state)


def test_a_larger_initial_window_wakes_writers():
    conn, out = connection(), []
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_headers()), out)
    conn.send_data(1, b"x" * h2.DEFAULT_WINDOW)
    events = conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(
        ">HI", h2.INITIAL_WINDOW_SIZE, h2.DEFAULT_WINDOW + 100)), out)
    assert events == [h2.WindowOpened(0)]
    conn.receive(h2.window_update(0, 1000), out)
    assert conn.send_data(1, b"y" * 1000)[1] == 100
    with pytest.raises(h2.ConnectionError_) as err:  # pushes a stream window past 2^31-1
        conn.receive(h2.window_update(1, h2.MAX_WINDOW - 200) + h2.frame(
            h2.SETTINGS, 0, 0, struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, h2.MAX_WINDOW)), out)
    assert err.value.code == h2.FLOW_CONTROL_ERROR


def test_priority_on_stream_zero_is_a_connection_error():
    with pytest.raises(h2.ConnectionError_):
        connection().receive(h2.frame(h2.PRIORITY, 0, 0, b"\0" * 5), [])


def test_streams_beyond_the_concurrency_limit_are_refused():
    assert struct.pack(">HI", h2.MAX_CONCURRENT_STREAMS, h2.MAX_CONCURRENT) in \
        h2.Connection().initial_bytes()
    encoder, conn, out = hpack.Encoder(), connection(), []
    fields = [(b":method", b"POST"), (b":path", b"/s.S/M")]
    wire = b"".join(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, encoder.encode(fields))
                    for sid in range(1, 2 * h2.MAX_CONCURRENT, 2))
    assert len(conn.receive(wire, out)) == h2.MAX_CONCURRENT
    last = 2 * h2.MAX_CONCURRENT + 1  # one too many; its block adds an entry to the table
    events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, last, encoder.encode(
        fields + [(b"x-new-entry", b"v")])), out)
    assert events == [h2.Reset(last, h2.REFUSED_STREAM)]
    assert out[-1] == h2.rst_stream(last, h2.REFUSED_STREAM)
    conn.close_stream(1)  # one ends: the next is taken, and decoded with that entry
    events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, last + 2, encoder.encode(
        fields + [(b"x-new-entry", b"v")])), out)
    assert events == [h2.Request(last + 2, tuple(fields + [(b"x-new-entry", b"v")]), False)]


def test_header_blocks_larger_than_a_frame_go_out_in_continuations():
    block = request_headers() + h2.encode_headers([(b"x-long", b"v" * 40000)])
    wire = h2.headers(1, block, True, h2.DEFAULT_FRAME_SIZE)
    assert wire[3] == h2.HEADERS and wire.count(bytes([h2.CONTINUATION])) >= 2
    events = connection().receive(wire, [])  # our own parser takes them back
    assert events[0].end_stream and (b"x-long", b"v" * 40000) in events[0].headers


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def open_and_reset(conn, stream_id, out):
    return conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, stream_id, request_headers()) +
                        h2.rst_stream(stream_id, h2.CANCEL), out)


def test_rapid_reset_is_answered_with_enhance_your_calm():
    """A token bucket of stream resets (burst 1000, 33/s): the reset beyond it is a
    connection error ENHANCE_YOUR_CALM (the server sends GOAWAY)."""
    clock, out = Clock(), []
    conn = h2.Connection(clock)
    conn.receive(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0), out)
    sid = 1
    for _ in range(h2.RESET_BURST):
        assert open_and_reset(conn, sid, out)[-1] == h2.Reset(sid, h2.CANCEL)
        sid += 2
    with pytest.raises(h2.ConnectionError_) as err:
        open_and_reset(conn, sid, out)
    assert err.value.code == h2.ENHANCE_YOUR_CALM


def test_resets_at_the_refill_rate_or_of_answered_streams_are_fine():
    clock, out = Clock(), []
    conn = h2.Connection(clock)
    conn.receive(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0), out)
    sid = 1
    for _ in range(h2.RESET_BURST):
        open_and_reset(conn, sid, out)
        sid += 2
    for _ in range(3 * h2.RESET_BURST):  # a stream we answered: its reset costs nothing
        conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid,
                              request_headers()), out)
        conn.close_stream(sid)
        conn.receive(h2.rst_stream(sid, h2.CANCEL), out)
        sid += 2
    for _ in range(100):  # the bucket refills at 33 a second
        clock.now += 1 / h2.RESET_RATE
        open_and_reset(conn, sid, out)
        sid += 2
    with pytest.raises(h2.ConnectionError_):
        open_and_reset(conn, sid, out)


def test_repeated_indexed_header_blocks_follow_the_table():
    """Blocks of indexed fields are decoded from a cache while the hpack table is
    unchanged; an insertion shifts the dynamic indices, and the same bytes decode anew."""
    encoder, conn, out = hpack.Encoder(), connection(), []
    first = encoder.encode([(b":path", b"/s.S/A"), (b"x-a", b"1")])
    indexed = encoder.encode([(b":path", b"/s.S/A"), (b"x-a", b"1")])
    assert indexed == b"\xbf\xbe"  # dynamic entries 63 and 62
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, first), out)
    for sid in (3, 5):
        events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid,
                                       indexed), out)
        assert events[0].headers == ((b":path", b"/s.S/A"), (b"x-a", b"1"))
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 7,
                          encoder.encode([(b":path", b"/s.S/B")])), out)
    events = conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 9, indexed), out)
    assert events[0].headers == ((b"x-a", b"1"), (b":path", b"/s.S/B"))


# --- the output side: frames and windows --------------------------------------------

def parse(wire: bytes) -> list:
    """Frames as (type, flags, stream id, payload), checking each one's length field."""
    frames, pos = [], 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos:pos + 3], "big")
        kind, flags = wire[pos + 3], wire[pos + 4]
        stream_id = struct.unpack(">I", wire[pos + 5:pos + 9])[0]
        frames.append((kind, flags, stream_id, wire[pos + 9:pos + 9 + length]))
        pos += 9 + length
    assert pos == len(wire)
    return frames


def open_stream(conn, stream_id=1):
    conn.receive(h2.frame(h2.HEADERS, h2.END_HEADERS, stream_id, request_headers()), [])


def test_data_is_split_at_the_peers_frame_size_and_debits_both_windows():
    conn = connection()
    open_stream(conn)
    data = bytes(range(256)) * 160  # 40960 bytes: 16384 + 16384 + 8192
    wire, n = conn.send_data(1, data)
    assert n == len(data)
    frames = parse(wire)
    assert [(k, f, s, len(p)) for k, f, s, p in frames] == [
        (h2.DATA, 0, 1, 16384), (h2.DATA, 0, 1, 16384), (h2.DATA, 0, 1, 8192)]
    assert b"".join(p for *_, p in frames) == data
    assert conn.send_window == conn.stream_send_windows[1] == h2.DEFAULT_WINDOW - len(data)
    # a peer taking larger frames gets fewer of them; a memoryview is taken as bytes are
    conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.MAX_FRAME_SIZE, 20000)), [])
    wire, n = conn.send_data(1, memoryview(data)[:24000])
    assert n == 24000 and [len(p) for *_, p in parse(wire)] == [20000, 4000]
    assert b"".join(p for *_, p in parse(wire)) == data[:24000]


def test_data_stops_at_the_smallest_window_and_the_limit():
    conn = connection()
    open_stream(conn, 1)
    open_stream(conn, 3)
    conn.receive(h2.window_update(0, 10000), [])  # the connection: 75535
    wire, n = conn.send_data(1, b"a" * 50000, limit=1000)
    assert n == 1000 and parse(wire) == [(h2.DATA, 0, 1, b"a" * 1000)]
    assert conn.send_data(1, b"b" * 70000)[1] == h2.DEFAULT_WINDOW - 1000  # stream window
    assert conn.send_data(1, b"c") == (b"", 0)
    assert conn.send_data(3, b"d" * 70000)[1] == 10000  # what the connection has left
    conn.receive(h2.window_update(3, 5000), [])
    assert conn.send_data(3, b"e") == (b"", 0)  # the connection window is shut
    conn.receive(h2.window_update(0, 3000), [])
    assert conn.send_data(3, b"f" * 9000)[1] == 3000
    assert conn.send_data(5, b"g") == (b"", 0)  # no such stream


def test_a_smaller_initial_window_holds_data_until_the_stream_is_back_in_credit():
    conn = connection()
    open_stream(conn)
    conn.send_data(1, b"x" * 60000)
    conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, 1000)), [])
    assert conn.stream_send_windows[1] == 1000 - 60000  # in debt (RFC 9113 §6.9.2)
    assert conn.send_data(1, b"y") == (b"", 0)
    conn.receive(h2.window_update(0, 1 << 20) + h2.window_update(1, 59500), [])
    assert conn.send_data(1, b"y" * 1000)[1] == 500


def test_end_stream_sends_the_last_headers_resets_an_open_request_and_forgets_the_stream():
    conn = connection()
    open_stream(conn)
    conn.receive(h2.frame(h2.SETTINGS, 0, 0), [])
    trailers = h2.encode_headers([(b"grpc-status", b"0"), (b"x-big", b"v" * 40000)])
    frames = parse(conn.end_stream(1, trailers, stop_peer=True))
    assert [(k, f) for k, f, *_ in frames] == [
        (h2.HEADERS, h2.END_STREAM), (h2.CONTINUATION, 0), (h2.CONTINUATION, h2.END_HEADERS),
        (h2.RST_STREAM, 0)]
    assert b"".join(p for k, f, s, p in frames[:3]) == trailers
    assert frames[3][2:] == (1, struct.pack(">I", h2.NO_ERROR))
    assert conn.send_data(1, b"late") == (b"", 0)
    assert 1 not in conn.open_streams and 1 not in conn.stream_send_windows
    # the client's data still in flight is dropped, its window returned later
    assert conn.receive(h2.frame(h2.DATA, 0, 1, b"x" * 100), []) == []
    open_stream(conn, 3)
    conn.receive(h2.frame(h2.DATA, h2.END_STREAM, 3, b"x"), [])  # the request is complete
    assert parse(conn.end_stream(3, b"\x88", stop_peer=False)) == [
        (h2.HEADERS, h2.END_STREAM | h2.END_HEADERS, 3, b"\x88")]


def test_headers_follow_the_peers_frame_size():
    conn = connection()
    block = h2.encode_headers([(b"x-long", b"v" * 20000)])
    assert [k for k, *_ in parse(conn.send_headers(1, block))] == [h2.HEADERS, h2.CONTINUATION]
    conn.receive(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.MAX_FRAME_SIZE, 30000)), [])
    assert parse(conn.send_headers(1, block)) == [(h2.HEADERS, h2.END_HEADERS, 1, block)]
    assert parse(conn.goaway(h2.ENHANCE_YOUR_CALM, b"calm"))[0][:3] == (h2.GOAWAY, 0, 0)


def test_a_unary_answer_in_one_piece_or_none_when_it_does_not_fit():
    conn = connection()
    open_stream(conn, 1)
    message = b"\0\0\0\0\3abc"
    wire = conn.unary_answer(1, b"\x88", message, b"trailers", stop_peer=True)
    assert parse(wire) == [(h2.HEADERS, h2.END_HEADERS, 1, b"\x88"), (h2.DATA, 0, 1, message),
                           (h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, b"trailers"),
                           (h2.RST_STREAM, 0, 1, struct.pack(">I", h2.NO_ERROR))]
    assert conn.send_window == h2.DEFAULT_WINDOW - len(message)
    assert 1 not in conn.stream_send_windows and 1 not in conn.open_streams
    assert conn.unary_answer(1, b"\x88", message, b"t", False) is None   # stream gone
    open_stream(conn, 3)
    conn.receive(h2.frame(h2.DATA, h2.END_STREAM, 3, b"x"), [])
    assert conn.unary_answer(3, b"\x88", b"m" * 20000, b"t", False) is None  # > frame size
    conn.send_data(3, b"z" * (h2.DEFAULT_WINDOW - 100))
    assert conn.unary_answer(3, b"\x88", b"m" * 200, b"t", False) is None    # > window
    assert 3 in conn.stream_send_windows   # untouched: the caller goes frame by frame
    assert [f[:2] for f in parse(conn.unary_answer(3, b"\x88", b"m" * 50, b"t", False))] == [
        (h2.HEADERS, h2.END_HEADERS), (h2.DATA, 0), (h2.HEADERS, h2.END_HEADERS | h2.END_STREAM)]
