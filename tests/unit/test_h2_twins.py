"""The compiled HTTP/2 connection (grpcserver._h2) gives the same events, replies, errors
and state as its pure-Python twin (grpcserver._h2_py) for the same bytes split at random
read boundaries: what real clients sent (grpcio, and ctr's grpc-go, recorded from a live
server), hypothesis-generated frame sequences (malformed ones too) and arbitrary bytes.
Both are driven as the server drives them, answers included (the output side)."""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading

import grpc
import pytest
from h2_helpers import TWINS, frames, header_chains, split
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.grpcserver import MethodHandler, Server, _h2, _h2_py, h2
from appliance.grpcserver.server import _Connection

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FIELDS = {"Request": ("stream_id", "headers", "end_stream"),
          "Data": ("stream_id", "data", "flow_length", "end_stream"),
          "Reset": ("stream_id", "code"), "WindowOpened": ("stream_id",),
          "GoAway": ("last_stream_id", "code")}
HEAD = h2.STATUS_200 + h2.encode_headers([(b"content-type", b"application/grpc")])
TRAILERS = h2.encode_headers([(b"grpc-status", b"0")])


class Clock:
    """The same times for both twins (the reset token bucket reads it)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 0.001
        return self.now


def _event(event) -> tuple:
    name = type(event).__name__
    return (name, *(getattr(event, field) for field in FIELDS[name]))


def _state(conn) -> tuple:
    return (bytes(conn._buffer), bytes(conn._header_block), conn._headers_stream,
            conn.highest_stream_id, set(conn.open_streams), conn.peer_frame_size,
            conn.peer_initial_window, conn.send_window, dict(conn.stream_send_windows),
            conn._unacked_connection, dict(conn._unacked_streams), conn.receive_window,
            dict(conn.stream_receive_windows), conn._reset_tokens)


def _answer(conn, stream_id: int, headers_sent: set) -> bytes:
    """A unary answer of a size that depends on the stream: in one piece, or frame by
    frame where it does not fit (large, or headers already sent)."""
    message = bytes(range(256)) * (stream_id * 7919 % 40000 // 256)
    if stream_id not in headers_sent:
        wire = conn.unary_answer(stream_id, HEAD, message, TRAILERS, stream_id % 3 == 0)
        if wire is not None:
            return wire
    wire = b"" if stream_id in headers_sent else conn.send_headers(stream_id, HEAD)
    data, n = conn.send_data(stream_id, memoryview(message), 20000)
    return wire + data + bytes([n % 256]) + conn.end_stream(stream_id, TRAILERS, True)


def transcript(twin, reads: list) -> list:
    """Feed `reads` to a fresh connection of `twin`, acting on events as the server does;
    per read: the events, replies, answers and state after it, or what it raised."""
    conn, log, headers_sent = twin.Connection(Clock()), [], set()
    for i, data in enumerate(reads):
        conn.windows_wanted = i % 2 == 0
        out = []
        try:
            events = conn.receive(data, out)
        except Exception as exc:   # ConnectionError_ only, say the fuzz tests
            log.append(("raised", type(exc).__name__, getattr(exc, "code", None), str(exc),
                        out))
            return log
        log.append(("read", [_event(e) for e in events], out))
        for event in events:
            name, sid = type(event).__name__, getattr(event, "stream_id", None)
            if name == "Data":
                log.append(conn.consumed(sid, event.flow_length))
            if name == "Request" and not event.end_stream and sid % 4 == 3:
                log.append(conn.send_headers(sid, HEAD))   # a server stream's headers
                headers_sent.add(sid)
            if name in ("Request", "Data") and event.end_stream:
                log.append(_answer(conn, sid, headers_sent))
            elif name == "Reset":
                conn.close_stream(sid)
        log.append(("state", _state(conn)))
    return log


def assert_alike(reads: list) -> list:
    compiled = transcript(_h2, reads)
    assert compiled == transcript(_h2_py, reads)
    return compiled


# --- bytes real clients sent ---------------------------------------------------------

def _recording_server():
    async def unary(request, context):
        return b""

    async def client_stream(requests, context):
        return str(len([m async for m in requests])).encode()

    methods = {"/t.T/Sum": MethodHandler(True, False, None, None, stream_unary=client_stream)}
    any_unary = MethodHandler(False, False, None, None, unary_unary=unary)

    class Generic:
        def service(self, details):   # ctr's calls get empty messages; its ListStream
            if details.method.endswith("Stream"):   # is refused (it falls back to List)
                return None
            return methods.get(details.method, any_unary)

    server = Server()
    server.add_generic_rpc_handlers([Generic()])
    return server


@pytest.fixture(scope="module")
def recorded():
    """Each client connection's reads, as the server read them: grpcio (unary calls with
    metadata and deadlines, 200 kB and 3 MB requests over many DATA frames and window
    updates both ways, a client stream) and ctr (version, namespaces, containers)."""
    reads: dict = {}
    original = _Connection.data_received

    def recording(conn, data):
        reads.setdefault(conn, []).append(bytes(data))
        original(conn, data)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    server = _recording_server()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Connection, "data_received", recording)
        address = os.path.join(tmp, "s.sock")
        thread.start()
        try:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(address)
            listener.listen(16)
            asyncio.run_coroutine_threadsafe(server.serve_socket(listener), loop).result(10)
            with grpc.insecure_channel("unix://" + address) as channel:
                unary = channel.unary_unary("/t.T/Echo")
                for size in (0, 5, 1000, 200_000, 3 << 20):
                    unary(os.urandom(size), timeout=10,
                          metadata=(("containerd-namespace", "default"), ("x-n", str(size))))
                assert channel.stream_unary("/t.T/Sum")(iter([b"m" * 300] * 6)) == b"6"
            for args in (["version"], ["namespaces", "ls"], ["-n", "x", "containers", "ls"]):
                subprocess.run(["ctr", "--address", address, *args], capture_output=True,
                               timeout=30)
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
    assert len(reads) >= 4   # grpcio's connection and ctr's three
    return list(reads.values())


@settings(SETTINGS, max_examples=30)
@given(st.data())
def test_recorded_client_bytes_give_the_same_transcript(recorded, data):
    for reads in recorded:
        wire = b"".join(reads)
        ends = [len(b"".join(reads[:i + 1])) for i in range(len(reads))]
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
        got = assert_alike(split(wire, ends + cuts))
        assert got[-1][0] == "state"   # no error: what they sent is valid HTTP/2
        assert any(entry[0] == "read" and any(e[0] == "Request" for e in entry[1])
                   for entry in got if isinstance(entry, tuple))


@SETTINGS
@given(st.lists(st.one_of(frames(), header_chains()), max_size=12),
       st.lists(st.integers(0, 10 ** 7), max_size=8))
def test_generated_frame_sequences_give_the_same_transcript(frame_list, cuts):
    assert_alike(split(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0) + b"".join(frame_list), cuts))


# requests and what follows them on the streams they open: the states random frames
# rarely reach (open streams, padding, trailers, windows, resets, cached header blocks).
# Streams are named by slot: the n-th opened (new ones get the next id), −1 the connection.
slot = st.integers(0, 4)
field_lists = st.lists(st.tuples(st.sampled_from([b":path", b"te", b"grpc-timeout", b"x-a"]),
                                 st.sampled_from([b"/s.S/M", b"trailers", b"1S", b"v", b""])),
                       max_size=3)
frame_flags = st.sampled_from([0, h2.END_STREAM, h2.PADDED, h2.PADDED | h2.END_STREAM,
                               h2.PRIORITY_FLAG, h2.PADDED | h2.PRIORITY_FLAG | h2.END_STREAM])
stream_actions = st.one_of(
    st.tuples(st.just("headers"), st.booleans(), slot, field_lists, frame_flags,
              st.integers(0, 3), st.booleans()),
    st.tuples(st.just("data"), slot, st.binary(max_size=300), frame_flags, st.integers(0, 4)),
    st.tuples(st.just("data"), slot, st.binary(max_size=300), frame_flags, st.integers(0, 4)),
    st.tuples(st.just("frame"), st.just(h2.WINDOW_UPDATE), st.integers(-1, 4),
              st.sampled_from([0, 1, 8, 1000, 70000, 2 ** 31 - 1, 2 ** 32 - 1]).map(
                  lambda n: n.to_bytes(4, "big"))),
    st.tuples(st.just("frame"), st.just(h2.RST_STREAM), slot,
              st.sampled_from([0, 1, 8, 1000, 70000, 2 ** 31 - 1, 2 ** 32 - 1]).map(
                  lambda n: n.to_bytes(4, "big"))),
    st.tuples(st.just("frame"), st.just(h2.SETTINGS), st.just(-1), st.lists(
        st.tuples(st.sampled_from([h2.INITIAL_WINDOW_SIZE, h2.MAX_FRAME_SIZE,
                                   h2.HEADER_TABLE_SIZE]),
                  st.sampled_from([0, 100, 65535, 16384, 20000, 2 ** 31 - 1, 2 ** 24])),
        max_size=2).map(lambda pairs: b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big")
                                               for k, v in pairs))),
)


def _padded(payload: bytes, flags: int, pad: int) -> bytes:
    if flags & h2.PRIORITY_FLAG:
        payload = b"\0\0\0\0\x10" + payload
    return bytes([pad]) + payload + b"\0" * pad if flags & h2.PADDED else payload


def _stream_wire(actions, raw: bytes) -> bytes:
    import hpack
    encoder, wire, opened = hpack.Encoder(), [h2.PREFACE, h2.frame(h2.SETTINGS, 0, 0)], [1]

    def sid(n):
        return 0 if n < 0 else opened[n % len(opened)]
    for action in [("headers", False, 0, [], 0, 0, False), *actions]:
        if action[0] == "headers":
            _, new, n, fields, flags, pad, split_block = action
            if new:
                opened.append(opened[-1] + 2)
            stream_id = opened[-1] if new else sid(n)
            block = encoder.encode([(b":method", b"POST"), *fields])
            if split_block:
                wire += [h2.frame(h2.HEADERS, flags, stream_id, _padded(block[:2], flags, pad)),
                         h2.frame(h2.CONTINUATION, h2.END_HEADERS, stream_id, block[2:])]
            else:
                wire.append(h2.frame(h2.HEADERS, flags | h2.END_HEADERS, stream_id,
                                     _padded(block, flags, pad)))
        elif action[0] == "data":
            _, n, body, flags, pad = action
            flags &= ~h2.PRIORITY_FLAG
            wire.append(h2.frame(h2.DATA, flags, sid(n), _padded(body, flags, pad)))
        else:
            wire.append(h2.frame(action[1], 0, sid(action[2]), action[3]))
    return b"".join(wire) + raw


@settings(SETTINGS, max_examples=300)
@given(st.lists(stream_actions, max_size=30), st.one_of(st.just(b""), frames()),
       st.lists(st.integers(0, 10 ** 5), max_size=8))
def test_streams_give_the_same_transcript(actions, raw, cuts):
    assert_alike(split(_stream_wire(actions, raw), cuts))


@SETTINGS
@given(st.binary(max_size=3000), st.booleans(), st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_arbitrary_bytes_give_the_same_transcript(data, with_preface, cuts):
    assert_alike(split(h2.PREFACE + data if with_preface else data, cuts))


def test_the_daemon_uses_the_compiled_twin_and_falls_back_to_the_pure_one():
    assert h2.Connection is _h2.Connection and h2.Request is _h2.Request
    assert set(TWINS.values()) == {_h2, _h2_py}
    code = ("import sys; sys.modules['appliance.grpcserver._h2'] = None\n"
            "from appliance.grpcserver import h2, server\n"
            "print(h2.Connection.__module__, h2.Data.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["appliance.grpcserver._h2_py"] * 2
