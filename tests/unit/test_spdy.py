"""SPDY/3.1 framing (appliance/cri/streaming/spdy.py): round trips between two of our
connections, the dictionary against Debian's Go spdystream, flow control, and fuzzing of
`receive` (whatever a client sends, only ProtocolError comes out and state stays bounded)."""
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.cri.streaming import spdy

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
GO_DICTIONARY = Path("/usr/share/gocode/src/github.com/moby/spdystream/spdy/dictionary.go")


def pump(src: spdy.Connection, dst: spdy.Connection) -> list:
    return dst.receive(src.data_to_send())


def test_dictionary_is_spdystreams():
    if not GO_DICTIONARY.exists():
        pytest.skip("golang-github-docker-spdystream-dev is not installed")
    body = GO_DICTIONARY.read_text().split("headerDictionary = []byte{")[1].split("}")[0]
    go = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", body))
    assert spdy.DICTIONARY == go


def test_streams_headers_data_and_fin_round_trip():
    client, server = spdy.Connection(server=False), spdy.Connection()
    sid = client.open_stream({"streamType": "stdin", "port": ["80", "81"]})
    sid2 = client.open_stream({"streamType": "stdout"}, fin=True)
    events = pump(client, server)
    assert events == [spdy.StreamOpened(1, {"streamtype": ["stdin"], "port": ["80", "81"]},
                                        False),
                      spdy.StreamOpened(3, {"streamtype": ["stdout"]}, True)]
    server.reply(sid)
    server.reply(sid2)
    assert pump(server, client) == []
    assert client.send_data(sid, b"x" * 100000, fin=True) == 100000
    got = pump(client, server)
    assert b"".join(e.data for e in got) == b"x" * 100000 and got[-1].fin
    assert all(len(e.data) <= spdy.MAX_DATA_CHUNK for e in got)
    server.send_data(sid2, b"out", fin=True)
    assert pump(server, client) == [spdy.Data(3, b"out", True)]
    server.send_data(sid, b"", fin=True)
    pump(server, client)
    assert server.open_streams == set() and client.open_streams == set()


def test_ping_is_echoed_reset_and_goaway_are_events():
    client, server = spdy.Connection(server=False), spdy.Connection()
    client.ping(1)
    pump(client, server)
    out = server.data_to_send()
    assert out == spdy.control_frame(spdy.PING, 0, struct.pack(">I", 1))
    sid = client.open_stream({"a": "b"})
    pump(client, server)
    client.reset(sid, spdy.CANCEL)
    client.go_away()
    assert pump(client, server) == [spdy.StreamReset(sid, spdy.CANCEL), spdy.GoAway(0, 0)]
    assert server.open_streams == set()


def test_data_on_an_unknown_stream_is_reset_not_fatal():
    server = spdy.Connection()
    assert server.receive(spdy.data_frame(5, 0, b"hi")) == []
    assert server.data_to_send() == spdy.control_frame(
        spdy.RST_STREAM, 0, struct.pack(">II", 5, spdy.INVALID_STREAM))


def test_send_window_is_kept_once_the_peer_keeps_windows():
    client, server = spdy.Connection(server=False), spdy.Connection()
    sid = client.open_stream({})
    pump(client, server)
    # spdystream never sends WINDOW_UPDATE: no window holds us back
    assert server.send_data(sid, b"x" * 200000) == 200000
    # a peer that does: 64 KiB per stream until it updates
    client2, server2 = spdy.Connection(server=False), spdy.Connection()
    sid = client2.open_stream({})
    client2.consumed(sid, 10)        # its WINDOW_UPDATEs show it keeps windows
    pump(client2, server2)
    assert server2.send_data(sid, b"x" * 200000) == spdy.DEFAULT_WINDOW + 10
    assert server2.sendable(sid) == 0
    got = pump(server2, client2)  # exactly what was taken went out
    assert sum(len(e.data) for e in got) == spdy.DEFAULT_WINDOW + 10
    client2.consumed(sid, 1000)
    assert any(isinstance(e, spdy.WindowOpened) for e in pump(client2, server2))
    assert server2.sendable(sid) == 1000


def test_settings_initial_window_changes_open_streams():
    client, server = spdy.Connection(server=False), spdy.Connection()
    sid = client.open_stream({})
    pump(client, server)
    server.receive(spdy.control_frame(spdy.SETTINGS, 0, struct.pack(
        ">III", 1, spdy.SETTINGS_INITIAL_WINDOW_SIZE, 1000)))
    assert server.sendable(sid) == 1000


def test_bad_version_and_header_bomb_are_protocol_errors():
    server = spdy.Connection()
    with pytest.raises(spdy.ProtocolError):
        server.receive(struct.pack(">IBBH", 0x80020001, 0, 0, 10) + b"\0" * 10)
    assert b"" != server.data_to_send()  # GOAWAY queued
    server = spdy.Connection()
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    bomb = deflate.compress(b"\0" * (spdy.MAX_HEADER_BLOCK + 10)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.ProtocolError, match="too large"):
        server.receive(spdy.control_frame(spdy.SYN_STREAM, 0, struct.pack(">II", 1, 0) + b"\0\0"
                                          + bomb))


def test_stream_ids_must_grow_and_be_odd():
    client, server = spdy.Connection(server=False), spdy.Connection()
    client.open_stream({})
    client.next_own_stream = 1
    client.open_stream({})
    with pytest.raises(spdy.ProtocolError, match="invalid stream id"):
        pump(client, server)


@given(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s),
                       st.lists(st.text(max_size=30).filter(lambda s: "\0" not in s),
                                min_size=1, max_size=3), max_size=6))
@FAST
def test_header_block_round_trip(headers):
    lowered: dict = {}
    for name, values in headers.items():
        lowered.setdefault(name.lower(), []).extend(values)
    assert spdy.decode_headers(spdy.encode_headers(
        {k: v for k, v in lowered.items()})) == lowered


# --- fuzzing -------------------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 2 ** 32 - 1).map(struct.Struct(">I").pack),
    st.tuples(st.integers(0, 9), st.integers(0, 2 ** 32 - 1)).map(lambda t: struct.pack(">II", *t)),
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2 ** 32 - 1)), max_size=3).map(
        lambda pairs: struct.pack(">I", len(pairs))
        + b"".join(struct.pack(">II", k, v) for k, v in pairs)),
)


@st.composite
def frames(draw):
    if draw(st.booleans()):
        kind = draw(st.integers(0, 11))
        flags = draw(st.integers(0, 255))
        version = draw(st.sampled_from([3, 3, 3, 2]))
        payload = draw(payloads)
        n = len(payload)
        wire = struct.pack(">IBBH", 0x80000000 | version << 16 | kind, flags, n >> 16,
                           n & 0xFFFF) + payload
    else:
        wire = spdy.data_frame(draw(st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF])),
                               draw(st.integers(0, 255)), draw(st.binary(max_size=50)))
    return wire * draw(st.sampled_from([1, 1, 2, 50]))


@st.composite
def sessions(draw):
    """A valid client's frames (streams, data, resets, pings) mixed with random frames."""
    client = spdy.Connection(server=False)
    wire = []
    for _ in range(draw(st.integers(1, 12))):
        action = draw(st.integers(0, 5))
        if action == 0:
            client.open_stream({"streamtype": draw(st.sampled_from(["stdin", "error", "x"]))},
                               fin=draw(st.booleans()))
        elif action == 1 and client.open_streams:
            sid = draw(st.sampled_from(sorted(client.open_streams)))
            client.send_data(sid, draw(st.binary(max_size=100)), fin=draw(st.booleans()))
        elif action == 2 and client.open_streams:
            client.reset(draw(st.sampled_from(sorted(client.open_streams))))
        elif action == 3:
            client.ping(draw(st.integers(0, 10)))
        elif action == 4:
            wire.append(client.data_to_send())
            wire.append(draw(frames()))
        else:
            client.consumed(draw(st.sampled_from([0, 1, 3])), draw(st.integers(1, 100)))
    wire.append(client.data_to_send())
    return b"".join(wire)


def feed(wire: bytes, cuts: list) -> None:
    conn = spdy.Connection()
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    for start, end in zip(bounds, bounds[1:]):
        try:
            events = conn.receive(wire[start:end])
        except spdy.ProtocolError:
            assert conn.going_away and conn.data_to_send()
            return
        assert isinstance(conn.data_to_send(), bytes)
        for event in events:
            assert isinstance(event, (spdy.StreamOpened, spdy.Data, spdy.StreamReset,
                                      spdy.WindowOpened, spdy.GoAway))
            if isinstance(event, spdy.StreamOpened):
                conn.reply(event.stream_id)
            elif isinstance(event, spdy.Data):
                conn.consumed(event.stream_id, len(event.data))
                conn.send_data(event.stream_id, event.data[:10], fin=event.fin)
        if len(conn._buffer) >= 8:  # what is left is less than one whole frame
            hi, lo = struct.unpack_from(">BH", conn._buffer, 5)
            assert len(conn._buffer) < 8 + (hi << 16 | lo)
        assert len(conn.open_streams) <= spdy.MAX_STREAMS
        assert conn.remote_closed <= conn.open_streams and conn.local_closed <= conn.open_streams
        assert set(conn.stream_send_windows) == conn.open_streams
        assert all(w <= spdy.MAX_WINDOW for w in conn.stream_send_windows.values())


@FAST
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_arbitrary_bytes(data, cuts):
    feed(data, cuts)


@FAST
@given(st.lists(frames(), max_size=20), st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_arbitrary_frames(wires, cuts):
    feed(b"".join(wires), cuts)


@FAST
@given(sessions(), st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_client_sessions_with_noise(wire, cuts):
    feed(wire, cuts)


def test_input_queue_gives_windows_back_when_taken_and_caps_what_it_holds():
    import asyncio
    from appliance.cri.streaming import channels

    async def run():
        taken = []
        queue = channels.InputQueue(taken.append)
        await queue.put(b"x" * channels.INPUT_CAP)
        blocked = asyncio.ensure_future(queue.put(b"more"))
        await asyncio.sleep(0)
        assert not blocked.done() and taken == []   # full: the reader waits
        assert await queue.get() == b"x" * channels.INPUT_CAP
        await asyncio.wait_for(blocked, 5)
        await queue.put(None)
        assert await queue.get() == b"more" and await queue.get() is None
        assert taken == [channels.INPUT_CAP, 4]
    asyncio.run(run())


PATTERN = bytes(range(251)) * 1200  # offset by what was sent: a lost or extra byte shows


@FAST
@given(st.lists(st.tuples(st.integers(0, 300000), st.integers(0, 100000)), max_size=10))
def test_sends_under_windows_deliver_exactly_what_was_taken(steps):
    client, server = spdy.Connection(server=False), spdy.Connection()
    sid = client.open_stream({})
    pump(client, server)
    client.consumed(sid, 1)   # the peer keeps windows: the server is held to them
    pump(client, server)
    expected, got = bytearray(), bytearray()
    for size, update in steps:
        start = len(expected) % 251
        data = PATTERN[start:start + size]
        taken = server.send_data(sid, data)
        assert taken <= size and server.send_window >= 0
        expected += data[:taken]
        got += b"".join(e.data for e in pump(server, client))
        if update:
            client.consumed(sid, update)
            pump(client, server)
    assert got == expected
